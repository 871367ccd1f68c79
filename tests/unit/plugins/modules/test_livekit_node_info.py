from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.livekit.plugins.modules import livekit_node_info


def run_module(args):
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        livekit_node_info.main()
    return exit_info.value.code


@pytest.fixture
def result(capsys):
    def read():
        return json.loads(capsys.readouterr().out)
    return read


def test_busy_node_is_not_idle(fake_server, key_file, result):
    url, handler = fake_server
    handler.rooms = [{"name": "a", "num_participants": 2, "num_publishers": 1}, {"name": "b", "num_participants": 1}]
    assert run_module({"url": url, "key_file": key_file}) == 0
    out = result()
    assert out["running"] and out["healthy"]
    assert (out["rooms"], out["participants"], out["idle"], out["changed"]) == (2, 3, False, False)
    assert out["room_list"][0] == {"name": "a", "num_participants": 2, "num_publishers": 1}


def test_empty_node_is_idle(fake_server, key_file, result):
    url = fake_server[0]
    assert run_module({"url": url, "key_file": key_file}) == 0
    assert result()["idle"] is True


def test_stopped_server_is_reported_not_failed(key_file, result):
    assert run_module({"url": "http://127.0.0.1:9", "key_file": key_file, "timeout": 2}) == 0
    out = result()
    assert out["running"] is False and out["idle"] is True and out["health_status"] is None


def test_rejected_key_fails_the_module(fake_server, result):
    url = fake_server[0]
    assert run_module({"url": url, "api_key": "APIunit", "api_secret": "not-the-secret-" * 3}) == 1
    out = result()
    assert out["failed"] and "rejected" in out["msg"]
    assert "not-the-secret" not in json.dumps(out)


def test_missing_key_file_fails_with_its_path(tmp_path, result):
    missing = str(tmp_path / "nope.yaml")
    assert run_module({"key_file": missing}) == 1
    assert missing in result()["msg"]


# A server that answers, but not in a way the room count can be read from, is not an idle or a
# stopped one (issue 13, item 3): the module fails and says why, so no caller restarts on it.

@pytest.mark.parametrize("script, reason", [
    ([("hang", 4)], "timed out"),
    (["close"], "closed"),
], ids=["health-timeout", "health-connection-closed"])
def test_health_check_without_an_answer_is_not_a_stopped_node(misbehaving_server, key_file, result, script, reason):
    url, _handler = misbehaving_server(script)
    assert run_module({"url": url, "key_file": key_file, "timeout": 1}) == 1
    out = result()
    assert out["failed"] and url in out["msg"] and reason in out["msg"]
    assert out["idle"] is False


@pytest.mark.parametrize("answer", [
    ("status", 200, "<html>a proxy's error page</html>"),
    ("status", 200, ""),
    ("status", 200, "[]"),
    "truncate",
], ids=["html", "empty", "not-an-object", "truncated"])
def test_list_rooms_answer_that_cannot_be_read_is_not_no_rooms(misbehaving_server, key_file, result, answer):
    url, handler = misbehaving_server([("status", 200, "OK"), answer])
    assert run_module({"url": url, "key_file": key_file, "timeout": 2}) == 1
    out = result()
    assert handler.requests == 2
    assert out["failed"] and "ListRooms" in out["msg"]
    assert out["running"] is True and out["idle"] is False
