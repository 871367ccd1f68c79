"""What blue-green costs and saves during a real upgrade (docs/blue-green.md, docs/benchmarks.md).

On a host standing on livekit-server 1.13.4 with livekit_server_deployment_strategy blue_green
(bench/blue_green_spike.sh measure stands it up), a call runs through nginx (Alice publishes, Bob
watches), a prober asks nginx for a new room every 0.5 s, and playbooks/upgrade.yml moves the host
to 1.13.5. Printed as JSON lines, then a summary:
- new rooms refused during the whole upgrade (goal 0; under the restart strategy a single node refuses
  them for the whole drain);
- seconds from the start of upgrade.yml to the first new room on the new instance;
- seconds the old instance kept serving its call after the swap (until Bob and Alice hang up) and
  until it exited;
- RSS of both instances during the overlap, and Bob's frames and reconnect events.
Usage: python bench/blue_green.py HOST STATE_DIR HANG_UP_AFTER_SECONDS
Bounded: the prober stops at 2000 attempts, every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import blue_green_spike as spike  # noqa: E402  (its helpers; argv: HOST STATE_DIR)

HANG_UP = int(sys.argv[3]) if len(sys.argv) > 3 else 60
REPO = spike.REPO
SLOT_PORTS = {"a": 6789, "b": 6799, "c": 6809}


def instance_pids() -> dict:
    out = spike.sh("for s in a b c; do echo $s $(systemctl show -p MainPID --value livekit-server@$s); done")
    return {slot: int(pid) for slot, pid in (line.split() for line in out.splitlines()) if int(pid) > 0}


def rss_mb(pid: int) -> float:
    out = spike.sh(f"grep VmRSS /proc/{pid}/status", check=False)
    found = re.search(r"(\d+)", out)
    return int(found.group(1)) / 1024 if found else 0.0


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.stop, self.samples = threading.Event(), []

    def run(self) -> None:
        while not self.stop.is_set() and len(self.samples) < 3000:
            pids = instance_pids()
            self.samples.append((time.monotonic() - spike.T0, {slot: rss_mb(pid) for slot, pid in pids.items()}))
            time.sleep(1)


def main() -> int:
    record = json.loads(spike.sh("cat /var/lib/livekit-deploy/deployment.json"))
    old_slot = record["live_slot"]
    old_id = spike.node_id({"prom": SLOT_PORTS[old_slot]})
    spike.note("start", live_slot=old_slot, version=record["version"], node_id=old_id)
    alice = spike.Person("old-call", "alice", publish=True, seconds=HANG_UP + 400)
    bob = spike.Person("old-call", "bob", seconds=HANG_UP + 400)
    spike.note("call joined", alice=alice.ok, bob=bob.ok)
    sampler, prober = Sampler(), spike.Prober()
    sampler.start()
    prober.start()
    time.sleep(3)
    env = dict(os.environ, LKT_LIVEKIT_VERSION=os.environ["LKT_UPGRADE_TO_VERSION"],
               LKT_ARTIFACT_DIR=os.environ["LKT_UPGRADE_TO_ARTIFACT_DIR"])
    began = time.monotonic() - spike.T0
    upgrade = subprocess.run(["ansible-playbook", "-i", str(spike.STATE / "inventory"), str(REPO / "playbooks" / "upgrade.yml")],
                             capture_output=True, text=True, env=env, timeout=1200, check=False)
    ended = time.monotonic() - spike.T0
    spike.note("upgrade.yml", rc=upgrade.returncode, seconds=round(ended - began, 1),
               tail=upgrade.stdout.strip().splitlines()[-3:] if upgrade.returncode else None)
    after = json.loads(spike.sh("cat /var/lib/livekit-deploy/deployment.json"))
    swap_event = next((json.loads(line) for line in reversed(spike.sh("cat /var/lib/livekit-deploy/audit.jsonl").splitlines())
                       if '"swap"' in line), {})
    time.sleep(max(0, HANG_UP - (time.monotonic() - spike.T0 - ended)))
    calls = {"alice": alice.hang_up(), "bob": bob.hang_up()}
    hung_up = time.monotonic() - spike.T0
    exited = spike.wait(lambda: spike.sh(f"systemctl is-active livekit-server@{old_slot}", check=False).strip()
                        in ("inactive", "failed"), 120)
    exit_at = time.monotonic() - spike.T0
    prober.stop.set()
    sampler.stop.set()
    prober.join(10)
    sampler.join(5)
    failures = [o for o in prober.outcomes if str(o[1]).startswith("error")]
    first_new = next((t for t, placed in prober.outcomes if placed and not str(placed).startswith("error")
                      and placed != old_id and t > began), None)
    overlap = [sum(s.values()) for t, s in sampler.samples if len(s) >= 2]
    before = [sum(s.values()) for t, s in sampler.samples if t < began]
    summary = dict(
        upgrade_rc=upgrade.returncode, upgrade_seconds=round(ended - began, 1),
        live_slot_after=after.get("live_slot"), version_after=after.get("version"),
        new_room_attempts=len(prober.outcomes), new_room_failures=len(failures),
        first_new_room_on_new_instance_s=round(first_new - began, 1) if first_new else None,
        swap_start_seconds=swap_event.get("start_seconds"),
        old_instance_served_after_upgrade_s=round(hung_up - ended, 1),
        old_instance_exited_after_hang_up_s=round(exit_at - hung_up, 1) if exited else None,
        rss_before_mb=round(max(before), 1) if before else None,
        rss_overlap_max_mb=round(max(overlap), 1) if overlap else None,
        bob_events=[e.get("event") for e in calls["bob"]["events"]][:10],
        bob_video_frames=calls["bob"]["summary"].get("video_frames_received"),
        bob_connected_seconds=calls["bob"]["summary"].get("connected_seconds"))
    spike.note("summary", **summary)
    return 0 if upgrade.returncode == 0 and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
