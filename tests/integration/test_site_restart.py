"""site.yml restarts a cluster's changed nodes one at a time.

A change that needs a restart (here the log level) reaches both nodes in one site.yml run. Each
node's audit log records, as they happen, when it began to refuse new rooms (drain_started) and
when its new process served again (restarted). The second node may begin its drain only after the
first serves again, so the cluster always has a node that accepts new rooms.
"""

from __future__ import annotations

import calendar
import time

from conftest import audit, run_playbook


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
    result = run_playbook("site.yml", "-e", "livekit_server_logging_level=debug", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    windows = sorted(restart_window(audit(cluster[name])[seen[name]:]) for name in ("a", "b"))
    (_first_began, first_served), (second_began, _second_served) = windows
    assert first_served <= second_began, (
        f"both nodes refused new rooms at once: restart windows {windows}")

    # Back to the scenario's settings, again one node at a time.
    seen = {name: len(audit(cluster[name])) for name in ("a", "b")}
    back = run_playbook("site.yml", timeout=900)
    assert back.returncode == 0, back.stdout[-3000:]
    windows = sorted(restart_window(audit(cluster[name])[seen[name]:]) for name in ("a", "b"))
    assert windows[0][1] <= windows[1][0], windows
