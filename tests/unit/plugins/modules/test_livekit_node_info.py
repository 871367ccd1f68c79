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
