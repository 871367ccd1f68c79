"""The blue-green tests' TURN client mints LiveKit's TURN credentials itself: its base62 must be
the one livekit-server uses (github.com/jxskiss/base62 v1.1.0). The expected strings were printed
by that Go package's EncodeToString for the same bytes."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "integration"))
from turn_client import base62, livekit_credentials  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.parametrize("data,encoded", [
    (b"APIx|PA_abc123|1767225600", "wAjN1IjM3YzNxw3MyEzYiF2XBBFfwLJoCC"),
    (b"secret|PA_x|1", "xwHeeVQQxHdlJ3YlNH"),
    (b"\xff\xfe\x00\x01", "BAgffP"),
    (b"\x00\x1e\x3e\x7f\x80\xfb\xf8\x1f\x1e\xff\x00", "A8vHfAf7D4f8xDAA"),
    (b"a", "hB"),
])
def test_base62_matches_livekit_servers_encoding(data, encoded):
    assert base62(data) == encoded


def test_credentials_name_the_key_and_change_with_the_secret():
    user, password = livekit_credentials("APIx", "s" * 40, "PA_abc123", 1767225600)
    other_user, other_password = livekit_credentials("APIx", "t" * 40, "PA_abc123", 1767225600)
    assert user == other_user == "wAjN1IjM3YzNxw3MyEzYiF2XBBFfwLJoCC"
    assert password != other_password
