"""Stop-to-page latency of LivekitServerDown (driven by bench/alert_latency.sh).

Usage: alert_latency.py NODE PROM RUNS RULES_FILE

Each run: wait a random 0-15 s (so the stop falls anywhere in the scrape cycle), `systemctl stop
livekit-server` on NODE, wait until the receiver on PROM logs a firing LivekitServerDown for NODE,
start livekit-server again and wait for the resolved notification (Alertmanager deletes the alert
group only then, so the next run pages like a first outage). Each page is split into:
  scrape: stop -> the first failed scrape of livekit-server (Prometheus's `up` sample timestamp)
  eval:   that scrape -> the evaluation that saw it (activeAt: the alert went pending)
  for:    activeAt -> firing (the rule's `for:`; evaluations every evaluation_interval)
  notify: firing -> the POST at the receiver (Alertmanager's group_wait for a new group + sending)
The webhook's startsAt is the time the alert fired (Prometheus sends its FiredAt); activeAt is the
value of Prometheus's ALERTS_FOR_STATE series for the alert.
"""
import datetime
import json
import random
import statistics
import subprocess
import sys
import time

import yaml

node, prom, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
RECEIVER_LOG = "/var/log/lkt-bench-receiver.jsonl"
ALERT = "LivekitServerDown"


def sh(host: str, command: str, stdin: str | None = None) -> str:
    return subprocess.run(["podman", "exec", "-i", host, "sh", "-c", command], input=stdin, capture_output=True,
                          text=True, check=True, timeout=120).stdout


def prom_query(expr: str, at: float) -> list:
    script = ("import json, sys, urllib.parse, urllib.request; q = urllib.parse.urlencode({'query': sys.argv[1], "
              "'time': sys.argv[2]}); print(urllib.request.urlopen('http://127.0.0.1:9090/api/v1/query?' + q, "
              "timeout=10).read().decode())")
    out = subprocess.run(["podman", "exec", prom, "python3", "-c", script, expr, f"{at:.3f}"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return json.loads(out)["data"]["result"]


def rfc3339(text: str) -> float:
    """Alertmanager's timestamps carry nanoseconds; Python reads microseconds."""
    head, frac = (text.rstrip("Z").split(".", 1) + [""])[:2]
    frac = (frac.split("+")[0].split("-")[0] + "000000")[:6]
    return datetime.datetime.fromisoformat(f"{head}.{frac}+00:00").timestamp()


def notifications() -> list[tuple[float, str, float]]:
    """(arrival, status, startsAt = when it fired) of every LivekitServerDown alert for NODE the receiver got."""
    out = []
    for line in sh(prom, f"cat {RECEIVER_LOG} 2>/dev/null || true").splitlines():
        event = json.loads(line)
        for alert in event["body"].get("alerts", []):
            if alert["labels"].get("alertname") == ALERT and alert["labels"].get("instance") == node:
                out.append((event["received"], alert["status"], rfc3339(alert["startsAt"])))
    return out


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        if text[i].isdigit():
            number += text[i]
            i += 1
            continue
        unit = "ms" if text[i:i + 2] == "ms" else text[i]
        total += int(number) * units[unit]
        number, i = "", i + len(unit)
    return total


# The rules as the role installed them on the monitoring host (a template in the repository).
installed = yaml.safe_load(sh(prom, "cat /etc/prometheus/rules/livekit.rules.yml"))
rule = next(r for g in installed["groups"] for r in g["rules"] if r.get("alert") == ALERT)
for_s = duration(rule["for"])
up = f'up{{job="livekit", instance="{node}"}}'

wait_for(lambda: prom_query(f"{up} == 1", time.time()), 180, "Prometheus to scrape livekit-server")
rows = []
for n in range(1, runs + 1):
    time.sleep(random.uniform(0, 15))
    seen = len(notifications())
    stop = time.time()
    sh(node, "systemctl stop livekit-server")
    stopped = time.time()
    page = wait_for(lambda: [x for x in notifications()[seen:] if x[1] == "firing"], 300, f"the page (run {n})")[0]
    arrival, fired = page[0], page[2]
    samples = [(float(t), v) for t, v in prom_query(f"{up}[10m]", arrival)[0]["values"]]
    last_up = max(i for i, (_t, v) in enumerate(samples) if v == "1")
    first_failed = samples[last_up + 1][0]
    sh(node, "systemctl start livekit-server")
    started = time.time()
    resolved = wait_for(lambda: [x for x in notifications()[seen:] if x[1] == "resolved"], 600,
                        f"the resolved notification (run {n})")[0]
    state = prom_query(f'ALERTS_FOR_STATE{{alertname="{ALERT}", instance="{node}"}}', arrival)
    active_at = float(state[0]["value"][1]) if state else fired - for_s
    rows.append({"run": n, "total": arrival - stop, "scrape": first_failed - stop, "eval": active_at - first_failed,
                 "for": fired - active_at, "notify": arrival - fired, "stop_cmd": stopped - stop,
                 "resolved_after_start": resolved[0] - started})
    r = rows[-1]
    print(f"run {n}: page after {r['total']:.1f} s (scrape {r['scrape']:.1f} + eval {r['eval']:.1f} + for "
          f"{r['for']:.0f} + notify {r['notify']:.1f}); resolved {r['resolved_after_start']:.0f} s after the start",
          file=sys.stderr, flush=True)

print("| run | stop → page (s) | stop → failed scrape | → evaluation (activeAt) | `for:` | firing → receiver "
      "| resolved after start (s) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['run']} | **{r['total']:.1f}** | {r['scrape']:.1f} | {r['eval']:.1f} | {r['for']:.0f} | "
          f"{r['notify']:.1f} | {r['resolved_after_start']:.0f} |")
totals = [r["total"] for r in rows]
print(f"\nstop → page: median {statistics.median(totals):.1f} s, max {max(totals):.1f} s ({len(rows)} runs; goal ≤ 90 s); "
      f"medians of the parts: scrape {statistics.median(r['scrape'] for r in rows):.1f}, "
      f"eval {statistics.median(r['eval'] for r in rows):.1f}, for {for_s:.0f}, "
      f"notify {statistics.median(r['notify'] for r in rows):.1f} s")
print(json.dumps(rows))
