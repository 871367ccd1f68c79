"""Key file changes: what a user gets back, what lands in the file, and what never leaks."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.livekit.plugins.modules import livekit_api_key, livekit_api_key_info

OLD_SECRET = "o" * 40
ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("# Ansible managed\nAPIold: %s\n" % OLD_SECRET)
    path.chmod(0o600)
    return path


def run(module, args, capsys, check_mode=False, diff=False):
    extra = {"_ansible_check_mode": check_mode, "_ansible_diff": diff}
    with patch_module_args(dict(args, **extra)), pytest.raises(SystemExit) as exit_info:
        module.main()
    out = json.loads(capsys.readouterr().out)
    return exit_info.value.code, out


def base(key_file, tmp_path, **args):
    return dict(path=str(key_file), owner=ME, group=MY_GROUP, metadata_file=str(tmp_path / "meta.json"),
                audit_log=str(tmp_path / "audit.jsonl"), **args)


def test_generated_key_is_added_atomically_0600_and_the_secret_only_returned_on_request(key_file, tmp_path, capsys):
    rc, out = run(livekit_api_key, base(key_file, tmp_path, return_secret=True), capsys, diff=True)
    assert rc == 0 and out["changed"]
    name, secret = out["name"], out["secret"]
    assert name.startswith("API") and len(secret) >= 32
    text = key_file.read_text()
    assert text.startswith("# Ansible managed\n") and f"{name}: {secret}\n" in text and f"APIold: {OLD_SECRET}" in text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert secret not in json.dumps(out["diff"]) and OLD_SECRET not in json.dumps(out["diff"])
    assert json.loads((tmp_path / "meta.json").read_text())[name]["added"]
    audit = (tmp_path / "audit.jsonl").read_text()
    assert '"key_added"' in audit and secret not in audit

    rc, again = run(livekit_api_key, base(key_file, tmp_path, name=name), capsys)
    assert rc == 0 and not again["changed"] and "secret" not in again


def test_supplied_key_then_retire_the_old_one(key_file, tmp_path, capsys):
    new = "N" * 48
    assert run(livekit_api_key, base(key_file, tmp_path, name="APInew", secret=new), capsys)[1]["changed"]
    rc, out = run(livekit_api_key, base(key_file, tmp_path, name="APIold", state="absent"), capsys)
    assert rc == 0 and out["keys"] == ["APInew"]
    assert OLD_SECRET not in key_file.read_text()
    rc, info = run(livekit_api_key_info, {"path": str(key_file), "metadata_file": str(tmp_path / "meta.json")}, capsys)
    assert info["names"] == ["APInew"] and info["keys"][0]["added"] and new not in json.dumps(info)


@pytest.mark.parametrize("args,message", [
    ({"name": "APIold", "secret": "d" * 40}, "already exists with a different secret"),
    ({"name": "APInew", "secret": "short-secret"}, "at least 32 characters"),
    ({"name": "APInew", "secret": "-" + "x" * 40}, "must start with a letter or digit"),
    ({"name": "APIgone", "state": "absent"}, "is not in the key file"),
    ({"name": "APIold", "state": "absent"}, "only key"),
    ({"name": "a b", "secret": "x" * 40}, "3-64 letters"),
])
def test_bad_requests_fail_and_leave_the_file_alone(key_file, tmp_path, capsys, args, message):
    before = key_file.read_bytes()
    rc, out = run(livekit_api_key, base(key_file, tmp_path, **args), capsys)
    assert rc == 1 and message in out["msg"] and "left unchanged" in out["msg"]
    assert key_file.read_bytes() == before
    assert OLD_SECRET not in json.dumps(out) and "d" * 40 not in json.dumps(out)


def test_check_mode_reports_without_writing(key_file, tmp_path, capsys):
    before = key_file.read_bytes()
    rc, out = run(livekit_api_key, base(key_file, tmp_path, name="APInew", secret="n" * 40), capsys, check_mode=True)
    assert rc == 0 and out["changed"] and "APInew" in out["keys"]
    assert key_file.read_bytes() == before and not (tmp_path / "meta.json").exists()


def test_retiring_a_missing_key_can_be_made_idempotent(key_file, tmp_path, capsys):
    rc, out = run(livekit_api_key, base(key_file, tmp_path, name="APIgone", state="absent", missing_ok=True), capsys)
    assert rc == 0 and not out["changed"]
