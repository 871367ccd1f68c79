#!/usr/bin/env bash
# Converge times of playbooks/site.yml on one Debian 12 test host (livekit + redis), as users run
# it: over SSH with pipelining and ControlPersist (Ansible's defaults plus this repo's ansible.cfg),
# and over the podman connection the lab uses. For this checkout and, in the same run and
# interleaved with it, an older revision (default: cf416b7, release 0.4.0) checked out into a
# temporary directory. Each run starts a new container: a fresh converge, then a no-op one.
# Prints a Markdown table of medians, tasks run and seconds per task, and the per-pair ratios.
# Then times drain-aware restarts of the idle node (selfhosted.livekit.livekit_restart).
# Usage: bench/converge.sh [RUNS] [BASE_REV|none]   (default 3 cf416b7)
runs=${1:-3}
base_rev=${2:-cf416b7}
name=lkt-bench
source "$(dirname "$0")/lib.sh"

trees=(current)
tree_dir_current=$REPO_ROOT
if [ "$base_rev" != none ]; then
  trees+=(base)
  tree_dir_base=$state/base
  git -C "$REPO_ROOT" archive --prefix=base/ "$base_rev" | tar -x -C "$state"
  mkdir -p "$tree_dir_base/.cache/collections/ansible_collections/selfhosted"
  ln -sfn ../../../.. "$tree_dir_base/.cache/collections/ansible_collections/selfhosted/livekit"
fi

ssh-keygen -q -t ed25519 -N '' -f "$state/id_ed25519"

start_host() {  # a fresh test host that accepts the run's key; prints its address
  bench_host
  podman exec -i "$name" sh -c 'umask 077; mkdir -p /root/.ssh; cat >/root/.ssh/authorized_keys' <"$state/id_ed25519.pub"
  podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name"
}

write_inventory() {  # TREE CONNECTION ADDRESS
  local dir=$state/inv-$1-$2
  rm -rf "$dir" && mkdir -p "$dir/group_vars"
  cp -r "$(eval echo "\$tree_dir_$1")/molecule/shared/group_vars/all" "$dir/group_vars/all"
  if [ "$2" = ssh ]; then
    cat >"$dir/hosts.yml" <<YAML
all:
  vars:
    ansible_connection: ssh
    ansible_host: $3
    ansible_user: root
    ansible_ssh_private_key_file: $state/id_ed25519
    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  children: {livekit: {hosts: {$name: {}}}, redis: {hosts: {$name: {}}}}
YAML
  else
    cat >"$dir/hosts.yml" <<YAML
all:
  vars: {ansible_connection: containers.podman.podman}
  children: {livekit: {hosts: {$name: {}}}, redis: {hosts: {$name: {}}}}
YAML
  fi
  echo "$dir"
}

converge() {  # TREE INVENTORY -> "seconds changed tasks"; tasks = ok + changed in the recap
  local tree_dir start end out
  tree_dir=$(eval echo "\$tree_dir_$1")
  start=$(date +%s.%N)
  out=$(cd "$tree_dir" && ANSIBLE_COLLECTIONS_PATH=$tree_dir/.cache/collections \
    ansible-playbook -i "$2" playbooks/site.yml 2>&1) || { echo "$out" | tail -30 >&2; die "converge ($1) failed"; }
  end=$(date +%s.%N)
  echo "$out" | awk -v a="$start" -v b="$end" -v h="$name" '$1 == h && /ok=/ {
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "%.2f %d %d\n", b - a, v["changed"], v["ok"] } END {}'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -A fresh noop fresh_changed noop_changed noop_tasks
for i in $(seq "$runs"); do
  for conn in ssh podman; do
    for tree in "${trees[@]}"; do
      address=$(start_host)
      inv=$(write_inventory "$tree" "$conn" "$address")
      read -r secs changed tasks < <(converge "$tree" "$inv")
      [ -n "${secs:-}" ] || die "the fresh converge of $tree over $conn failed"
      fresh[$tree-$conn]+="$secs " fresh_changed[$tree-$conn]+="$changed "
      read -r secs2 changed2 tasks2 < <(converge "$tree" "$inv")
      [ -n "${secs2:-}" ] || die "the no-op converge of $tree over $conn failed"
      noop[$tree-$conn]+="$secs2 " noop_changed[$tree-$conn]+="$changed2 " noop_tasks[$tree-$conn]+="$tasks2 "
      log "run $i $tree over $conn: fresh $secs s ($changed changed), no-op $secs2 s ($changed2 changed, $tasks2 tasks)"
    done
  done
done

ratio() {  # pairwise current/base of two space-separated lists -> median ratio
  paste <(tr ' ' '\n' <<<"$1" | sed '/^$/d') <(tr ' ' '\n' <<<"$2" | sed '/^$/d') | awk '{printf "%.3f\n", $1 / $2}' | median
}

echo
echo "| tree | connection | fresh median s | fresh runs (s) | changed | no-op median s | no-op runs (s) | changed | tasks in a no-op | s per task (no-op) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for tree in "${trees[@]}"; do
  for conn in ssh podman; do
    k=$tree-$conn
    f=$(tr ' ' '\n' <<<"${fresh[$k]}" | sed '/^$/d' | median)
    n=$(tr ' ' '\n' <<<"${noop[$k]}" | sed '/^$/d' | median)
    t=$(tr ' ' '\n' <<<"${noop_tasks[$k]}" | sed '/^$/d' | median)
    label=$([ "$tree" = current ] && git -C "$REPO_ROOT" rev-parse --short HEAD || echo "$base_rev")
    printf '| %s | %s | %.1f | %s| %s| %.1f | %s| %s| %s | %.2f |\n' "$label" "$conn" "$f" "${fresh[$k]}" "${fresh_changed[$k]}" \
      "$n" "${noop[$k]}" "${noop_changed[$k]}" "$t" "$(awk -v a="$n" -v b="$t" 'BEGIN {print a / b}')"
  done
done
if [ "$base_rev" != none ]; then
  echo
  for conn in ssh podman; do
    printf 'ratio this checkout / %s over %s (median of per-run pairs): fresh %s, no-op %s\n' "$base_rev" "$conn" \
      "$(ratio "${fresh[current-$conn]}" "${fresh[base-$conn]}")" "$(ratio "${noop[current-$conn]}" "${noop[base-$conn]}")"
  done
fi

# Drain-aware restarts of the idle node (the host of the last run): how long it refuses new rooms
# (drain request until the new process is healthy) and how long it is down (old process exit to healthy).
inv=$(write_inventory current ssh "$address")
window=() down=()
for i in $(seq "$runs"); do
  out=$(ANSIBLE_LOAD_CALLBACK_PLUGINS=1 ANSIBLE_STDOUT_CALLBACK=json \
    ansible -i "$inv" $name -m selfhosted.livekit.livekit_restart -a "drain_timeout=60 poll_interval=0.2")
  read -r w d < <(echo "$out" | python3 -c 'import json, sys
r = json.load(sys.stdin)["plays"][0]["tasks"][0]["hosts"]["'$name'"]
print(r["refused_new_rooms"]["seconds"], r["restart_seconds"])')
  window+=("$w"); down+=("$d")
done
echo
echo "| drain-aware restart of an idle node ($runs runs) | median s | runs (s) |"
echo "|---|---|---|"
printf '| refused new rooms (drain request to healthy) | %.1f | %s |\n' "$(printf '%s\n' "${window[@]}" | median)" "${window[*]}"
printf '| down (old process exit to healthy) | %.1f | %s |\n' "$(printf '%s\n' "${down[@]}" | median)" "${down[*]}"
