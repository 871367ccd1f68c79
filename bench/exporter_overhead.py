"""livekit-server's CPU and RSS with and without a 15 s scrape, during a call (driven by
bench/exporter_overhead.sh).

Usage: exporter_overhead.py NODE ADDRESS PAIRS WINDOW PARTICIPANTS
"""
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

node, address, pairs, window, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
PARTICIPANT = Path(__file__).resolve().parents[1] / "tests" / "participant" / "lk_participant.py"
INTERVAL = 15
WARMUP = 20
UNITS = {"livekit-server": "livekit-server", "node-exporter": "prometheus-node-exporter",
         "redis-exporter": "prometheus-redis-exporter"}
TARGETS = {"livekit-server": f"http://{address}:6789/metrics", "node-exporter": f"http://{address}:9100/metrics",
           "redis-exporter": f"http://{address}:9121/metrics"}
# One podman exec per sample: MainPID, utime + stime (clock ticks) and VmRSS (KiB) of each unit.
SAMPLE = "; ".join(
    f"p=$(systemctl show -p MainPID --value {unit}); set -- $(cut -d' ' -f14,15 /proc/$p/stat); "
    f"echo {label} $p $(($1 + $2)) $(awk '/^VmRSS/ {{print $2}}' /proc/$p/status)"
    for label, unit in UNITS.items())
TICK = os.sysconf("SC_CLK_TCK")
BURST = 100


