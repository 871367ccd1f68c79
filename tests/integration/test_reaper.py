"""The idle-room reaper against a real server and real clients, and the node textfile that
node-exporter serves (livekit_restart_pending_since_timestamp_seconds, livekit_node_state).

In the default scenario the reaper's timer runs on lkt-bookworm only (the first host of the livekit
group) as a dry run with a 60 s threshold and rooms named keep-* allow-listed
(molecule/default/host_vars/lkt-bookworm.yml). It runs before test_key_rotation.py, which retires
the run's API key on lkt-bookworm."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from conftest import Node, Participant, load_nodes, make_token, run_playbook, security_exposure, twirp, wait_until

THRESHOLD = 60


@pytest.fixture(scope="module")
def hosts(request) -> dict[str, Node]:
    return {n.name: n for n in load_nodes(request.config.getoption("--hosts-dir"))}


@pytest.fixture(scope="module")
def reaper_node(hosts) -> Node:
    return hosts["lkt-bookworm"]


def rooms(node: Node, key: str, secret: str) -> dict[str, int]:
    status, body = twirp(node, "ListRooms", {}, make_token(key, secret, roomList=True))
    assert status == 200, body
    return {room["name"]: int(room.get("num_participants", 0)) for room in body.get("rooms", [])}


def audit_lines(node: Node, room: str) -> list[dict]:
    text = node.sh("cat /var/lib/livekit-deploy/audit.jsonl", check=False).stdout
    return [line for line in map(json.loads, text.splitlines()) if line.get("room") == room]


def reap_now(node: Node) -> None:
    """One run of the timer's service, as `systemctl start` does it."""
    node.sh("systemctl start livekit-room-reaper.service")
    assert node.sh("systemctl show -p Result --value livekit-room-reaper.service").stdout.strip() == "success"


