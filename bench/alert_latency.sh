#!/usr/bin/env bash
# How long from `systemctl stop livekit-server` until the on-call webhook gets LivekitServerDown,
# with what the collection ships: the rule's `for:` and the livekit_monitoring role's default
# scrape and evaluation intervals and Alertmanager timings (nothing shortened, unlike the
# monitoring scenario). Two fresh Debian 12 test hosts converged with site.yml: a LiveKit node with
# its Redis and exporters, and a `monitoring` host running Debian's Prometheus and Alertmanager
# with a webhook receiver: a small Python HTTP server on that host that records when each POST
# arrives. Then bench/alert_latency.py: RUNS times stop livekit-server (at a random point of the
# scrape cycle), wait for the page, start it again and wait for the resolved notification (which
# Alertmanager sends at the group's next group_interval, so a run takes about 6-7 minutes).
# Prints each run split into its parts and the median and max (Markdown for docs/benchmarks.md).
# Usage: bench/alert_latency.sh [RUNS]   (default 5, at most 10)
runs=${1:-5}
[ "$runs" -ge 1 ] && [ "$runs" -le 10 ] || { echo "RUNS must be 1..10" >&2; exit 2; }
name=lkt-benchmon-node
prom=lkt-benchmon-prom
bench_hosts=("$prom")
source "$(dirname "$0")/lib.sh"

bench_inventory livekit redis monitoring:$prom
mkdir -p "$state/inventory/group_vars/monitoring"
# As in molecule/monitoring: the exporters and livekit-server's metrics on the node's private
# address, open to the monitoring host only. The intervals are the role's defaults.
cat >"$state/inventory/group_vars/all/monitoring.yml" <<YAML
livekit_exporters_listen_address: "{{ ansible_facts['default_ipv4']['address'] }}"
livekit_exporters_prometheus_sources: ["{{ hostvars['$prom']['ansible_facts']['default_ipv4']['address'] }}/32"]
livekit_server_prometheus_sources: ["{{ hostvars['$prom']['ansible_facts']['default_ipv4']['address'] }}/32"]
YAML
cat >"$state/inventory/group_vars/monitoring/main.yml" <<'YAML'
livekit_monitoring_receivers:
  - {name: oncall, type: webhook, url: "http://127.0.0.1:9099/alerts"}
livekit_monitoring_routes:
  - {receiver: oncall, matchers: ['severity=~"critical|warning"']}
YAML

bench_host "$name" &
bench_host "$prom" &
wait
log "converging $name (livekit, redis) and $prom (monitoring) with site.yml"
bench_converge

podman exec -i "$prom" sh -c 'cat >/usr/local/bin/lkt-bench-receiver.py' <<'PY'
"""The on-call stand-in: appends each POST body (Alertmanager's webhook JSON) to a file, one line
each, with the time it arrived. Usage: lkt-bench-receiver.py ADDRESS PORT LOGFILE"""
import http.server
import json
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        received = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(sys.argv[3], "a", encoding="utf-8") as log:
            log.write(json.dumps({"received": received, "body": json.loads(body)}) + "\n")
        self.send_response(200)
        self.end_headers()


http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
PY
podman exec "$prom" systemd-run --unit=lkt-bench-receiver python3 /usr/local/bin/lkt-bench-receiver.py \
  127.0.0.1 9099 /var/log/lkt-bench-receiver.jsonl >/dev/null
grep -E '^\s+(scrape|evaluation)_interval' <(podman exec "$prom" cat /etc/prometheus/prometheus.yml) >&2
grep -E '^\s+group_(wait|interval)' <(podman exec "$prom" cat /etc/prometheus/alertmanager.yml) >&2
python bench/alert_latency.py "$name" "$prom" "$runs"
