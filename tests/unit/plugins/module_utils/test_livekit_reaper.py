"""The idle-room reaper's rule against a simulated server: which rooms it closes, which it leaves, what
it writes to the audit log and its state. The real server is exercised by the default scenario."""

from __future__ import annotations

import json
import pathlib

import pytest

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import LiveKitAPIError
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_metrics import node_textfile, own_state, read_node_state
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_reaper import (
    Reaper,
    ReaperError,
    compile_patterns,
)

NOW = 1_800_000_000


class FakeServer:
    """Rooms and their participants as ListRooms / ListParticipants return them (int64 as strings)."""

    def __init__(self):
        self.rooms = {}
        self.deleted = []
        self.on_second_look = None
        self.looks = {}

    def add(self, name, created, participants=()):
        self.rooms[name] = dict(room=dict(name=name, sid="RM_" + name, creation_time=str(created)),
                                participants=list(participants))

    def list_rooms(self):
        return [r["room"] for r in self.rooms.values()]

    def list_participants(self, name):
        if name not in self.rooms:
            raise LiveKitAPIError(404, "not_found", "room not found")
        self.looks[name] = self.looks.get(name, 0) + 1
        if self.looks[name] == 2 and self.on_second_look:
            self.on_second_look(self.rooms[name])
        return self.rooms[name]["participants"]

    def delete_room(self, name):
        self.deleted.append(name)
        del self.rooms[name]
        return {}


def idle(identity, joined):
    return dict(identity=identity, joined_at=str(joined), state="ACTIVE")


def publisher(identity, joined):
    return dict(identity=identity, joined_at=str(joined), tracks=[dict(sid="TR_a", type="AUDIO", muted=True)])


@pytest.fixture
def server():
    srv = FakeServer()
    srv.add("recorder-left", NOW - 7200, [idle("egress-bot", NOW - 7000)])
    srv.add("meeting", NOW - 7200, [publisher("alice", NOW - 7000), idle("bob", NOW - 7000)])
    srv.add("keep-lobby", NOW - 7200, [idle("agent", NOW - 7000)])
    srv.add("fresh", NOW - 7200, [idle("late", NOW - 60)])
    srv.add("empty", NOW - 7200)
    return srv


def reaper(srv, tmp_path, dry_run, clock=NOW):
    return Reaper(srv, threshold=3600, allow=[r"^keep-"], dry_run=dry_run, state_file=str(tmp_path / "state.json"),
                  audit_log=str(tmp_path / "audit.jsonl"), source="timer", clock=lambda: clock)


def audit(tmp_path):
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_closes_only_the_room_where_nobody_published_past_the_threshold(server, tmp_path):
    result = reaper(server, tmp_path, dry_run=False).run()
    assert server.deleted == ["recorder-left"]
    assert [c["room"] for c in result["closed"]] == ["recorder-left"]
    assert result["closed"][0]["identities"] == ["egress-bot"] and result["closed"][0]["idle_seconds"] == 7000
    kept = {k["room"]: k["reason"] for k in result["kept"]}
    assert kept == {"meeting": "publishing", "keep-lobby": "allow_listed", "fresh": "idle_below_threshold",
                    "empty": "empty"}
    lines = audit(tmp_path)
    assert [(line["event"], line["room"], line["dry_run"]) for line in lines] == [("room_reaped", "recorder-left", False)]


def test_dry_run_changes_nothing_and_audits_each_room_once(server, tmp_path):
    first = reaper(server, tmp_path, dry_run=True).run()
    second = reaper(server, tmp_path, dry_run=True, clock=NOW + 300).run()
    assert server.deleted == [] and len(server.rooms) == 5
    assert [c["room"] for c in first["would_close"]] == [c["room"] for c in second["would_close"]] == ["recorder-left"]
    assert first["closed"] == [] and first["changed"]
    assert [(line["event"], line["room"]) for line in audit(tmp_path)] == [("room_reap_dry_run", "recorder-left")]


def test_a_track_seen_earlier_restarts_the_idle_clock(server, tmp_path):
    reaper(server, tmp_path, dry_run=False, clock=NOW - 1800).run()  # alice publishes at NOW - 1800
    server.rooms["meeting"]["participants"][0]["tracks"] = []      # then unpublishes
    result = reaper(server, tmp_path, dry_run=False).run()
    assert "meeting" not in server.deleted
    assert {k["room"]: k.get("idle_seconds") for k in result["kept"]}["meeting"] == 1800
    later = reaper(server, tmp_path, dry_run=False, clock=NOW + 1800).run()
    assert "meeting" in [c["room"] for c in later["closed"]]


def test_a_room_someone_publishes_in_between_is_kept(server, tmp_path):
    server.on_second_look = lambda room: room["participants"].append(publisher("returning", NOW))
    result = reaper(server, tmp_path, dry_run=False).run()
    assert server.deleted == [] and audit(tmp_path) == []
    assert {k["room"]: k["reason"] for k in result["kept"]}["recorder-left"] == "publishing"


