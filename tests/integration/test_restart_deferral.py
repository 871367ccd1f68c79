"""A configuration change never restarts a server that carries a call; it waits for a quiet node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import PARTICIPANT, Node, make_token, run_playbook, run_playbook_watched, twirp


def site(node: Node, *extra: str) -> subprocess.CompletedProcess:
    return run_playbook("site.yml", "--limit", node.name, *extra, timeout=600)


def main_pid(node: Node) -> str:
    return node.sh("systemctl show -p MainPID --value livekit-server").stdout.strip()


def marker_exists(node: Node) -> bool:
    return node.sh("test -e /var/lib/livekit/restart-pending", check=False).returncode == 0


def participants(node: Node, key: str, secret: str) -> int:
    status, body = twirp(node, "ListRooms", {}, make_token(key, secret, roomList=True))
    assert status == 200, body
    return sum(int(room.get("num_participants", 0)) for room in body.get("rooms", []))


@pytest.fixture
def live_call(node: Node, api_key: str, api_secret: str):
    """A real participant publishing in a room on the node for up to 120 s."""
    env = dict(os.environ, LIVEKIT_API_KEY=api_key, LIVEKIT_API_SECRET=api_secret)
    proc = subprocess.Popen(
        [sys.executable, str(PARTICIPANT), "--url", node.ws, "--room", f"call-{uuid.uuid4().hex[:6]}",
         "--timeout", "150", "stay", "--identity", "caller", "--seconds", "120", "--publish"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    first = json.loads(proc.stdout.readline())
    assert first.get("event") == "connected", first
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_change_waits_while_a_call_is_live_then_applies_when_idle(
    node: Node, api_key: str, api_secret: str, live_call: subprocess.Popen
) -> None:
    pid_before = main_pid(node)
    busy = site(node, "-e", "livekit_server_logging_level=debug")
    assert busy.returncode == 0, busy.stdout[-3000:]
    assert f"livekit-server on {node.name} keeps running its previous configuration" in busy.stdout
    assert main_pid(node) == pid_before
    assert marker_exists(node)

    # The caller hangs up: its session ended cleanly, never cut by the converge above.
    live_call.terminate()
    summary = json.loads(live_call.communicate(timeout=30)[0].strip().splitlines()[-1])
    assert summary["summary"] and summary["disconnected"] is False, summary
    deadline = time.monotonic() + 30
    while participants(node, api_key, api_secret) and time.monotonic() < deadline:
        time.sleep(1)

    # A site.yml run that restarts the node, with -vvv --diff and every command line sampled.
    quiet = run_playbook_watched("site.yml", "--limit", node.name, "-e", "livekit_server_logging_level=debug",
                                 nodes=[node], timeout=600)
    assert quiet.returncode == 0, quiet.stdout[-3000:]
    assert main_pid(node) != pid_before
    assert not marker_exists(node)
    assert '"level":"debug"' in node.sh("journalctl -u livekit-server -n 200 --no-pager -o cat").stdout

    # Back to the scenario's settings (idle node: restarts at once).
    restore = site(node)
    assert restore.returncode == 0, restore.stdout[-3000:]
    assert not marker_exists(node)
