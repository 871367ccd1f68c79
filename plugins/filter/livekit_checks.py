# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the roles' settings checks (tasks/preflight.yml) use on the controller, so that a value the
hosts would refuse later is refused before any host changes, with the value and the reason named.

Addresses and networks are judged by Python's ipaddress module, and firewall rules by the same code
the livekit_firewall module renders them with (module_utils/livekit_nft), so a rule the checks pass
is one the module accepts.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_nft import RuleError, render_rules


def _as_list(values, name):
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise AnsibleFilterError("%s expects a list, got %r" % (name, values))
    return list(values)


def invalid_addresses(values):
    """The entries of ``values`` that are not an IPv4 or IPv6 address (as strings, in order)."""
    out = []
    for value in _as_list(values, "invalid_addresses"):
        try:
            ipaddress.ip_address(str(value).strip())
        except ValueError:
            out.append(str(value))
    return out


def invalid_networks(values):
    """The entries of ``values`` that are neither an IP address nor a network in CIDR notation.

    Host bits may be set (``10.0.0.5/24``), as the firewall module and livekit-server accept them.
    """
    out = []
    for value in _as_list(values, "invalid_networks"):
        try:
            ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            out.append(str(value))
    return out


def firewall_rule_problems(rules):
    """One message per firewall rule the livekit_firewall module would refuse, naming the rule by its
    position (from 0) and saying what is wrong; an empty list when every rule is fine."""
    problems = []
    for index, rule in enumerate(_as_list(rules, "firewall_rule_problems")):
        where = "rule %d" % index
        if not isinstance(rule, dict):
            problems.append("%s is not a mapping of proto, port, sources and comment" % where)
            continue
        if rule.get("comment"):
            where += " (%s)" % rule["comment"]
        if isinstance(rule.get("sources"), (str, bytes)) or not isinstance(rule.get("sources") or [], (list, tuple)):
            problems.append("%s: sources must be a list of addresses or CIDR networks" % where)
            continue
        try:
            render_rules("preflight", [rule])
        except RuleError as err:
            # The module's message starts with its own name for the rule; ours counts them all.
            problems.append("%s: %s" % (where, str(err).split(": ", 1)[-1]))
    return problems


class FilterModule(object):
    def filters(self):
        return {
            "invalid_addresses": invalid_addresses,
            "invalid_networks": invalid_networks,
            "firewall_rule_problems": firewall_rule_problems,
        }
