"""The provider firewalls built from a host's rule sets: the same sources and ports the host
firewall module reads, in the shape Hetzner Cloud and Robot take."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.selfhosted.livekit.plugins.filter.livekit_provider_firewall import (
    hcloud_firewall_rules,
    hrobot_firewall_rules,
)

RULESETS = [
    {"name": "host", "rules": [{"proto": "tcp", "port": "22", "sources": ["198.51.100.7", "2001:db8::/48"], "comment": "ssh"}]},
    {"name": "livekit", "rules": [{"proto": "udp", "port": "50000-60000", "comment": "livekit media"},
                                  {"proto": "tcp", "port": "6789", "sources": ["2001:db8:5::/64"], "comment": "livekit metrics"}]},
]
ANSWERS = [{"name": "tcp answers", "ip_version": "ipv4", "protocol": "tcp", "dst_port": "32768-65535", "tcp_flags": "ack",
           "action": "accept"}]


def test_cloud_rules_carry_the_sources_as_the_host_reads_them_and_icmp():
    rules = hcloud_firewall_rules(RULESETS)
    assert rules[0] == {"direction": "in", "protocol": "icmp", "port": None, "source_ips": ["0.0.0.0/0", "::/0"],
                        "destination_ips": [], "description": "host: icmp"}
    assert rules[1]["source_ips"] == ["198.51.100.7/32", "2001:db8::/48"]
    assert rules[2] == {"direction": "in", "protocol": "udp", "port": "50000-60000", "source_ips": ["0.0.0.0/0", "::/0"],
                        "destination_ips": [], "description": "livekit: livekit media"}
    assert len(rules) == 4


def test_robot_rules_put_the_answers_first_and_leave_ipv6_only_rules_to_the_host():
    rules = hrobot_firewall_rules(RULESETS, ANSWERS)
    assert rules[0] == ANSWERS[0]
    assert rules[1] == {"name": "host ssh", "ip_version": "ipv4", "protocol": "tcp", "dst_port": "22",
                        "src_ip": "198.51.100.7/32", "action": "accept"}
    assert rules[2] == {"name": "livekit livekit media", "ip_version": "ipv4", "protocol": "udp",
                        "dst_port": "50000-60000", "action": "accept"}
    assert len(rules) == 3, "the IPv6-only metrics rule has no IPv4 counterpart"


def test_each_ipv4_source_is_a_robot_rule_of_its_own_with_a_name_robot_accepts():
    rules = hrobot_firewall_rules([{"name": "redis", "rules": [
        {"proto": "tcp", "port": "6379", "sources": ["10.0.0.11", "10.0.0.12"], "comment": "redis (from nodes)!"}]}])
    assert [r["src_ip"] for r in rules] == ["10.0.0.11/32", "10.0.0.12/32"]
    assert rules[0]["name"] == "redis redis from nodes"


def test_a_rule_the_host_module_refuses_is_refused_here_too():
    with pytest.raises(AnsibleFilterError, match="'office' is not an IP address or CIDR network"):
        hcloud_firewall_rules([{"name": "host", "rules": [{"proto": "tcp", "port": "22", "sources": ["office"]}]}])
    with pytest.raises(AnsibleFilterError, match="port"):
        hrobot_firewall_rules([{"name": "host", "rules": [{"proto": "tcp", "port": "22;drop"}]}])
