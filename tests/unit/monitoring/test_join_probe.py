"""The join probe's own parts that need no server (roles/livekit_join_probe/files/livekit_join_probe.py):
its tokens grant one room only, its textfile is valid for promtool and carries the series and labels
docs/monitoring.md specifies and the rules read, and the steps before a join fail with the label of
the step. Against a real node: tests/integration/test_monitoring.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import pathlib
import re
import socket
import subprocess
import sys

import pytest

from test_rules import TEMPLATE, promtool

REPO = pathlib.Path(__file__).resolve().parents[3]
PROBE_FILE = REPO / "roles" / "livekit_join_probe" / "files" / "livekit_join_probe.py"
# On the host the role installs livekit_api.py and livekit_files.py next to the probe.
sys.path.insert(0, str(REPO / "plugins" / "module_utils"))
SPEC = importlib.util.spec_from_file_location("livekit_join_probe", PROBE_FILE)
probe = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(probe)


def claims_of(token: str, secret: str) -> dict:
    header, body, signature = token.split(".")
    expected = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_tokens_grant_joining_one_room_briefly() -> None:
    secret = "s" * 40
    publisher = claims_of(probe.make_token("APIprobe", secret, "probe-publisher", "livekit-probe-direct-abc", 120, True), secret)
    receiver = claims_of(probe.make_token("APIprobe", secret, "probe-receiver", "livekit-probe-direct-abc", 120, False), secret)
    for claims in (publisher, receiver):
        assert claims["iss"] == "APIprobe"
        assert claims["exp"] - claims["nbf"] <= 130
        assert set(claims["video"]) == {"roomJoin", "room", "canPublish", "canSubscribe", "canPublishData"}
        assert claims["video"]["room"] == "livekit-probe-direct-abc" and claims["video"]["roomJoin"] is True
        assert claims["video"]["canPublishData"] is False
    assert publisher["video"]["canPublish"] and not publisher["video"]["canSubscribe"]
    assert receiver["video"]["canSubscribe"] and not receiver["video"]["canPublish"]


def test_textfile_is_valid_and_has_the_series_the_rules_read(tmp_path: pathlib.Path) -> None:
    results = [
        {"target": "lk1", "path": "direct", "failure": "none", "join_seconds": 0.21, "first_frame_seconds": 0.4},
        {"target": "lk1", "path": "relay_tls", "failure": "timeout", "detail": "no TCP answer"},
    ]
    path = tmp_path / "livekit_join_probe.prom"
    probe.write_atomically(str(path), probe.render(results, {"lk1": 1790000000.5}))
    text = path.read_text()
    checked = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'livekit_probe_success{target="lk1",path="direct",failure="none"} 1' in text
    assert 'livekit_probe_success{target="lk1",path="relay_tls",failure="timeout"} 0' in text
    assert 'livekit_probe_join_seconds{target="lk1",path="direct"} 0.21' in text
    assert "relay_tls" not in "".join(line for line in text.splitlines() if line.startswith("livekit_probe_join_seconds"))
    assert 'livekit_probe_last_run_timestamp_seconds{target="lk1"} 1790000000.500' in text
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if p.name != path.name], "a temporary file was left behind"
    written = set(re.findall(r"^(livekit_probe_[a-z_]+)\{", text, re.M))
    read = set(re.findall(r"\b(livekit_probe_[a-z_]+)\b", TEMPLATE.read_text()))
    assert read <= written, read - written
    assert set(probe.FAILURES) == {"none", "dns", "tls", "auth", "timeout", "no_media", "error"}


def test_steps_before_a_join_fail_with_their_label() -> None:
    with pytest.raises(probe.ProbeFailure) as failure:
        probe.check_signalling("ws://no-such-host.invalid:7880", "t", None, 3)
    assert failure.value.label == "dns"
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(probe.ProbeFailure) as failure:
        probe.check_signalling(f"ws://127.0.0.1:{port}", "t", None, 3)
    assert failure.value.label == "error" and "refused" in failure.value.detail.lower()
    # A listener that accepts TCP but never speaks TLS: the handshake times out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(probe.ProbeFailure) as failure:
            probe.check_turn_tls("localhost", silent.getsockname()[1], None, 1)
    assert failure.value.label == "timeout"
