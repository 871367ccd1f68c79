# shellcheck shell=bash
# Shared by the bench scripts: a throwaway test host NAME in the given inventory GROUPS, with the
# test suite's group_vars and per-run secrets. Source it after setting `name`; it sets `state`
# (removed on exit, with the container) and exports what the group_vars read. A bench with more
# hosts names them in `bench_hosts` (before sourcing) and puts them in groups as GROUP:HOST.
# Usage: name=lkt-bench; source bench/lib.sh; bench_inventory livekit redis
#        name=lkt-a; bench_hosts=(lkt-b); source bench/lib.sh; bench_inventory livekit monitoring:lkt-b
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$REPO_ROOT"
bash scripts/setup.sh lab >/dev/null

[ -v bench_hosts ] || bench_hosts=()
state=$(mktemp -d)
trap 'podman rm -f -t 0 "$name" "${bench_hosts[@]}" >/dev/null 2>&1; podman network rm -f "$name" >/dev/null 2>&1; rm -rf "$state"' EXIT
export LKT_STATE_DIR=$state LKT_LIVEKIT_VERSION=$LIVEKIT_TEST_VERSION LKT_ARTIFACT_DIR=$ARTIFACT_DIR/$LIVEKIT_TEST_VERSION
export LKT_API_KEY=APIbench LKT_API_SECRET=$(openssl rand -hex 24) LKT_REDIS_PASSWORD=$(openssl rand -hex 16)
export ANSIBLE_COLLECTIONS_PATH=$REPO_ROOT/.cache/collections ANSIBLE_PIPELINING=true

bench_inventory() {  # writes $state/inventory: $name in each GROUP given, HOST in each GROUP:HOST
  local group host
  mkdir -p "$state/inventory/group_vars"
  cp -r molecule/shared/group_vars/all "$state/inventory/group_vars/all"
  {
    echo "all:"
    echo "  vars: {ansible_connection: containers.podman.podman}"
    echo "  children:"
    for group in "$@"; do
      host=$name
      [[ $group == *:* ]] && host=${group#*:} group=${group%%:*}
      echo "    $group: {hosts: {$host: {}}}"
    done
  } >"$state/inventory/hosts.yml"
}

bench_host() {  # a fresh systemd test host named HOST (default: $name)
  local host=${1:-$name}
  podman rm -f -t 0 "$host" >/dev/null 2>&1 || true
  podman run -d --name "$host" --hostname "$host" --runtime runc --privileged --systemd always \
    "$TEST_IMAGE_REPO:bookworm" /sbin/init >/dev/null
  podman exec "$host" systemctl is-system-running --wait >/dev/null 2>&1 || true
}

bench_address() {  # the test-network address of HOST (default: $name)
  podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${1:-$name}"
}

bench_converge() {  # run site.yml on the bench inventory; its log in $state/converge.log, its time printed
  local start=$SECONDS
  ansible-playbook -i "$state/inventory" playbooks/site.yml >"$state/converge.log" 2>&1 \
    || { tail -40 "$state/converge.log"; die "converge failed"; }
  log "converged in $((SECONDS - start)) s"
}
