#!/usr/bin/env bash
# Feasibility spike for blue-green on one host (issue 15, docs/blue-green.md). Not a product test.
# One systemd test host, converged with playbooks/site.yml behind the livekit_proxy role (nginx, sni
# mode, a certificate from a CA made for this run), Redis on the host. Then, by hand beside the
# role's unit ("blue", the role's livekit-server.service), a second livekit-server ("green") with the
# same Redis and keys on its own ports, and bench/blue_green_spike.py runs the experiment: a call on
# blue, nginx switched to green with a reload, new rooms, a join to blue's room through green, blue
# drained with SIGTERM until its room empties. Prints what each step saw.
# Usage: bench/blue_green_spike.sh            (KEEP=1 leaves the host up for poking at it)
#        bench/blue_green_spike.sh experiment (rerun the experiment on a kept host)
#        bench/blue_green_spike.sh measure    (the product, not the spike: the host on 1.13.4 with
#          livekit_server_deployment_strategy blue_green, then bench/blue_green.py times upgrade.yml
#          under a call and a room prober; HANG_UP=60 seconds after the upgrade the call ends)
# Bounded: every wait has a deadline; the whole run takes about 10 minutes on a busy 2-core machine.
name=lkt-bgspike-1
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
state=${LKT_BGSPIKE_STATE:-$REPO_ROOT/.cache/bgspike}
mkdir -p "$state" && chmod 700 "$state"

cleanup() {
  [ "${KEEP:-0}" = 1 ] && return
  podman rm -f -t 0 "$name" >/dev/null 2>&1
  podman network rm -f "$name" >/dev/null 2>&1
  rm -rf "$state"
}
trap cleanup EXIT

export LKT_STATE_DIR=$state LKT_LIVEKIT_VERSION=$LIVEKIT_TEST_VERSION LKT_ARTIFACT_DIR=$ARTIFACT_DIR/$LIVEKIT_TEST_VERSION
export ANSIBLE_COLLECTIONS_PATH=$REPO_ROOT/.cache/collections ANSIBLE_PIPELINING=true
[ -s "$state/secrets.env" ] || {
  umask 077
  printf 'LKT_API_KEY=APIbg\nLKT_API_SECRET=%s\nLKT_REDIS_PASSWORD=%s\n' "$(openssl rand -hex 24)" "$(openssl rand -hex 16)" >"$state/secrets.env"
}
set -a; source "$state/secrets.env"; set +a

make_certificate() {  # a CA for this run and one certificate for both names
  [ -s "$state/proxy.crt" ] && return
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bgspike-ca \
    -keyout "$state/ca.key" -out "$state/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=lk.bg.test \
    -keyout "$state/proxy.key" -out "$state/proxy.csr" 2>/dev/null
  printf 'subjectAltName=DNS:lk.bg.test,DNS:turn.bg.test\nbasicConstraints=CA:FALSE\n' >"$state/ext.cnf"
  openssl x509 -req -in "$state/proxy.csr" -CA "$state/ca.crt" -CAkey "$state/ca.key" -CAcreateserial -days 2 \
    -extfile "$state/ext.cnf" -out "$state/proxy.crt" 2>/dev/null
}

write_inventory() {
  mkdir -p "$state/inventory/group_vars"
  rm -rf "$state/inventory/group_vars/all"
  cp -r molecule/shared/group_vars/all "$state/inventory/group_vars/all"
  cat >"$state/inventory/group_vars/all/proxy.yml" <<YAML
---
livekit_proxy_enabled: true
livekit_proxy_domain: lk.bg.test
livekit_server_turn_domain: turn.bg.test
livekit_proxy_cert_source: files
livekit_proxy_cert_file: $state/proxy.crt
livekit_proxy_key_file: $state/proxy.key
livekit_proxy_worker_connections: 4096
livekit_server_drain_budget: 300
$(if [ "${BG_PRODUCT:-0}" = 1 ]; then cat <<'PRODUCT'
# The product: three slots of 100 media and relay ports each.
livekit_server_deployment_strategy: blue_green
livekit_server_rtc_port_range_start: 50000
livekit_server_rtc_port_range_end: 50299
livekit_server_turn_relay_range_start: 30000
livekit_server_turn_relay_range_end: 30299
PRODUCT
else cat <<'SPIKE'
# Blue's half of the ports (the role's unit); green gets the other half by hand (blue_green_spike.py).
livekit_server_rtc_port_range_start: 50000
livekit_server_rtc_port_range_end: 50049
livekit_server_turn_relay_range_start: 30000
livekit_server_turn_relay_range_end: 30049
SPIKE
fi)
# Webhooks to a receiver on the host (blue_green_spike.py starts it): are events sent once or per instance?
livekit_server_config_extra:
  webhook:
    api_key: "{{ lookup('ansible.builtin.env', 'LKT_API_KEY') }}"
    urls: [http://127.0.0.1:9999/hook]
YAML
  cat >"$state/inventory/hosts.yml" <<YAML
all:
  vars: {ansible_connection: containers.podman.podman}
  children: {livekit: {hosts: {$name: {}}}, redis: {hosts: {$name: {}}}}
YAML
}

stand_up() {
  bash scripts/setup.sh lab >/dev/null
  podman network exists "$name" || podman network create "$name" >/dev/null
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  podman run -d --name "$name" --hostname "$name" --network "$name" --privileged --systemd always \
    "$TEST_IMAGE_REPO:bookworm" /sbin/init >/dev/null
  podman exec "$name" systemctl is-system-running --wait >/dev/null 2>&1 || true
  converge
}

converge() {
  make_certificate
  write_inventory
  log "converging $name with playbooks/site.yml (proxy in sni mode)"
  local start=$SECONDS
  ansible-playbook -i "$state/inventory" playbooks/site.yml >"$state/converge.log" 2>&1 \
    || { tail -40 "$state/converge.log"; die "converge failed"; }
  log "converged in $((SECONDS - start)) s"
}

measure() {  # the product on the older release, then the upgrade under a call
  bash scripts/setup.sh cluster >/dev/null  # builds the older release too
  export BG_PRODUCT=1 LKT_UPGRADE_TO_VERSION=$LIVEKIT_TEST_VERSION LKT_UPGRADE_TO_ARTIFACT_DIR=$ARTIFACT_DIR/$LIVEKIT_TEST_VERSION
  export LKT_LIVEKIT_VERSION=$LIVEKIT_UPGRADE_FROM_VERSION LKT_ARTIFACT_DIR=$ARTIFACT_DIR/$LIVEKIT_UPGRADE_FROM_VERSION
  stand_up
  podman cp "$state/ca.crt" "$name:/tmp/bg-ca.crt"
  printf '127.0.0.1 localhost\n%s lk.bg.test turn.bg.test\n' "$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name")" \
    >"$state/hosts"
  python bench/blue_green.py "$name" "$state" "${HANG_UP:-60}"
}

case ${1:-all} in
  all) stand_up; python bench/blue_green_spike.py "$name" "$state" ;;
  measure) measure ;;
  up) KEEP=1; stand_up ;;
  converge) KEEP=1; converge ;;
  experiment) KEEP=1; python bench/blue_green_spike.py "$name" "$state" ;;
  *) die "usage: $0 [all|up|experiment]" ;;
esac
