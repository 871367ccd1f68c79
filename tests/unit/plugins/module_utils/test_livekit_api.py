from __future__ import annotations

import socket

import jwt
import pytest

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import (
    LiveKitAPIError,
    LiveKitClient,
    LiveKitUnavailable,
    client_from_params,
    make_token,
    parse_key_file,
)


def test_token_verifies_as_hs256_with_livekit_claims():
    token = make_token("APIk", "x" * 40, {"roomList": True}, identity="ops", ttl=60, now=1_000_000)
    claims = jwt.decode(token, "x" * 40, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False})
    assert claims == {"iss": "APIk", "sub": "ops", "nbf": 999_995, "exp": 1_000_060, "video": {"roomList": True}}


def test_token_signed_with_other_secret_fails_verification():
    token = make_token("APIk", "x" * 40, {})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "y" * 40, algorithms=["HS256"])


def test_key_file_parsing_keeps_order_and_ignores_comments():
    keys = parse_key_file("# comment\n\nAPIone: secret-one\nAPItwo: 'secret-two'\n")
    assert list(keys.items()) == [("APIone", "secret-one"), ("APItwo", "secret-two")]


@pytest.mark.parametrize("text, message", [
    ("APIone Hunter2Value\n", "line 1"),
    ("APIone: Hunter2Value\nAPIone: Hunter2Value\n", "repeats key APIone"),
    ("# nothing\n", "holds no key"),
    ("bad name: Hunter2Value\n", "line 1"),
])
def test_bad_key_files_are_rejected_without_revealing_secrets(text, message):
    with pytest.raises(ValueError) as err:
        parse_key_file(text)
    assert message in str(err.value)
    assert "Hunter2Value" not in str(err.value)


def test_client_lists_rooms_from_the_api(fake_server, key_file):
    url, handler = fake_server
    handler.rooms = [{"name": "standup", "num_participants": 3}]
    client = client_from_params({"url": url, "key_file": key_file, "timeout": 5})
    assert client.health() == (True, 200, "OK")
    assert client.list_rooms() == [{"name": "standup", "num_participants": 3}]
    assert client.create_room("new")["name"] == "new"


def test_wrong_secret_is_an_api_error_that_hides_the_secret(fake_server):
    url = fake_server[0]
    client = LiveKitClient(url, "APIunit", "wrong-secret-" * 3)
    with pytest.raises(LiveKitAPIError) as err:
        client.list_rooms()
    assert err.value.status == 401
    assert "wrong-secret" not in str(err.value)


def test_stopped_server_is_unavailable_not_an_api_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LiveKitUnavailable):
        LiveKitClient("http://127.0.0.1:%d" % port, "k", "s", timeout=2).health()


def test_unknown_key_name_is_rejected(key_file):
    with pytest.raises(ValueError, match="APInope is not in"):
        client_from_params({"url": "http://127.0.0.1:1", "key_file": key_file, "key_name": "APInope"})
