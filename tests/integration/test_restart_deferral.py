"""A configuration change never restarts a server that carries a call; it waits for a quiet node.

Both hosts of the scenario (Debian 12 and 13) in each playbook run, as a user converges them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import PARTICIPANT, Node, load_nodes, make_token, run_playbook, run_playbook_watched, twirp


def main_pid(node: Node) -> str:
    return node.sh("systemctl show -p MainPID --value livekit-server").stdout.strip()


def marker_exists(node: Node) -> bool:
    return node.sh("test -e /var/lib/livekit/restart-pending", check=False).returncode == 0


def participants(node: Node, key: str, secret: str) -> int:
    status, body = twirp(node, "ListRooms", {}, make_token(key, secret, roomList=True))
    assert status == 200, body
    return sum(int(room.get("num_participants", 0)) for room in body.get("rooms", []))


@pytest.fixture(scope="module")
def nodes(request) -> list[Node]:
    """Every host of the scenario (Debian 12 and 13): one site.yml run converges them side by side."""
    return load_nodes(request.config.getoption("--hosts-dir"))


@pytest.fixture
def live_calls(nodes: list[Node], api_key: str, api_secret: str):
    """A real participant publishing in a room on each node for up to 120 s."""
    env = dict(os.environ, LIVEKIT_API_KEY=api_key, LIVEKIT_API_SECRET=api_secret)
    procs = {}
    try:
        for node in nodes:
            procs[node.name] = subprocess.Popen(
                [sys.executable, str(PARTICIPANT), "--url", node.ws, "--room", f"call-{uuid.uuid4().hex[:6]}",
                 "--timeout", "150", "stay", "--identity", "caller", "--seconds", "120", "--publish"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            )
            first = json.loads(procs[node.name].stdout.readline())
            assert first.get("event") == "connected", (node.name, first)
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(timeout=10)


def test_change_waits_while_a_call_is_live_then_applies_when_idle(
    nodes: list[Node], api_key: str, api_secret: str, live_calls: dict[str, subprocess.Popen]
) -> None:
    limit = ",".join(node.name for node in nodes)
    pids_before = {node.name: main_pid(node) for node in nodes}
    busy = run_playbook("site.yml", "--limit", limit, "-e", "livekit_server_logging_level=debug", timeout=600)
    assert busy.returncode == 0, busy.stdout[-3000:]
    for node in nodes:
        assert f"livekit-server on {node.name} keeps running its previous configuration" in busy.stdout, node.name
        assert main_pid(node) == pids_before[node.name], node.name
        assert marker_exists(node), node.name

    # The callers hang up: their sessions ended cleanly, never cut by the converge above.
    for name, call in live_calls.items():
        call.terminate()
        summary = json.loads(call.communicate(timeout=30)[0].strip().splitlines()[-1])
        assert summary["summary"] and summary["disconnected"] is False, (name, summary)
    deadline = time.monotonic() + 30
    while any(participants(node, api_key, api_secret) for node in nodes) and time.monotonic() < deadline:
        time.sleep(1)

    # A site.yml run that restarts the nodes, with -vvv --diff and every command line sampled.
    quiet = run_playbook_watched("site.yml", "--limit", limit, "-e", "livekit_server_logging_level=debug",
                                 nodes=nodes, timeout=600)
    assert quiet.returncode == 0, quiet.stdout[-3000:]
    for node in nodes:
        assert main_pid(node) != pids_before[node.name], node.name
        assert not marker_exists(node), node.name
        assert '"level":"debug"' in node.sh("journalctl -u livekit-server -n 200 --no-pager -o cat").stdout, node.name

    # Back to the scenario's settings (idle nodes: they restart at once).
    restore = run_playbook("site.yml", "--limit", limit, timeout=600)
    assert restore.returncode == 0, restore.stdout[-3000:]
    assert not any(marker_exists(node) for node in nodes)
