"""playbooks/hrobot_firewall.yml's checks, before any call to Robot (the Robot webservice has no
endpoint option to point at a stand-in; the rule list itself is covered by the filter's unit tests,
and docs/provisioning.md keeps the manual check against a real server)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
ANSIBLE = pathlib.Path(sys.executable).parent


def preflight(tmp_path, extra):
    varfile = tmp_path / "extra.json"
    varfile.write_text(json.dumps(dict({"vault_redis_password": "x", "vault_hrobot_user": "u",
                                        "vault_hrobot_password": "p"}, **extra)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".cache" / "collections"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(ANSIBLE / "ansible-playbook"), "-i", str(REPO / "inventories" / "dedicated"),
                           str(REPO / "playbooks" / "hrobot_firewall.yml"), "--tags", "livekit_hrobot_preflight",
                           "-e", "@" + str(varfile)], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=300, check=False)


def test_the_dedicated_example_fits_the_robot_firewall(tmp_path):
    proc = preflight(tmp_path, {})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Write the Robot firewall of the dedicated server" not in proc.stdout


def test_more_rules_than_robot_takes_are_refused_with_the_variables_to_change(tmp_path):
    proc = preflight(tmp_path, {"livekit_host_firewall_ssh_sources": ["198.51.100.0/24", "192.0.2.0/24", "203.0.113.0/24"]})
    assert proc.returncode != 0
    text = " ".join(proc.stdout.split())
    assert "ax1.example.com needs 12 Robot firewall rules" in text and "Robot accepts 10" in text
    assert "livekit_host_firewall_ssh_sources" in text


def test_a_missing_server_number_is_refused(tmp_path):
    proc = preflight(tmp_path, {"livekit_hrobot_server_number": 0})
    assert proc.returncode != 0
    assert "livekit_hrobot_server_number is not set for ax1.example.com" in " ".join(proc.stdout.split())
