"""The host firewall is ours to change, the host's other firewall tables are not.

Another program's nftables table (a container engine's NAT, fail2ban) must keep its rules through
every converge that changes our rules, and through nftables.service's reload and restart.
"""

from __future__ import annotations

import json

import pytest

from conftest import Node, load_nodes, run_playbook

FOREIGN = (
    "nft add table inet lkt_foreign; "
    "nft add chain inet lkt_foreign input '{ type filter hook input priority 10; }'; "
    "nft add rule inet lkt_foreign input tcp dport 9999 counter accept comment foreign-rule"
)


def ruleset(node: Node) -> str:
    return node.sh("nft list ruleset").stdout


@pytest.fixture
def foreign_table(node: Node):
    node.sh(FOREIGN)
    yield
    node.sh("nft delete table inet lkt_foreign", check=False)


@pytest.fixture
def foreign_tables(request):
    """The other program's table on every host of the scenario (Debian 12 and 13)."""
    nodes = load_nodes(request.config.getoption("--hosts-dir"))
    for node in nodes:
        node.sh(FOREIGN)
    yield nodes
    for node in nodes:
        node.sh("nft delete table inet lkt_foreign", check=False)


def test_a_converge_that_changes_our_rules_keeps_other_tables(foreign_tables: list[Node]) -> None:
    limit = ",".join(node.name for node in foreign_tables)  # both hosts in one run, as a user converges them
    extra = json.dumps({"livekit_host_firewall_extra_rules": [
        {"proto": "tcp", "port": "9100", "sources": ["192.0.2.7/32"], "comment": "lkt-probe"}]})
    changed = run_playbook("site.yml", "--limit", limit, "-e", extra, timeout=600)
    assert changed.returncode == 0, changed.stdout[-3000:]
    for node in foreign_tables:
        rules = ruleset(node)
        assert 'ip saddr 192.0.2.7 tcp dport 9100 accept comment "lkt-probe"' in rules, (node.name, rules)
        assert 'comment "foreign-rule"' in rules, f"{node.name}: the other table lost its rule:\n{rules}"

    back = run_playbook("site.yml", "--limit", limit, timeout=600)
    assert back.returncode == 0, back.stdout[-3000:]
    for node in foreign_tables:
        rules = ruleset(node)
        assert "lkt-probe" not in rules, (node.name, rules)
        assert 'comment "foreign-rule"' in rules, f"{node.name}: the other table lost its rule:\n{rules}"
        assert 'comment "ssh"' in rules and "policy drop" in rules, (node.name, rules)


@pytest.mark.parametrize("action", ["reload", "restart"])
def test_the_nftables_service_touches_only_our_table(node: Node, foreign_table, action: str) -> None:
    node.sh(f"systemctl {action} nftables")
    rules = ruleset(node)
    assert 'comment "foreign-rule"' in rules, f"systemctl {action} nftables removed the other table:\n{rules}"
    assert "table inet livekit_filter" in rules and 'comment "ssh"' in rules, rules
