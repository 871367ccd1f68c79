"""The settings checks' filters: what they call bad is what the hosts would refuse."""

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.selfhosted.livekit.plugins.filter.livekit_checks import (
    firewall_rule_problems,
    invalid_addresses,
    invalid_networks,
)


def test_addresses():
    assert invalid_addresses(["10.0.0.5", "fd00::1", "::1", " 127.0.0.1"]) == []
    assert invalid_addresses(["10.0.0.300", "redis.internal", "10.0.0.0/8", "", "0.0.0.0.0"]) == [
        "10.0.0.300", "redis.internal", "10.0.0.0/8", "", "0.0.0.0.0"]


def test_networks():
    assert invalid_networks(["10.0.0.0/8", "10.0.0.5", "10.0.0.5/24", "2001:db8::/64"]) == []
    assert invalid_networks(["10.0.0.0/33", "office", "10.0.0.0/8 } accept"]) == ["10.0.0.0/33", "office", "10.0.0.0/8 } accept"]


@pytest.mark.parametrize("value", ["10.0.0.0/8", {"a": 1}, 5])
def test_a_list_is_required(value):
    with pytest.raises(AnsibleFilterError):
        invalid_networks(value)


def test_firewall_rules_are_judged_like_the_module_does():
    assert firewall_rule_problems([
        {"proto": "tcp", "port": "9100", "sources": ["10.0.0.5/32"], "comment": "node-exporter"},
        {"proto": "udp", "port": "50000-60000"},
    ]) == []
    assert firewall_rule_problems([
        {"proto": "tcp", "port": "9100", "sources": ["10.0.0.300/32"], "comment": "node-exporter"},
        {"proto": "udp", "port": "70000"},
        {"proto": "tcp", "port": "22", "comment": 'say "hi"'},
        {"proto": "tcp", "port": "22", "sources": "10.0.0.0/8"},
        "tcp/22",
        {"proto": "icmp", "port": "1"},
    ]) == [
        "rule 0 (node-exporter): source '10.0.0.300/32' is not an IP address or CIDR network",
        "rule 1: port '70000' must lie within 1-65535, with N <= M",
        'rule 2 (say "hi"): comment must be at most 128 characters without quotes, backslashes or newlines',
        "rule 3: sources must be a list of addresses or CIDR networks",
        "rule 4 is not a mapping of proto, port, sources and comment",
        "rule 5: proto 'icmp' must be tcp or udp",
    ]


def test_ssh_public_key_of_an_ed25519_private_key(tmp_path):
    import shutil
    import subprocess
    from ansible_collections.selfhosted.livekit.plugins.filter.livekit_checks import ssh_public_key
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed")
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "c", "-f", str(key)], check=True)
    assert ssh_public_key(key.read_text()) == " ".join((tmp_path / "k.pub").read_text().split()[:2])
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)], check=True)
    for bad in ("", None, "AGE-SECRET-KEY-1X", locked.read_text(), key.read_text().replace("A", "B", 3)):
        assert ssh_public_key(bad) == ""
