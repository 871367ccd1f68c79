"""The drain-aware restart's decisions, driven by a simulated node and clock. The real server,
systemd and signals are exercised by the molecule scenarios; here each rule is shown to matter."""

from __future__ import annotations

import json

import pytest

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_node import (
    DrainRestart,
    RestartError,
    append_audit,
    parse_metrics,
    parse_timespan,
)


class FakeNode:
    """A livekit-server under systemd: participants leave at set times; a drain makes the process
    exit once the node is empty; a restart starts a new process with the installed version."""

    def __init__(self, participants, leave_at=(), version="1.13.4", installed="1.13.5", active=True,
                 stop_budget=18120.0, healthy_after_start=True):
        self.now = 0.0
        self.participants = participants
        self.leave_at = sorted(leave_at)
        self.pid = 100 if active else 0
        self.versions = {100: version}
        self.installed = installed
        self.state = "active" if active else "inactive"
        self.stop_budget = stop_budget
        self.healthy_after_start = healthy_after_start
        self.calls = []
        self.restart_pending = False

    # clock
    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        while self.leave_at and self.leave_at[0] <= self.now:
            self.leave_at.pop(0)
            self.participants -= 1
        if self.state == "deactivating" and self.participants == 0:
            self._exit()

    def _exit(self):
        self.versions.pop(self.pid, None)
        self.pid = 0
        self.state = "inactive"
        if self.restart_pending:
            self._start()

    def _start(self):
        self.restart_pending = False
        self.pid = 200
        self.versions[200] = self.installed
        self.participants = 0
        self.state = "active" if self.healthy_after_start else "activating"

    # systemd
    unit = "livekit-server.service"

    def show(self):
        return {"LoadState": "loaded", "ActiveState": self.state, "MainPID": self.pid,
                "TimeoutStopSec": self.stop_budget}

    def restart(self):
        self.calls.append("restart")
        self.state, self.restart_pending = "deactivating", True

    def stop(self):
        self.calls.append("stop")
        self.state = "deactivating"

    def start(self):
        self.calls.append("start")
        if self.state == "inactive":
            self._start()

    def force(self):
        self.calls.append("force")
        self.participants = 0
        self._exit()

    def restarter(self):
        return DrainRestart(
            self, load=lambda: {"rooms": 1 if self.participants else 0, "participants": self.participants}
            if self.pid else None,
            health=lambda: self.state == "active", version=self.versions.get,
            alive=lambda pid: pid in self.versions, clock=self.clock, sleep=self.sleep, wall=self.clock, poll=1.0)


def test_waits_for_participants_to_leave_then_restarts_on_the_new_version():
    node = FakeNode(participants=2, leave_at=[10, 30])
    result = node.restarter().run(drain_timeout=600, expected_version="1.13.5")
    assert result["action"] == "restarted" and result["changed"]
    assert (result["participants_at_drain"], result["forced_participants"]) == (2, 0)
    assert result["drain_seconds"] == 30
    assert (result["old_version"], result["new_version"]) == ("1.13.4", "1.13.5")
    assert result["refused_new_rooms"]["seconds"] == 30
    assert node.calls == ["restart"]


def test_deadline_fails_and_leaves_the_node_draining_without_forcing():
    node = FakeNode(participants=1, leave_at=[5000])
    with pytest.raises(RestartError) as err:
        node.restarter().run(drain_timeout=60)
    assert "still draining" in str(err.value)
    assert "force" not in node.calls and node.state == "deactivating"
    assert err.value.result["participants_left"] == 1


def test_deadline_with_force_reports_who_was_cut_off():
    node = FakeNode(participants=3, leave_at=[5])
    result = node.restarter().run(drain_timeout=60, on_drain_timeout="force")
    assert result["forced_participants"] == 2
    assert node.calls == ["restart", "force"]
    assert result["new_version"] == "1.13.5"


def test_busy_node_is_deferred_untouched():
    node = FakeNode(participants=1)
    restarter = node.restarter()
    result = restarter.run(quiet_threshold=0, on_busy="defer")
    assert result["deferred"] and not result["changed"] and node.calls == []
    assert restarter.events[0][0] == "restart_deferred"