def node_exporter_series(node: Node) -> dict[str, float]:
    """The livekit_node.prom series as node-exporter serves them on the host (it listens on loopback)."""
    text = node.sh("curl -fsS http://127.0.0.1:9100/metrics").stdout
    found = {}
    for line in text.splitlines():
        match = re.match(r'^(livekit_restart_pending_since_timestamp_seconds|livekit_node_state\{state="\w+"\})\s+(\S+)$',
                         line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def refresh_textfile(node: Node) -> None:
    node.sh("systemctl start livekit-node-metrics.service")


def test_the_reaper_timer_runs_on_one_node_as_a_dry_run(hosts) -> None:
    assert hosts["lkt-bookworm"].sh("systemctl is-active livekit-room-reaper.timer").stdout.strip() == "active"
    assert hosts["lkt-trixie"].sh("systemctl is-enabled livekit-room-reaper.timer", check=False).stdout.strip() == "disabled"
    config = json.loads(hosts["lkt-bookworm"].sh("cat /etc/livekit-reaper/config.json").stdout)
    assert config["dry_run"] is True and config["threshold"] == THRESHOLD and config["allow_list"] == ["^keep-"]
    # No secret in the settings: the service reads livekit-server's key file itself.
    assert "secret" not in json.dumps(config).lower()
    mode = hosts["lkt-bookworm"].sh("stat -c '%a %U' /etc/livekit-reaper/config.json").stdout.strip()
    assert mode == "640 root"


@pytest.mark.parametrize("unit", ["livekit-room-reaper.service", "livekit-node-metrics.service"])
def test_the_timers_services_are_sandboxed(reaper_node: Node, unit: str) -> None:
    score, detail = security_exposure(reaper_node, unit)
    assert score <= 2.0, detail


def test_reaper_closes_only_the_idle_room_and_its_dry_run_changes_nothing(
    reaper_node: Node, api_key: str, api_secret: str, people
) -> None:
    node, tag = reaper_node, uuid.uuid4().hex[:6]
    idle, busy, kept = f"idle-{tag}", f"busy-{tag}", f"keep-{tag}"
    people.append(Participant(node, idle, "recorder", api_key, api_secret))
    people.append(Participant(node, busy, "speaker", api_key, api_secret, publish=True))
    people.append(Participant(node, busy, "listener", api_key, api_secret))
    people.append(Participant(node, kept, "agent", api_key, api_secret))
    joined = time.monotonic()
    lonely, speaker, listener, agent = people

    # Before the threshold nothing is even a candidate, for the timer and for the playbook as a user
    # first runs it (no -e: the role's dry-run default, which the play itself does not see).
    reap_now(node)
    assert audit_lines(node, idle) == []
    first = run_playbook("reap_idle_rooms.yml", "--limit", node.name)
    assert first.returncode == 0, first.stdout[-3000:]
    assert "Would close: []" in first.stdout, first.stdout[-3000:]

    time.sleep(max(0.0, THRESHOLD + 5 - (time.monotonic() - joined)))

    # The timer's dry run: one audit line for the idle room, nothing closed, nobody disconnected.
    reap_now(node)
    reap_now(node)  # a second pass does not repeat the audit line
    lines = audit_lines(node, idle)
    assert [(line["event"], line["dry_run"], line["identities"]) for line in lines] == \
        [("room_reap_dry_run", True, ["recorder"])], lines
    assert lines[0]["idle_seconds"] >= THRESHOLD and lines[0]["source"] == "timer"
    journal = node.sh("journalctl -u livekit-room-reaper.service --no-pager -o cat").stdout
    assert f'"room": "{idle}"' in journal and "would be closed (dry run)" in journal
    assert audit_lines(node, busy) == [] and audit_lines(node, kept) == []
    listed = rooms(node, api_key, api_secret)
    assert listed.get(idle) == 1 and listed.get(busy) == 2 and listed.get(kept) == 1
    assert all(p.connected() for p in people)

    # The playbook is a dry run too unless told otherwise.
    dry = run_playbook("reap_idle_rooms.yml", "--limit", node.name)
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert f"Would close: ['{idle}']" in dry.stdout, dry.stdout[-3000:]
    assert rooms(node, api_key, api_secret).get(idle) == 1 and lonely.connected()

    # Told to act, it closes the idle room and leaves the publisher's room and the allow-listed one.
    real = run_playbook("reap_idle_rooms.yml", "--limit", node.name, "-e", '{"livekit_server_reaper_dry_run": false}')
    assert real.returncode == 0, real.stdout[-3000:]
    assert f"Closed: ['{idle}']" in real.stdout, real.stdout[-3000:]
    assert wait_until(lambda: idle not in rooms(node, api_key, api_secret), 15), rooms(node, api_key, api_secret)
    assert wait_until(lambda: not lonely.connected(), 20), "the recorder stayed connected to a closed room"
    events = [e.get("event") for e in lonely.hang_up()["events"]]
    assert "disconnected" in events, events
    listed = rooms(node, api_key, api_secret)
    assert listed.get(busy) == 2 and listed.get(kept) == 1, listed
    assert speaker.connected() and listener.connected() and agent.connected()
    closed = [line for line in audit_lines(node, idle) if line["event"] == "room_reaped"]
    assert len(closed) == 1 and closed[0]["identities"] == ["recorder"] and closed[0]["dry_run"] is False, closed
    # Leave cleanly: a killed client would hold the node for its ping timeout (test_key_rotation drains it next).
    for person in (speaker, listener, agent):
        person.hang_up()


@pytest.mark.parametrize("extra, variable", [
    ('{"livekit_server_reaper_threshold": 5}', "livekit_server_reaper_threshold (5) must be whole seconds from 60"),
    ('{"livekit_server_reaper_allow_list": ["^keep-", "rec-("]}',
     "livekit_server_reaper_allow_list: allow-list entry 1 ('rec-(') is not a regular expression"),
])
def test_bad_reaper_settings_are_refused_before_anything_changes(reaper_node: Node, extra: str, variable: str) -> None:
    node = reaper_node
    before = node.sh("sha256sum /etc/livekit-reaper/config.json /etc/systemd/system/livekit-room-reaper.*").stdout
    for playbook in ("reap_idle_rooms.yml", "site.yml"):
        result = run_playbook(playbook, "--limit", node.name, "-e", extra, timeout=600)
        said = result.stdout + result.stderr  # a failed task's message goes to stderr
        assert result.returncode != 0, said[-2000:]
        assert variable in said, (playbook, said[-3000:])
        assert not re.search(r"\bchanged=[1-9]", result.stdout), (playbook, result.stdout[-3000:])
    assert node.sh("sha256sum /etc/livekit-reaper/config.json /etc/systemd/system/livekit-room-reaper.*").stdout == before


def test_node_exporter_serves_the_node_state_and_the_pending_restart(hosts) -> None:
    for node in hosts.values():
        had_marker = node.sh("test -e /var/lib/livekit/restart-pending", check=False).returncode == 0
        saved = node.sh("stat -c %Y /var/lib/livekit/restart-pending", check=False).stdout.strip()
        try:
            node.sh("rm -f /var/lib/livekit/restart-pending")
            refresh_textfile(node)
            series = node_exporter_series(node)
            assert series == {
                "livekit_restart_pending_since_timestamp_seconds": 0.0,
                'livekit_node_state{state="SERVING"}': 1.0,
                'livekit_node_state{state="SHUTTING_DOWN"}': 0.0,
            }, (node.name, series)

            since = int(time.time()) - 3 * 86400
            node.sh(f"echo test > /var/lib/livekit/restart-pending && touch -d @{since} /var/lib/livekit/restart-pending")
            refresh_textfile(node)
            assert node_exporter_series(node)["livekit_restart_pending_since_timestamp_seconds"] == since, node.name
            # The file is world-readable (node-exporter runs as prometheus) and written whole.
            assert node.sh("stat -c '%a %U' /var/lib/prometheus/node-exporter/livekit_node.prom").stdout.strip() == "644 root"
        finally:
            node.sh("rm -f /var/lib/livekit/restart-pending")
            if had_marker:
                node.sh(f"echo restored > /var/lib/livekit/restart-pending && touch -d @{saved} /var/lib/livekit/restart-pending")
            refresh_textfile(node)
        # The timer keeps it fresh without anyone starting the service.
        assert node.sh("systemctl is-active livekit-node-metrics.timer").stdout.strip() == "active"
