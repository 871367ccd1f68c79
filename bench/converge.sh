#!/usr/bin/env bash
# Time a fresh converge of playbooks/site.yml on a new Debian 12 test host (release artifact
# already in the controller cache) and a no-op re-converge of the same host, then a drain-aware
# restart of the idle node (selfhosted.livekit.livekit_restart). Prints the median of RUNS runs
# of each, as a Markdown table for docs/benchmarks.md.
# Usage: bench/converge.sh [RUNS]   (default 3; each fresh run starts a new container)
runs=${1:-3}
name=lkt-bench
source "$(dirname "$0")/lib.sh"
bench_inventory livekit redis

converge() {  # prints "seconds changed"
  local start end out
  start=$(date +%s.%N)
  out=$(ansible-playbook -i "$state/inventory" playbooks/site.yml 2>&1) || { echo "$out" | tail -30 >&2; die "converge failed"; }
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" -v c="$(echo "$out" | sed -n "s/^$name .*changed=\([0-9]*\).*/\1/p")" \
    'BEGIN { printf "%.2f %s\n", b - a, c }'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

fresh=() noop=() fresh_changed=() noop_changed=()
for i in $(seq "$runs"); do
  podman rm -f -t 0 $name >/dev/null 2>&1 || true
  podman network exists $name || podman network create $name >/dev/null
  podman run -d --name $name --hostname $name --network $name --privileged --systemd=always \
    "$TEST_IMAGE_REPO:bookworm" /sbin/init >/dev/null
  podman exec $name systemctl is-system-running --wait >/dev/null 2>&1 || true
  read -r secs changed < <(converge); fresh+=("$secs"); fresh_changed+=("$changed")
  read -r secs changed < <(converge); noop+=("$secs"); noop_changed+=("$changed")
  log "run $i: fresh ${fresh[-1]} s (changed=${fresh_changed[-1]}), no-op ${noop[-1]} s (changed=${noop_changed[-1]})"
done

# Drain-aware restarts of the idle node: how long it refuses new rooms (drain request until the
# new process is healthy) and how long it is down (old process gone until the new one is healthy).
window=() down=()
for i in $(seq "$runs"); do
  out=$(ANSIBLE_LOAD_CALLBACK_PLUGINS=1 ANSIBLE_STDOUT_CALLBACK=json \
    ansible -i "$state/inventory" $name -m selfhosted.livekit.livekit_restart -a "drain_timeout=60 poll_interval=0.2")
  read -r w d < <(echo "$out" | python3 -c 'import json, sys
r = json.load(sys.stdin)["plays"][0]["tasks"][0]["hosts"]["'$name'"]
print(r["refused_new_rooms"]["seconds"], r["restart_seconds"])')
  window+=("$w"); down+=("$d")
  log "restart $i: refused new rooms ${w} s, down ${d} s"
done

echo
echo "| converge (Debian 12 test host, $runs runs) | median s | runs (s) | changed |"
echo "|---|---|---|---|"
printf '| fresh, warm artifact cache | %.1f | %s | %s |\n' "$(printf '%s\n' "${fresh[@]}" | median)" \
  "$(printf '%.1f ' "${fresh[@]}")" "$(printf '%s ' "${fresh_changed[@]}")"
printf '| no-op re-converge | %.1f | %s | %s |\n' "$(printf '%s\n' "${noop[@]}" | median)" \
  "$(printf '%.1f ' "${noop[@]}")" "$(printf '%s ' "${noop_changed[@]}")"
echo
echo "| drain-aware restart of an idle node ($runs runs) | median s | runs (s) |"
echo "|---|---|---|"
printf '| refused new rooms (drain request to healthy) | %.1f | %s |\n' "$(printf '%s\n' "${window[@]}" | median)" \
  "$(printf '%.1f ' "${window[@]}")"
printf '| down (old process exit to healthy) | %.1f | %s |\n' "$(printf '%s\n' "${down[@]}" | median)" \
  "$(printf '%.1f ' "${down[@]}")"
