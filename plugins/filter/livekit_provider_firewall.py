# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's firewall rules (the rule sets each role publishes with tasks_from=firewall_rules) turned
into a provider's firewall: a Hetzner Cloud Firewall (stateful, IPv4 and IPv6) or the Robot firewall
of a dedicated server (stateless, IPv4, at most 10 rules a direction).

Both read the rules through module_utils/livekit_nft.rule_parts, the code the livekit_firewall module
renders nft statements with, so a source or port cannot mean one thing on the host and another at
the provider.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_nft import RuleError, rule_parts

ANYWHERE = ["0.0.0.0/0", "::/0"]


def _parts(rulesets):
    if not isinstance(rulesets, (list, tuple)):
        raise AnsibleFilterError("expects a list of rule sets ({name, rules}), got %r" % (rulesets,))
    out = []
    for ruleset in rulesets:
        if not isinstance(ruleset, dict) or "name" not in ruleset:
            raise AnsibleFilterError("a rule set is {name, rules}, got %r" % (ruleset,))
        try:
            for part in rule_parts(ruleset["name"], ruleset.get("rules") or []):
                part["ruleset"] = ruleset["name"]
                out.append(part)
        except RuleError as err:
            raise AnsibleFilterError(str(err))
    return out


def hcloud_firewall_rules(rulesets):
    """Inbound rules of a Hetzner Cloud Firewall (hetzner.hcloud.firewall's ``rules``) that accept what
    the host firewall accepts: one rule per host rule, its sources as the host reads them (or
    anywhere), and ICMP from anywhere, which the host's base chain accepts. Every key the module
    compares is set, so a second run finds the firewall unchanged."""
    rules = [{"direction": "in", "protocol": "icmp", "port": None, "source_ips": list(ANYWHERE),
              "destination_ips": [], "description": "host: icmp"}]
    for part in _parts(rulesets):
        rules.append({
            "direction": "in",
            "protocol": part["proto"],
            "port": part["port"],
            "source_ips": (part["v4"] + part["v6"]) or list(ANYWHERE),
            "destination_ips": [],
            "description": "%s: %s" % (part["ruleset"], part["comment"]),
        })
    return rules


def _robot_name(text):
    # Robot allows letters, digits, space and . - + _ @ in a rule name.
    cleaned = "".join(c if c.isalnum() or c in " .-+_@" else " " for c in text)
    return " ".join(cleaned.split())[:50]


def hrobot_firewall_rules(rulesets, return_rules=None):
    """Input rules of a Robot firewall (community.hrobot.firewall's ``rules.input``) that accept what
    the host firewall accepts over IPv4: one rule per host rule and IPv4 source (from anywhere when it
    has none); a rule whose sources are all IPv6 has no IPv4 counterpart and is left out (Robot filters
    IPv4; the host firewall still filters IPv6). ``return_rules`` come first: a stateless filter must
    let the answers to the host's own connections in (TCP ACKs to ephemeral ports, NTP)."""
    rules = [dict(rule) for rule in (return_rules or [])]
    for part in _parts(rulesets):
        if part["v6"] and not part["v4"]:
            continue
        for source in part["v4"] or [None]:
            rule = {"name": _robot_name("%s %s" % (part["ruleset"], part["comment"])), "ip_version": "ipv4",
                    "protocol": part["proto"], "dst_port": part["port"], "action": "accept"}
            if source is not None:
                rule["src_ip"] = source
            rules.append(rule)
    return rules


class FilterModule(object):
    def filters(self):
        return {
            "hcloud_firewall_rules": hcloud_firewall_rules,
            "hrobot_firewall_rules": hrobot_firewall_rules,
        }
