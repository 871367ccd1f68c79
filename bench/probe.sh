#!/usr/bin/env bash
# Join probe timings on a local node: one throwaway Debian 12 test host (livekit + redis) converged
# with site.yml, then the livekit_join_probe role's probe (roles/livekit_join_probe/files/) run RUNS
# times from the controller with the node's TURN name resolving through a private /etc/hosts.
# Prints the join time and the time to the first video frame (median and p95) per path, direct and
# relay-only (after the TURN/TLS check on 443), as Markdown for docs/benchmarks.md. RUNS <= 50.
# Usage: bench/probe.sh [RUNS]   (default 20)
runs=${1:-20}
[ "$runs" -le 50 ] || { echo "at most 50 runs" >&2; exit 2; }
name=lkt-bench-probe
source "$(dirname "$0")/lib.sh"
bench_inventory livekit redis
export LKT_PROBE_API_KEY=APIbenchprobe LKT_PROBE_API_SECRET=$(openssl rand -hex 24)
cat >"$state/inventory/group_vars/all/probe.yml" <<'YAML'
livekit_server_api_keys: >-
  {{ {lookup('ansible.builtin.env', 'LKT_API_KEY'): lookup('ansible.builtin.env', 'LKT_API_SECRET'),
      lookup('ansible.builtin.env', 'LKT_PROBE_API_KEY'): lookup('ansible.builtin.env', 'LKT_PROBE_API_SECRET')} }}
YAML
bench_host
log "converging $name with site.yml"
bench_converge
ip=$(bench_address)
python bench/probe.py "$name" "$ip" "turn.$name.test" "$state/ca/ca.crt" "$runs" "$state"
