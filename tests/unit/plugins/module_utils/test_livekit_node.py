"""The drain-aware restart's decisions, driven by a simulated node and clock. The real server,
systemd and signals are exercised by the molecule scenarios; here each rule is shown to matter."""

from __future__ import annotations

import json
import socket

import pytest

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_node import (
    DrainRestart,
    RestartError,
    parse_metrics,
    parse_timespan,
    read_load,
)
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import append_audit


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


def test_each_event_is_handed_on_when_it_happens_not_when_the_drain_ends():
    """A caller killed mid-drain (an SSH drop) must already have the drain on record."""
    node = FakeNode(participants=1, leave_at=[300])
    seen = []
    restarter = node.restarter()
    restarter.on_event = lambda name, fields: seen.append((name, node.now, fields["ts"]))
    restarter.run(drain_timeout=600)
    assert [name for name, _now, _ts in seen] == ["drain_started", "restarted"]
    assert seen[0][1] == 0 and seen[0][2] == 0  # delivered at the drain's start, 300 s before its end
    assert seen[1][1] >= 300


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


def test_audit_log_is_capped_with_one_rotated_file(tmp_path):
    """Years of drains and rotations never grow the audit log past its cap: audit.jsonl stays at or
    under 1 MiB, one older file (audit.jsonl.1) keeps the events before it, and the newest event is
    always in audit.jsonl, whole."""
    log = tmp_path / "audit.jsonl"
    padding = "x" * 200
    for number in range(12000):  # about 3 MiB of events
        append_audit(str(log), "drain_started", number=number, note=padding)
    rotated = tmp_path / "audit.jsonl.1"
    assert log.stat().st_size <= 1024 * 1024
    assert rotated.stat().st_size <= 1024 * 1024
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.1"]
    current = [json.loads(line) for line in log.read_text().splitlines()]
    older = [json.loads(line) for line in rotated.read_text().splitlines()]
    assert current[-1]["number"] == 11999
    # No event is split or lost across the rotation: the two files hold one unbroken run.
    numbers = [event["number"] for event in older + current]
    assert numbers == list(range(numbers[0], 12000))
    # The cap keeps at least 1 MiB of history, not just the newest lines.
    assert len(log.read_text()) + len(rotated.read_text()) > 1024 * 1024
    assert oct(log.stat().st_mode & 0o777) == "0o640"


def test_audit_events_of_a_running_drain_are_on_disk_at_once_across_a_rotation(tmp_path):
    """The restart writes each event as it happens (on_event); a rotation in the middle of a drain
    keeps the events written so far readable, in order, and the next one lands in the new file."""
    log = tmp_path / "audit.jsonl"
    for number in range(3):
        append_audit(str(log), "drain_started", max_bytes=300, number=number, note="y" * 80)
        lines = log.read_text().splitlines()
        assert json.loads(lines[-1])["number"] == number  # readable before the next event exists
    assert (tmp_path / "audit.jsonl.1").exists()
    assert len(log.read_text()) <= 300


def test_list_nodes_table_is_read():
    """list-nodes.txt is the real output of livekit-server 1.13.5 list-nodes on a test host."""
    from pathlib import Path

    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_metrics import parse_list_nodes

    nodes = parse_list_nodes((Path(__file__).parent / "list-nodes.txt").read_text())
    assert len(nodes) == 1
    assert nodes[0]["id"].startswith("ND_") and nodes[0]["state"] == "SERVING"
    assert nodes[0]["ip"] == "10.89.0.3" and nodes[0]["rooms"] == 0


# Unknown load counts as busy (issue 13, item 3). These drive the gate with the module's own
# read_load against a real HTTP server on loopback that answers the way a broken or overloaded
# metrics endpoint does; only systemd and the clock are simulated.

LIVEKIT_METRICS = (
    'livekit_room_total{node_id="ND_a",node_type="MEDIA"} %d\n'
    'livekit_participant_total{node_id="ND_a",node_type="MEDIA"} %d\n'
)

UNREADABLE = {
    "http-500": [("status", 500, "internal error")],
    "http-404": [("status", 404, "404 page not found")],
    "connection-closed": ["close"],
    "truncated-body": ["truncate"],
    "timeout": [("hang", 3)],
    "not-livekit-metrics": [("status", 200, "# TYPE go_goroutines gauge\ngo_goroutines 12\n")],
}


def gated_restarter(node, metrics_url):
    return DrainRestart(
        node, load=lambda: read_load(metrics_url, timeout=0.5),
        health=lambda: node.state == "active", version=node.versions.get,
        alive=lambda pid: pid in node.versions, clock=node.clock, sleep=node.sleep, wall=node.clock, poll=1.0)


