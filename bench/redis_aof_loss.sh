#!/usr/bin/env bash
# How much does Redis lose on kill -9 with the role's AOF settings (appendfsync everysec)?
# Converges a fresh Debian 12 test host with the redis role (site.yml, host in the redis group
# only), then runs bench/redis_aof_loss.py in it: TRIALS rounds of writing INCRs for 3 s,
# kill -9 redis-server, let systemd restart it, and compare the recovered counter with the last
# acknowledged value. Prints each trial and the medians (Markdown for docs/benchmarks.md).
# Usage: bench/redis_aof_loss.sh [TRIALS]   (default 5)
trials=${1:-5}
name=lkt-bench-redis
source "$(dirname "$0")/lib.sh"
bench_inventory redis
bench_host
log "converging Redis on $name"
ansible-playbook -i "$state/inventory" playbooks/site.yml >"$state/converge.log" 2>&1 \
  || { tail -30 "$state/converge.log"; die "converge failed"; }
grep -q '^appendfsync everysec' <(podman exec $name cat /etc/redis/redis.conf) || die "AOF everysec is not configured"

log "running $trials kill -9 trials"
podman exec -i $name python3 - "$trials" <bench/redis_aof_loss.py >"$state/results.json"
python3 - "$state/results.json" <<'PY'
import json, statistics, sys
rows = json.load(open(sys.argv[1]))
print("| trial | writes/s | acknowledged | recovered | lost writes | lost window (s) |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['trial']} | {r['writes_per_second']} | {r['acknowledged']} | {r['recovered']} | {r['lost_writes']} | {r['lost_seconds']} |")
print(f"\nmedian lost writes: {statistics.median(r['lost_writes'] for r in rows)}, "
      f"median lost window: {statistics.median(r['lost_seconds'] for r in rows):.3f} s, "
      f"worst: {max(r['lost_seconds'] for r in rows):.3f} s ({len(rows)} trials, appendfsync everysec)")
PY
