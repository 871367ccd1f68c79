"""site.yml restarts a cluster's changed nodes one at a time.

A change that needs a restart (here the log level) reaches both nodes in one site.yml run. Each
node's audit log records, as they happen, when it began to refuse new rooms (drain_started) and
when its new process served again (restarted). The second node may begin its drain only after the
first serves again, so the cluster always has a node that accepts new rooms.
"""

from __future__ import annotations

import calendar
import os
import signal
import subprocess
import time

from conftest import (Participant, audit, place_room, playbook_command, run_playbook, run_playbook_watched, unit_state,
                      wait_until)


def when(event: dict) -> float:
    """The event's time: epoch seconds (`ts`), or its ISO time to the second on older records."""
    if "ts" in event:
        return float(event["ts"])
    return float(calendar.timegm(time.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ")))


def restart_window(events: list[dict]) -> tuple[float, float]:
    began = next(when(e) for e in events if e["event"] in ("drain_started", "drain_joined"))
    served = next(when(e) for e in events if e["event"] == "restarted")
    return began, served


def test_site_restarts_changed_nodes_one_at_a_time(cluster):
    seen = {name: len(audit(cluster[name])) for name in ("a", "b")}
    # With -vvv --diff, and every command line sampled: no secret may show in either.
    result = run_playbook_watched("site.yml", "-e", "livekit_server_logging_level=debug",
                                  nodes=list(cluster.values()), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    windows = sorted(restart_window(audit(cluster[name])[seen[name]:]) for name in ("a", "b"))
    (_first_began, first_served), (second_began, _second_served) = windows
    assert first_served <= second_began, (
        f"both nodes refused new rooms at once: restart windows {windows}")

    # The next test puts the scenario's settings back.


def main_pid(node) -> str:
    return node.sh("systemctl show -p MainPID --value livekit-server").stdout.strip()


def test_a_drain_outlives_the_controller(cluster, api_key, api_secret, people):
    """The controller goes away while node A drains for a live call (ansible-playbook killed, every
    SSH session on A cut): A still restarts on its own once the call ends, and its audit log has
    the drain from the moment it began."""
    a = cluster["a"]
    caller = Participant(a, place_room(cluster, a, "outlive", api_key, api_secret), "caller", api_key, api_secret)
    people.append(caller)
    pid, seen = main_pid(a), len(audit(a))
    run = subprocess.Popen(
        # Not --limit: the scenario's inventory reads the Redis host's address from its facts.
        playbook_command("site.yml", "-e", "livekit_server_logging_level=warn",
                         "-e", "livekit_server_restart_policy=drain"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: unit_state(a) == "deactivating", 300), "node A never started draining"
        assert [e for e in audit(a)[seen:] if e["event"] == "drain_started"], "the drain is not on record yet"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    a.sh("pkill -KILL -f '[s]shd: .*@' || true")  # [s]: not the shell running pkill
    time.sleep(3)
    assert unit_state(a) == "deactivating" and caller.connected(), "the drain must go on without the controller"

    call = caller.hang_up()
    assert call["summary"]["disconnected"] is False, call
    assert wait_until(lambda: unit_state(a) == "active" and main_pid(a) not in ("0", pid), 90), (
        "node A did not restart on its own after the call ended")
    # The unit is up before the detached restart has checked its health and logged it.
    assert wait_until(lambda: [e for e in audit(a)[seen:] if e["event"] == "restarted"], 120), audit(a)[seen:]

    # The next run finds the restart done and puts the scenario's settings back.
    again = run_playbook("site.yml", timeout=600)
    assert again.returncode == 0, again.stdout[-3000:]
    for node in (cluster["a"], cluster["b"]):
        assert node.sh("test -e /var/lib/livekit/restart-pending", check=False).returncode != 0
