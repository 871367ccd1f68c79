"""The deployment record a rollback and an operator rely on."""

from __future__ import annotations

import json
import os
import stat

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.livekit.plugins.modules import livekit_deployment


def run(args, capsys, check_mode=False, diff=False):
    with patch_module_args(dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)), \
            pytest.raises(SystemExit) as exit_info:
        livekit_deployment.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


@pytest.fixture
def env(tmp_path):
    config = tmp_path / "livekit.yaml"
    config.write_text("redis:\n  password: hunter2-redis-password\n")
    return dict(path=str(tmp_path / "deploy"), facts_file=str(tmp_path / "facts" / "livekit_deployment.fact")), config


def test_upgrade_then_rollback_keeps_versions_configs_and_audit(env, capsys):
    base, config = env
    rc, first = run(dict(base, state="present", version="1.13.4", config=str(config), playbook="site.yml"), capsys)
    assert rc == 0 and first["changed"] and first["record"]["previous_version"] is None
    rc, again = run(dict(base, state="present", version="1.13.4", config=str(config)), capsys)
    assert not again["changed"]

    config.write_text("redis:\n  password: hunter2-redis-password\nlogging: {level: debug}\n")
    rc, up = run(dict(base, state="present", version="1.13.5", config=str(config), playbook="upgrade.yml"), capsys,
                 diff=True)
    assert up["record"]["version"] == "1.13.5" and up["record"]["previous_version"] == "1.13.4"
    assert up["versions_with_config"] == ["1.13.4", "1.13.5"]
    assert "hunter2" not in json.dumps(up)
    snapshot = base["path"] + "/config/1.13.4.yaml"
    assert stat.S_IMODE(os.stat(snapshot).st_mode) == 0o600
    assert "logging" not in open(snapshot).read()  # 1.13.4 keeps the configuration it ran with

    rc, back = run(dict(base, state="present", version="1.13.4", event="rollback"), capsys)
    assert back["record"]["event"] == "rollback" and back["record"]["previous_version"] == "1.13.5"
    rc, query = run(dict(base), capsys)
    assert [e["event"] for e in query["audit"]] == ["deploy", "deploy", "rollback"]
    assert query["ansible_facts"]["livekit_deployment"]["record"]["version"] == "1.13.4"
    assert json.load(open(base["facts_file"]))["version"] == "1.13.4"


def test_check_mode_writes_nothing(env, capsys):
    base, config = env
    rc, out = run(dict(base, state="present", version="1.13.5", config=str(config)), capsys, check_mode=True)
    assert rc == 0 and out["changed"] and out["versions_with_config"] == []
    assert not os.path.exists(base["path"])


def test_a_version_that_is_not_one_fails(env, capsys):
    base, _config = env
    rc, out = run(dict(base, state="present", version="latest"), capsys)
    assert rc == 1 and "1.13.5" in out["msg"]