def test_state_only_keeps_rooms_that_still_exist(server, tmp_path):
    reaper(server, tmp_path, dry_run=False).run()
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state["rooms"]) == {"RM_meeting"}
    del server.rooms["meeting"]
    reaper(server, tmp_path, dry_run=False, clock=NOW + 60).run()
    assert json.loads((tmp_path / "state.json").read_text())["rooms"] == {}


def test_a_server_that_does_not_answer_is_an_error(tmp_path):
    class Down:
        def list_rooms(self):
            raise OSError("connection refused")
    with pytest.raises(ReaperError, match="could not list the rooms: connection refused"):
        Reaper(Down(), threshold=600).run()


@pytest.mark.parametrize("threshold", [0, 59, 7 * 86400 + 1, "600", True])
def test_thresholds_out_of_range_are_refused(threshold):
    with pytest.raises(ValueError, match="the threshold must be 60 to 604800 seconds"):
        Reaper(FakeServer(), threshold=threshold)


@pytest.mark.parametrize("patterns, message", [
    (["ok", "rec-("], "entry 1 ('rec-(') is not a regular expression"),
    ("^keep-", "must be a list"),
    ([""], "entry 0 ('') is not a non-empty string"),
])
def test_bad_allow_lists_are_refused(patterns, message):
    with pytest.raises(ValueError) as err:
        compile_patterns(patterns)
    assert message in str(err.value)


def test_node_textfile_has_both_states_always():
    text = node_textfile(1_700_000_000, "SERVING")
    assert "livekit_restart_pending_since_timestamp_seconds 1700000000\n" in text
    assert 'livekit_node_state{state="SERVING"} 1\n' in text and 'livekit_node_state{state="SHUTTING_DOWN"} 0\n' in text
    none = node_textfile(0, None)
    assert 'livekit_node_state{state="SERVING"} 0\n' in none and 'livekit_node_state{state="SHUTTING_DOWN"} 0\n' in none
    assert "livekit_restart_pending_since_timestamp_seconds 0\n" in none


def test_own_state_is_the_latest_record_with_this_nodes_address():
    nodes = [dict(ip="10.0.0.1", state="SERVING", updated="2026-11-23 09:10:49"),
             dict(ip="10.0.0.2", state="SERVING", updated="2026-11-23 08:00:00"),  # left by a killed process
             dict(ip="10.0.0.2", state="SHUTTING_DOWN", updated="2026-11-23 09:10:49")]
    assert own_state(nodes, "10.0.0.2") == "SHUTTING_DOWN"
    assert own_state(nodes, "10.0.0.3") is None


def test_a_blue_green_host_serves_while_its_old_instance_drains():
    nodes = [dict(ip="10.0.0.2", state="SERVING", updated="2026-11-23 09:10:48"),
             dict(ip="10.0.0.2", state="SHUTTING_DOWN", updated="2026-11-23 09:10:49")]
    assert own_state(nodes, "10.0.0.2") == "SERVING"


def test_a_list_nodes_that_prints_no_table_is_an_error(tmp_path):
    """livekit-server exits 0 when it cannot load its configuration (seen in a sandbox without
    AF_NETLINK: 'could not validate RTC config'); that must not read as 'no record'."""
    fake = tmp_path / "livekit-server"
    fake.write_text("#!/bin/sh\necho 'could not validate RTC config: route ip+net: netlinkrib: address family not supported'\n")
    fake.chmod(0o755)
    state, error = read_node_state([str(fake)], "10.0.0.2")
    assert state is None and "printed no node table" in error and "could not validate RTC config" in error
    table = (pathlib.Path(__file__).parent / "list-nodes.txt").read_text()
    (tmp_path / "table.txt").write_text(table)
    fake.write_text("#!/bin/sh\ncat %s\n" % (tmp_path / "table.txt"))
    assert read_node_state([str(fake)], "10.89.0.3") == ("SERVING", None)


def test_a_room_gone_meanwhile_is_no_error_and_a_failing_server_is_reported(server, tmp_path):
    """Between the two looks someone else closed the room (not_found: nothing to report); a server
    that fails the delete is reported with the room, and the room is not counted as closed."""
    def gone(name):
        raise LiveKitAPIError(404, "not_found", "room not found")

    server.delete_room = gone
    result = reaper(server, tmp_path, dry_run=False).run()
    assert result["closed"] == [] and result["errors"] == []

    def refuse(name):
        raise LiveKitAPIError(503, "unavailable", "try later")

    server.delete_room = refuse
    result = reaper(server, tmp_path, dry_run=False).run()
    assert result["closed"] == []
    assert [(e["room"], "try later" in e["error"]) for e in result["errors"]] == [("recorder-left", True)]
