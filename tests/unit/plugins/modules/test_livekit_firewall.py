"""livekit_firewall: rule rendering, and the real nft in a private network namespace.

The namespace tests run the module as Ansible runs it (a process reading its arguments) with the
controller's nft, inside `unshare --net`, so they never touch this machine's own firewall.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_nft import RuleError, render_rules

MODULE = "ansible_collections.selfhosted.livekit.plugins.modules.livekit_firewall"


def test_rules_render_per_address_family():
    lines = render_rules("livekit", [
        {"proto": "udp", "port": "50000-60000", "comment": "media"},
        {"proto": "tcp", "port": "6789", "sources": ["10.0.0.5", "2001:db8::/64"], "comment": "metrics"},
    ])
    assert lines == [
        'add rule inet livekit_filter input udp dport 50000-60000 accept comment "media"',
        'add rule inet livekit_filter input ip saddr { 10.0.0.5/32 } tcp dport 6789 accept comment "metrics"',
        'add rule inet livekit_filter input ip6 saddr { 2001:db8::/64 } tcp dport 6789 accept comment "metrics"',
    ]


@pytest.mark.parametrize("rule, message", [
    ({"proto": "tcp", "port": "22", "sources": ["10.0.0.0/8 } accept; add rule inet x y"]}, "not an IP address"),
    ({"proto": "tcp", "port": "22; flush ruleset"}, 'must be "N" or "N-M"'),
    ({"proto": "tcp", "port": "70000"}, "within 1-65535"),
    ({"proto": "tcp", "port": "90-80"}, "N <= M"),
    ({"proto": "icmp", "port": "1"}, "tcp or udp"),
    ({"proto": "tcp", "port": "22", "comment": 'ssh" accept'}, "without quotes"),
])
def test_values_that_could_add_a_statement_are_refused(rule, message):
    with pytest.raises(RuleError, match=message):
        render_rules("host", [rule])


needs_nft = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
    reason="needs root, nft and unshare (scripts/setup.sh installs nftables)",
)


@pytest.fixture
def netns(tmp_path):
    """Run shell commands and the module in one private network namespace that lives for the test."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "300"])
    try:
        for _attempt in range(50):  # wait until the holder is inside its namespace
            if os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            subprocess.run(["sleep", "0.02"], check=True)
        enter = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]

        def sh(command):
            return subprocess.run([*enter, "sh", "-c", command], capture_output=True, text=True, check=True).stdout

        def module(**args):
            args.setdefault("rules_dir", str(tmp_path / "nftables.d"))
            args.setdefault("config", str(tmp_path / "nftables.conf"))
            path = tmp_path / "args.json"
            path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
            done = subprocess.run([*enter, sys.executable, "-m", MODULE, str(path)], capture_output=True, text=True, env=env,
                                  check=False)
            return json.loads(done.stdout)

        yield sh, module
    finally:
        holder.kill()
        holder.wait()


@needs_nft
def test_loading_keeps_other_tables_and_is_idempotent(netns, tmp_path):
    sh, module = netns
    sh("nft add table inet foreign; nft add chain inet foreign input '{ type filter hook input priority 10; }';"
       " nft add rule inet foreign input tcp dport 9999 counter accept comment kept")

    first = module(name="host", base=True, rules=[{"proto": "tcp", "port": "22", "comment": "ssh"}])
    assert first["changed"] and first["loaded"], first
    second = module(name="livekit", rules=[{"proto": "udp", "port": "50000-50100", "comment": "media"}])
    assert second["changed"] and second["loaded"], second
    again = module(name="livekit", rules=[{"proto": "udp", "port": "50000-50100", "comment": "media"}])
    assert not again["changed"], again

    changed = module(name="livekit", rules=[{"proto": "udp", "port": "50000-50200", "comment": "media"}])
    assert changed["changed"] and changed["loaded"], changed
    ruleset = sh("nft list ruleset")
    assert 'tcp dport 9999 counter' in ruleset and 'comment "kept"' in ruleset, ruleset
    assert "udp dport 50000-50200 accept" in ruleset and "50000-50100" not in ruleset, ruleset
    assert 'tcp dport 22 accept comment "ssh"' in ruleset, ruleset


@needs_nft
def test_a_rule_set_nft_refuses_changes_nothing(netns, tmp_path):
    sh, module = netns
    module(name="host", base=True, rules=[{"proto": "tcp", "port": "22", "comment": "ssh"}])
    before = sh("nft list ruleset")
    # Another file in the directory that nft cannot load makes the whole set unloadable.
    (tmp_path / "nftables.d" / "broken.nft").write_text("add rule inet livekit_filter input nonsense\n")
    failed = module(name="livekit", rules=[{"proto": "udp", "port": "50000-50100", "comment": "media"}])
    assert failed.get("failed") and "nft refuses" in failed["msg"], failed
    assert not (tmp_path / "nftables.d" / "livekit.nft").exists()
    assert sh("nft list ruleset") == before


@needs_nft
def test_check_mode_reports_without_loading(netns, tmp_path):
    sh, module = netns
    module(name="host", base=True, rules=[{"proto": "tcp", "port": "22", "comment": "ssh"}])
    before = sh("nft list ruleset")
    checked = module(name="redis", rules=[{"proto": "tcp", "port": "6379", "sources": ["10.0.0.2"]}], _ansible_check_mode=True)
    assert checked["changed"] and checked["loaded"], checked
    assert not (tmp_path / "nftables.d" / "redis.nft").exists()
    assert sh("nft list ruleset") == before


def test_without_the_skeleton_the_service_role_is_told_what_to_do(tmp_path):
    args = {"name": "redis", "rules_dir": str(tmp_path / "d"), "config": str(tmp_path / "missing.conf"),
            "rules": [{"proto": "tcp", "port": "6379"}]}
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-m", MODULE, str(path)], capture_output=True, text=True, env=env, check=False)
    out = json.loads(done.stdout)
    assert out["failed"] and "livekit_host_firewall_enabled" in out["msg"]
    assert not pathlib.Path(tmp_path / "d").exists()
