"""A converged node behaves like a working LiveKit deployment, seen from outside and inside."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest

from conftest import Node, http, make_token, participant, security_exposure, tcp_reachable, twirp, wait_until


def wait_healthy(node: Node, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http(f"{node.http}/", timeout=2) == (200, "OK"):
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{node.name}: livekit-server not healthy within {timeout}s")


def test_signalling_port_answers_health(node: Node) -> None:
    assert http(f"{node.http}/") == (200, "OK")


def test_server_runs_as_service_user(node: Node) -> None:
    out = node.sh("ps -o user= -C livekit-server").stdout.split()
    assert out == ["livekit"]
    assert node.sh("systemctl is-enabled livekit-server").stdout.strip() == "enabled"


def test_api_creates_and_lists_rooms_with_configured_key(node: Node, api_key: str, api_secret: str) -> None:
    room = f"it-{uuid.uuid4().hex[:8]}"
    token = make_token(api_key, api_secret, roomCreate=True, roomList=True)
    status, created = twirp(node, "CreateRoom", {"name": room}, token)
    assert status == 200, created
    assert created["name"] == room
    status, listed = twirp(node, "ListRooms", {}, token)
    assert status == 200
    assert room in [r["name"] for r in listed.get("rooms", [])]
    assert twirp(node, "DeleteRoom", {"room": room}, token)[0] == 200


def test_api_rejects_token_signed_with_wrong_secret(node: Node, api_key: str) -> None:
    token = make_token(api_key, "x" * 48, roomList=True)
    status, body = twirp(node, "ListRooms", {}, token)
    assert status == 401, body


def test_secrets_are_private_to_the_service_user(node: Node) -> None:
    for path in ("/etc/livekit/keys.yaml", "/etc/livekit/livekit.yaml", "/etc/livekit/tls/turn.key"):
        assert node.sh(f"stat -c '%a %U' {path}").stdout.strip() == "600 livekit", path
    readable = node.sh("find /etc/livekit /etc/redis -type f -perm -o+r ! -name '*.crt'").stdout.split()
    assert readable == []


def test_turn_tls_presents_the_configured_certificate(node: Node) -> None:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{node.ip}:{node.turn_tls_port}", "-servername", node.turn_domain,
         "-CAfile", node.ca_cert, "-verify_hostname", node.turn_domain, "-verify_return_error", "-brief"],
        input="", capture_output=True, text=True, timeout=15, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Verification: OK" in out.stderr
    assert f"CN = {node.turn_domain}" in out.stderr or f"CN={node.turn_domain}" in out.stderr


def test_media_flows_between_real_participants(node: Node, api_key: str, api_secret: str) -> None:
    room = f"media-{uuid.uuid4().hex[:8]}"
    run = participant(node, "--url", node.ws, "--room", room, "call", "--seconds", "8", key=api_key, secret=api_secret)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["video_frames_received"] > 30, result
    assert result["audio_frames_received"] > 100, result


def test_relay_only_client_gets_media_through_embedded_turn(node: Node, api_key: str, api_secret: str) -> None:
    """Seed 001: test with a client forced to relay-only before customers do.

    LiveKit's native client checks TURN/TLS certificates against the root list built into
    libwebrtc, so with the lab CA it relays over TURN/UDP; the TLS port is checked above.
    """
    room = f"relay-{uuid.uuid4().hex[:8]}"
    run = participant(node, "--relay-only", "--url", node.ws, "--room", room, "call", "--seconds", "8",
                      key=api_key, secret=api_secret)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["video_frames_received"] > 30, result
    assert result["audio_frames_received"] > 100, result
    assert result["selected_candidate_types"]["subscriber"] == ["relay"], result


def test_redis_persists_with_rdb_and_aof(node: Node) -> None:
    def redis(*args: str) -> str:
        cmd = "REDISCLI_AUTH=$(sed -n 's/^requirepass //p' /etc/redis/redis.conf) redis-cli -s /run/redis/redis-server.sock --no-raw " + " ".join(args)
        return node.sh(cmd).stdout.strip()

    assert redis("CONFIG GET appendonly").splitlines()[-1].endswith('"yes"')
    assert redis("CONFIG GET appendfsync").splitlines()[-1].endswith('"everysec"')
    assert redis("CONFIG GET maxmemory-policy").splitlines()[-1].endswith('"noeviction"')
    assert redis("CONFIG GET save").splitlines()[-1].endswith('"900 1 300 10 60 10000"')

    value = uuid.uuid4().hex
    assert redis("SET", "it:persist", value) == "OK"
    node.sh("systemctl restart redis-server")
    assert redis("GET", "it:persist") == f'"{value}"'
    wait_healthy(node)


def test_firewall_keeps_redis_and_metrics_private(node: Node) -> None:
    assert "livekit_filter" in node.sh("nft list tables").stdout
    # The metrics listener is up inside the host ...
    metrics = node.sh(f"curl -fsS http://127.0.0.1:{node.prometheus_port}/metrics").stdout
    assert "livekit_room_total" in metrics
    # ... but neither it nor Redis can be reached from the network; signalling can.
    assert not tcp_reachable(node.ip, node.prometheus_port)
    assert not tcp_reachable(node.ip, 6379)
    assert tcp_reachable(node.ip, node.port)
    assert tcp_reachable(node.ip, node.rtc_tcp_port)


@pytest.mark.parametrize("unit", ["livekit-server.service", "redis-server.service", "nftables.service"])
def test_units_are_hardened(node: Node, unit: str) -> None:
    """Every unit the collection installs or configures on a node rates 2.0 or better."""
    score, report = security_exposure(node, unit)
    assert score <= 2.0, report


def test_firewall_service_still_loads_and_stops_inside_its_sandbox(node: Node) -> None:
    """nftables.service runs nft with only CAP_NET_ADMIN and netlink: a reload and a restart still
    load the collection's table (test_firewall.py checks that other tables survive)."""
    for action in ("reload", "restart"):
        node.sh(f"systemctl {action} nftables.service")
        assert node.sh("systemctl is-active nftables.service").stdout.strip() == "active"
        assert "livekit_filter" in node.sh("nft list tables").stdout, action


def test_journal_is_bounded(node: Node) -> None:
    """journald runs with the collection's limits: it says so itself when it opens the journal."""
    node.sh("systemctl restart systemd-journald")
    config = node.sh("systemd-analyze cat-config systemd/journald.conf").stdout
    assert "SystemMaxUse=1G" in config and "MaxRetentionSec=3month" in config, config
    # journald reports the limit it applies to the persistent journal (Debian keeps /var/log/journal).
    report = wait_until(lambda: [line for line in node.sh(
        "journalctl -b -u systemd-journald --no-pager -o cat").stdout.splitlines()
        if line.startswith("System Journal")], timeout=20)
    assert report, "journald did not report its persistent journal"
    # systemd 252 prints "max 1.0G", 257 "max 1G"; the default would be 10% of the file system (<= 4G).
    assert re.search(r"max 1(\.0)?G,", report[-1]), report[-1]


def test_systemd_brings_back_a_killed_server(node: Node) -> None:
    before = node.sh("systemctl show -p MainPID --value livekit-server").stdout.strip()
    node.sh("kill -9 $(systemctl show -p MainPID --value livekit-server)")
    time.sleep(1)
    wait_healthy(node, timeout=30)
    after = node.sh("systemctl show -p MainPID --value livekit-server").stdout.strip()
    assert after not in ("0", before)