def test_gate_waits_for_the_quiet_hour_then_drains():
    node = FakeNode(participants=3, leave_at=[20, 40, 50])
    result = node.restarter().run(quiet_threshold=1, quiet_timeout=300)
    assert result["gate_seconds"] == 40 and result["participants_at_drain"] == 1
    assert result["action"] == "restarted"


def test_gate_timeout_fails_before_any_signal():
    node = FakeNode(participants=3)
    with pytest.raises(RestartError, match="nothing was signalled"):
        node.restarter().run(quiet_threshold=0, quiet_timeout=30)
    assert node.calls == []


def test_drain_that_would_outlast_the_unit_stop_timeout_is_refused():
    node = FakeNode(participants=1, stop_budget=600.0)
    with pytest.raises(RestartError, match="TimeoutStopSec=600s") as err:
        node.restarter().run(drain_timeout=3600)
    assert "480" in str(err.value) and node.calls == []


def test_running_drain_is_joined_not_signalled_again():
    node = FakeNode(participants=1, leave_at=[15])
    node.state = "deactivating"  # an operator ran systemctl stop
    result = node.restarter().run(drain_timeout=60)
    assert result["action"] == "joined_drain"
    assert "restart" not in node.calls and "force" not in node.calls
    assert node.calls == ["start"] and result["new_pid"] == 200


def test_wrong_version_after_start_fails():
    node = FakeNode(participants=0, installed="1.13.4")
    with pytest.raises(RestartError, match="not the expected 1.13.5"):
        node.restarter().run(expected_version="1.13.5")


def test_server_that_never_gets_healthy_fails():
    node = FakeNode(participants=0, healthy_after_start=False)
    with pytest.raises(RestartError, match="did not come back healthy"):
        node.restarter().run(start_timeout=20)


def test_stopped_server_is_started():
    node = FakeNode(participants=0, active=False)
    result = node.restarter().run()
    assert result["action"] == "started" and node.calls == ["start"] and node.state == "active"


def test_check_mode_signals_nothing():
    node = FakeNode(participants=2)
    result = node.restarter().run(check_mode=True, quiet_threshold=5)
    assert result["changed"] and result["participants_at_drain"] == 2 and node.calls == []


def test_stop_drains_and_leaves_it_stopped():
    node = FakeNode(participants=1, leave_at=[3])
    result = node.restarter().run(state="stopped")
    assert result["action"] == "drained" and node.state == "inactive" and node.calls == ["stop"]


def test_metrics_are_summed_per_node():
    text = "\n".join([
        "# HELP livekit_participant_total Participants",
        'livekit_participant_total{node_id="ND_a",node_type="MEDIA"} 3',
        'livekit_participant_total{node_id="ND_b",node_type="MEDIA"} 1',
        'livekit_room_total{node_id="ND_a",node_type="MEDIA"} 2',
        'livekit_participant_join_total{state="rtc_success"} 99',
    ])
    assert parse_metrics(text) == {"rooms": 2, "participants": 4}


@pytest.mark.parametrize("text,seconds", [("5h 2min", 18120), ("1min 30s", 90), ("infinity", None),
                                          ("90000000", 90), ("500ms", 0.5)])
def test_timespans(text, seconds):
    assert parse_timespan(text) == seconds


def test_audit_lines_are_json_and_appended(tmp_path):
    log = tmp_path / "deploy" / "audit.jsonl"
    append_audit(str(log), "drain_started", participants=2)
    append_audit(str(log), "restarted", version="1.13.5")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["drain_started", "restarted"]
    assert oct(log.stat().st_mode & 0o777) == "0o640"


def test_list_nodes_table_is_read():
    """list-nodes.txt is the real output of livekit-server 1.13.5 list-nodes on a test host."""
    from pathlib import Path

    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_node import parse_list_nodes

    nodes = parse_list_nodes((Path(__file__).parent / "list-nodes.txt").read_text())
    assert len(nodes) == 1
    assert nodes[0]["id"].startswith("ND_") and nodes[0]["state"] == "SERVING"
    assert nodes[0]["ip"] == "10.89.0.3" and nodes[0]["rooms"] == 0