def sample() -> dict:
    out = subprocess.run(["podman", "exec", node, "bash", "-c", SAMPLE], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    now = time.monotonic()
    values = {}
    for line in out.splitlines():
        label, pid, ticks, rss = line.split()
        values[label] = {"pid": int(pid), "cpu": int(ticks) / TICK, "rss_mib": int(rss) / 1024}
    return {"t": now, **values}


def scrape(label: str) -> tuple[float, int]:
    start = time.monotonic()
    with urllib.request.urlopen(TARGETS[label], timeout=10) as resp:
        size = len(resp.read())
    return time.monotonic() - start, size


scrapes: list[dict] = []


def scraper(stop: threading.Event) -> None:
    """Every INTERVAL seconds, scrape the three targets one after the other (as Prometheus would,
    give or take its concurrency), until stop is set."""
    while True:
        tick = time.monotonic()
        for label in TARGETS:
            seconds, size = scrape(label)
            scrapes.append({"target": label, "seconds": seconds, "bytes": size})
        if stop.wait(max(0.0, INTERVAL - (time.monotonic() - tick))):
            return


def measure(scraping: bool) -> dict:
    """One window: samples every 5 s; CPU from its first and last sample, RSS their mean."""
    stop = threading.Event()
    thread = threading.Thread(target=scraper, args=(stop,), daemon=True) if scraping else None
    samples = [sample()]
    if thread:
        thread.start()
    end = samples[0]["t"] + window
    while time.monotonic() < end:
        time.sleep(max(0.0, min(5.0, end - time.monotonic())))
        samples.append(sample())
    stop.set()
    if thread:
        thread.join(timeout=30)
    first, last = samples[0], samples[-1]
    row = {"scraping": scraping, "seconds": last["t"] - first["t"]}
    for label in UNITS:
        assert first[label]["pid"] == last[label]["pid"], f"{label} restarted during a window"
        row[f"{label} cpu%"] = 100 * (last[label]["cpu"] - first[label]["cpu"]) / row["seconds"]
        row[f"{label} rss"] = statistics.mean(s[label]["rss_mib"] for s in samples)
    return row


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


for label in TARGETS:
    scrape(label)  # every target answers this machine before anything is measured

total = WARMUP + pairs * 2 * (window + 10) + 120
env = dict(os.environ, LIVEKIT_API_KEY=os.environ["LKT_API_KEY"], LIVEKIT_API_SECRET=os.environ["LKT_API_SECRET"])
people = []
for i in range(count):
    proc = subprocess.Popen(
        [sys.executable, str(PARTICIPANT), "--url", f"ws://{address}:7880", "--room", "bench-exporters",
         "--timeout", str(total + 60), "stay", "--identity", f"p{i}", "--seconds", str(total),
         *(["--publish"] if i < count - 1 else [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    first = json.loads(proc.stdout.readline() or "{}")
    assert first.get("event") == "connected", first
    people.append(proc)
time.sleep(WARMUP)
with urllib.request.urlopen(TARGETS["livekit-server"], timeout=10) as resp:
    metrics = resp.read().decode()
call = (f"{metric_sum(metrics, 'livekit_participant_total'):.0f} participants, "
        f"{metric_sum(metrics, 'livekit_track_published_total'):.0f} published tracks, "
        f"{metric_sum(metrics, 'livekit_track_subscribed_total'):.0f} subscribed tracks")
print(f"call: {call}", file=sys.stderr, flush=True)

load_before = os.getloadavg()
rows = []
try:
    for pair in range(pairs):
        for scraping in ((False, True) if pair % 2 == 0 else (True, False)):
            rows.append(measure(scraping))
            r = rows[-1]
            print(f"pair {pair + 1} {'scraped' if scraping else 'idle   '}: livekit-server "
                  f"{r['livekit-server cpu%']:.1f} % CPU, {r['livekit-server rss']:.1f} MiB", file=sys.stderr, flush=True)
            time.sleep(2)
    # The cost of one scrape of livekit-server: back-to-back scrapes between two idle stretches, less
    # the call's own CPU rate over the same time.
    before = sample()
    time.sleep(15)
    mid = sample()
    for _ in range(BURST):
        scrape("livekit-server")
    after = sample()
    time.sleep(15)
    end = sample()
    lk = "livekit-server"
    rate = ((mid[lk]["cpu"] - before[lk]["cpu"]) + (end[lk]["cpu"] - after[lk]["cpu"])) / (
        (mid["t"] - before["t"]) + (end["t"] - after["t"]))
    burst_cpu = after[lk]["cpu"] - mid[lk]["cpu"] - rate * (after["t"] - mid["t"])
    per_scrape_ms = 1000 * burst_cpu / BURST
finally:
    for proc in people:
        proc.terminate()
    reports = []
    for proc in people:
        out = proc.communicate(timeout=60)[0]
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        reports.append(lines[-1] if lines else {})
load_after = os.getloadavg()
print(json.dumps({"rows": rows, "per_scrape_ms": per_scrape_ms, "reports": reports}), file=sys.stderr, flush=True)

labels = list(UNITS)
print("| window | scraper | " + " | ".join(f"{label} CPU % | {label} RSS MiB" for label in labels) + " |")
print("|---|---|" + "---|---|" * len(labels))
for i, r in enumerate(rows, 1):
    print(f"| {i} | {'every 15 s' if r['scraping'] else 'none'} | "
          + " | ".join(f"{r[label + ' cpu%']:.2f} | {r[label + ' rss']:.1f}" for label in labels) + " |")


def med(key: str, scraping: bool) -> float:
    return statistics.median(r[key] for r in rows if r["scraping"] == scraping)


def per_pair(key: str) -> tuple[str, float]:
    """Median over the pairs of scraped / idle (n/a if an idle window measured 0) and of scraped - idle."""
    ratios, diffs = [], []
    for pair in range(pairs):
        a, b = rows[2 * pair], rows[2 * pair + 1]
        on, off = (a, b) if a["scraping"] else (b, a)
        diffs.append(on[key] - off[key])
        if off[key] > 0:
            ratios.append(on[key] / off[key])
    ratio = f"{statistics.median(ratios):.3f}" if len(ratios) == pairs else "n/a"
    return ratio, statistics.median(diffs)


print()
print("| process | CPU % idle (median) | CPU % scraped (median) | ratio | difference (points) "
      "| RSS MiB idle | RSS MiB scraped | ratio | difference (MiB) |")
print("|---|---|---|---|---|---|---|---|---|")
for label in labels:
    c, m = f"{label} cpu%", f"{label} rss"
    (cr, cd), (mr, md) = per_pair(c), per_pair(m)
    print(f"| {label} | {med(c, False):.2f} | {med(c, True):.2f} | {cr} | {cd:+.2f} | {med(m, False):.1f} | "
          f"{med(m, True):.1f} | {mr} | {md:+.1f} |")
lk_scrapes = [s for s in scrapes if s["target"] == "livekit-server"]
print(f"\nratio and difference: the median of the {pairs} per-pair values (scraped vs idle window). {pairs} pairs × {window} s, "
      f"{count} participants ({count - 1} publishing audio+video): {call}.")
for label in labels:
    mine = [s for s in scrapes if s["target"] == label]
    print(f"scrape of {label}: median {1000 * statistics.median(s['seconds'] for s in mine):.0f} ms, "
          f"{statistics.median(s['bytes'] for s in mine) / 1024:.0f} KiB ({len(mine)} scrapes)")
print(f"one scrape of livekit-server costs it {per_scrape_ms:.1f} ms of CPU (burst of {BURST}, call's own "
      f"{100 * rate:.1f} % subtracted): at one scrape per {INTERVAL} s, {per_scrape_ms / INTERVAL / 10:.3f} % of a core")
print(f"clients: {sum(not r.get('disconnected') for r in reports)}/{count} stayed connected; video frames received "
      f"{[r.get('video_frames_received') for r in reports]}")
print(f"load average of this machine (1/5/15 min): before {' '.join(f'{x:.1f}' for x in load_before)}, "
      f"after {' '.join(f'{x:.1f}' for x in load_after)}")
print(json.dumps({"rows": rows, "per_scrape_ms": per_scrape_ms, "livekit_scrapes": len(lk_scrapes)}))