@pytest.mark.parametrize("script", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_unreadable_metrics_defer_a_gated_restart(misbehaving_server, script):
    url, _handler = misbehaving_server(script)
    node = FakeNode(participants=2)
    restarter = gated_restarter(node, url + "/metrics")
    result = restarter.run(quiet_threshold=0, on_busy="defer", drain_timeout=5)
    assert node.calls == [], "a node whose load could not be read was signalled"
    assert result["deferred"] and result["action"] == "deferred" and not result["changed"]
    assert url in result["load_error"]
    assert restarter.events[0][0] == "restart_deferred"
    assert restarter.events[0][1]["load_error"] == result["load_error"]


def test_unreadable_metrics_fail_a_gated_restart_with_the_reason(misbehaving_server):
    url, _handler = misbehaving_server([("status", 500, "internal error")])
    node = FakeNode(participants=2)
    with pytest.raises(RestartError) as err:
        gated_restarter(node, url + "/metrics").run(quiet_threshold=0, quiet_timeout=5, on_busy="fail", drain_timeout=5)
    assert node.calls == []
    message = str(err.value)
    assert "could not be read" in message and "500" in message and "nothing was signalled" in message
    assert err.value.result["gate_seconds"] == 5


def test_nothing_listening_on_the_metrics_port_is_not_an_idle_node():
    node = FakeNode(participants=2)
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RestartError, match="could not be read"):
        gated_restarter(node, "http://127.0.0.1:%d/metrics" % port).run(quiet_threshold=0, drain_timeout=5)
    assert node.calls == []


def test_check_mode_with_unreadable_metrics_predicts_no_restart(misbehaving_server):
    url, _handler = misbehaving_server(["close"])
    node = FakeNode(participants=0)
    result = gated_restarter(node, url + "/metrics").run(quiet_threshold=0, on_busy="defer", check_mode=True)
    assert result["deferred"] and not result["changed"] and node.calls == []


def test_gate_waits_for_the_metrics_to_answer_again(misbehaving_server):
    url, handler = misbehaving_server([("status", 503, "busy"), ("status", 503, "busy"),
                                       ("status", 200, LIVEKIT_METRICS % (0, 0))])
    node = FakeNode(participants=0)
    result = gated_restarter(node, url + "/metrics").run(quiet_threshold=0, quiet_timeout=60)
    assert result["action"] == "restarted" and node.calls == ["restart"]
    assert result["gate_seconds"] == 2 and result["participants_at_drain"] == 0
    assert "load_error" not in result


def test_readable_metrics_still_drive_the_gate(misbehaving_server):
    url, _handler = misbehaving_server([("status", 200, LIVEKIT_METRICS % (1, 3))])
    node = FakeNode(participants=3)
    result = gated_restarter(node, url + "/metrics").run(quiet_threshold=0, on_busy="defer", drain_timeout=5)
    assert result["deferred"] and (result["rooms_at_drain"], result["participants_at_drain"]) == (1, 3)
    assert node.calls == []


def test_ungated_drain_does_not_report_an_unknown_load_as_zero(misbehaving_server):
    url, _handler = misbehaving_server([("status", 500, "internal error")])
    node = FakeNode(participants=0)
    result = gated_restarter(node, url + "/metrics").run()
    assert result["action"] == "restarted"  # no gate was asked for: the drain itself waits for calls
    assert result["participants_at_drain"] is None and result["rooms_at_drain"] is None
    assert "500" in result["load_error"]


def test_metrics_without_livekit_gauges_are_not_read_as_zero():
    with pytest.raises(ValueError, match="livekit_participant_total"):
        parse_metrics("# TYPE go_goroutines gauge\ngo_goroutines 12\n")


def test_a_single_busy_nodes_long_drain_is_refused_before_any_signal():
    node = FakeNode(participants=2, leave_at=[10, 30])
    with pytest.raises(RestartError, match="refuses every new room until its 2 participant.*up to 600s.*max_refusal=300s"):
        node.restarter().run(drain_timeout=600, max_refusal=300)
    assert node.calls == []
    # Allowed, it drains with a warning; within the bound, or on an idle node, nothing is said.
    result = node.restarter().run(drain_timeout=600, max_refusal=300, allow_long_refusal=True, expected_version="1.13.5")
    assert "up to 600s" in result["refusal_warning"] and result["action"] == "restarted"
    idle = FakeNode(participants=0)
    assert "refusal_warning" not in idle.restarter().run(drain_timeout=600, max_refusal=300)


def test_the_refusal_bound_holds_in_check_mode_too():
    node = FakeNode(participants=1)
    with pytest.raises(RestartError, match="livekit_server_restart_allow_long_refusal"):
        node.restarter().run(drain_timeout=18000, max_refusal=600, check_mode=True)
    assert node.calls == []
