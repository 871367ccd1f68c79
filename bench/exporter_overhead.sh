#!/usr/bin/env bash
# What does being scraped every 15 s cost livekit-server during a call? Converges a fresh Debian 12
# test host with site.yml (livekit + redis, the exporters and livekit-server's metrics on its
# private address as in molecule/monitoring, open to this machine's address on the test network),
# then runs bench/exporter_overhead.py: PARTICIPANTS real clients (LiveKit's Python SDK; all but one
# publish audio and video) in one room, and PAIRS pairs of WINDOW-second windows with and without a
# scraper that GETs livekit-server's, node-exporter's and redis-exporter's /metrics every 15 s (as
# Prometheus would). The order alternates (off,on / on,off) so a drift over the call cancels out.
# Per window: CPU seconds (utime+stime from /proc/PID/stat) per second of wall time and the mean RSS
# of livekit-server and of both exporters. Then the CPU one scrape of livekit-server costs, from a
# burst of back-to-back scrapes. Prints Markdown for docs/benchmarks.md. Bounded: PAIRS <= 8,
# WINDOW <= 120 (the default run takes about 12 minutes, converge included).
# Usage: bench/exporter_overhead.sh [PAIRS] [WINDOW] [PARTICIPANTS]   (default 4 60 3)
pairs=${1:-4}
window=${2:-60}
participants=${3:-3}
[ "$pairs" -ge 1 ] && [ "$pairs" -le 8 ] || { echo "PAIRS must be 1..8" >&2; exit 2; }
[ "$window" -ge 30 ] && [ "$window" -le 120 ] || { echo "WINDOW must be 30..120 s" >&2; exit 2; }
[ "$participants" -ge 2 ] && [ "$participants" -le 6 ] || { echo "PARTICIPANTS must be 2..6" >&2; exit 2; }
name=lkt-benchmon-ovh
source "$(dirname "$0")/lib.sh"

bench_inventory livekit redis
# The scraper runs on this machine, which reaches the test host from the network's gateway address.
cat >"$state/inventory/group_vars/all/monitoring.yml" <<'YAML'
livekit_exporters_listen_address: "{{ ansible_facts['default_ipv4']['address'] }}"
livekit_exporters_prometheus_sources: ["{{ ansible_facts['default_ipv4']['gateway'] }}/32"]
livekit_server_prometheus_sources: ["{{ ansible_facts['default_ipv4']['gateway'] }}/32"]
YAML
bench_host
log "converging $name (livekit, redis, exporters) with site.yml"
bench_converge
python bench/exporter_overhead.py "$name" "$(bench_address)" "$pairs" "$window" "$participants"
