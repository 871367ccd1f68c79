"""Join probe timings (driven by bench/probe.sh against a converged local node).

Runs the role's probe RUNS times against the node, both paths each time, from the controller (the
TURN name resolved through a private /etc/hosts, the lab CA trusted), and prints the median and p95
of the join time and of the time to the first video frame per path, plus the failures seen.
"""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "roles" / "livekit_join_probe" / "files" / "livekit_join_probe.py"

name, ip, turn_domain, ca_file, runs, state = sys.argv[1:7]
state_dir = Path(state)
hosts = state_dir / "probe-hosts"
hosts.write_text(f"127.0.0.1 localhost\n{ip} {turn_domain}\n")
config = state_dir / "probe.json"
config.write_text(json.dumps({
    "targets": [{"name": name, "url": f"ws://{ip}:7880", "turn_domain": turn_domain, "turn_port": 443}],
    "api_key": os.environ["LKT_PROBE_API_KEY"], "room": "livekit-probe", "token_ttl": 120,
    "timeout": 10, "media_timeout": 15, "ca_file": ca_file, "textfile": ""}))
secret = state_dir / "probe-secret"
secret.touch(mode=0o600)
secret.write_text(os.environ["LKT_PROBE_API_SECRET"])
wrap = ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]

results = {"direct": [], "relay_tls": []}
for _ in range(int(runs)):
    out = subprocess.run([*wrap, sys.executable, str(PROBE), "--config", str(config), "--secret-file", str(secret)],
                         capture_output=True, text=True, timeout=300, check=False).stdout
    for line in out.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["path"]].append(result)


def p95(values):
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


print("\n| path | runs | ok | join median | join p95 | first frame median | first frame p95 |")
print("|---|---|---|---|---|---|---|")
for path, rows in results.items():
    good = [r for r in rows if r["failure"] == "none"]
    joins = [r["join_seconds"] * 1000 for r in good]
    frames = [r["first_frame_seconds"] * 1000 for r in good]
    if good:
        print(f"| {path} | {len(rows)} | {len(good)} | {statistics.median(joins):.0f} ms | {p95(joins):.0f} ms | "
              f"{statistics.median(frames):.0f} ms | {p95(frames):.0f} ms |")
    else:
        print(f"| {path} | {len(rows)} | 0 | - | - | - | - |")
    failures = sorted({r["failure"] + ": " + r["detail"] for r in rows if r["failure"] != "none"})
    for failure in failures:
        print(f"  failure seen on {path}: {failure}", file=sys.stderr)
