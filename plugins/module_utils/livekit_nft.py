# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's one nftables mechanism: rule sets as data, rendered to nft syntax, checked as a
whole and loaded atomically into our own table only.

/etc/nftables.conf holds the skeleton: it (re)creates ``table inet livekit_filter`` with an input
chain that drops what no rule accepts, then includes every ``*.nft`` file in the rules directory,
one per role (host, livekit, redis, livekit-proxy). ``nft -f`` applies a file as one transaction,
and the skeleton deletes and re-creates only our table, so loading never touches another table
(container engines' NAT, fail2ban) and there is no moment without a rule set.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re

TABLE = "livekit_filter"
LOADED_HASH_FILE = ".loaded.sha256"
_PORT = re.compile(r"^[0-9]{1,5}(-[0-9]{1,5})?$")
_COMMENT = re.compile(r'^[^"\\\n\r]{0,128}$')
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class RuleError(ValueError):
    """A rule that cannot be rendered safely; the message names the rule and what is wrong."""


def check_name(name):
    if not _NAME.match(name or ""):
        raise RuleError("rule set name %r must be 1-64 lowercase letters, digits, '-' or '_'" % (name,))


def _port(rule, where):
    port = str(rule.get("port", "")).strip()
    if not _PORT.match(port):
        raise RuleError('%s: port %r must be "N" or "N-M"' % (where, rule.get("port")))
    bounds = [int(p) for p in port.split("-")]
    if not all(1 <= p <= 65535 for p in bounds) or bounds != sorted(bounds):
        raise RuleError("%s: port %r must lie within 1-65535, with N <= M" % (where, port))
    return port


def _sources(rule, where):
    v4, v6 = [], []
    for source in rule.get("sources") or []:
        try:
            net = ipaddress.ip_network(str(source), strict=False)
        except ValueError:
            raise RuleError("%s: source %r is not an IP address or CIDR network" % (where, source))
        (v6 if net.version == 6 else v4).append(str(net))
    return v4, v6


def rule_parts(name, rules):
    """``rules`` checked and normalised, one dict per rule: proto, port, comment, and the sources as
    ``v4`` and ``v6`` lists of networks (``10.0.0.5`` becomes ``10.0.0.5/32``; empty both = from
    anywhere). render_rules turns these into nft statements; a provider's firewall (Hetzner Cloud,
    Robot) is built from the same parts, so the two cannot read a rule differently.
    """
    check_name(name)
    parts = []
    for index, rule in enumerate(rules or []):
        where = "%s rule %d (%s)" % (name, index, rule.get("comment") or rule.get("port"))
        proto = rule.get("proto")
        if proto not in ("tcp", "udp"):
            raise RuleError("%s: proto %r must be tcp or udp" % (where, proto))
        port = _port(rule, where)
        comment = str(rule.get("comment") or name)
        if not _COMMENT.match(comment):
            raise RuleError("%s: comment must be at most 128 characters without quotes, backslashes or newlines" % where)
        v4, v6 = _sources(rule, where)
        parts.append({"proto": proto, "port": port, "comment": comment, "v4": v4, "v6": v6})
    return parts


def render_rules(name, rules):
    """nft statements that add ``rules`` to our input chain, one ``add rule`` line per address family.

    Each rule is a dict: proto (tcp|udp), port ("N" or "N-M"), sources (IPs or CIDRs; empty or
    missing = from anywhere), comment. Everything is validated, so nothing from the inventory can
    add a statement of its own.
    """
    lines = []
    prefix = "add rule inet %s input " % TABLE
    for part in rule_parts(name, rules):
        tail = '%s dport %s accept comment "%s"' % (part["proto"], part["port"], part["comment"])
        if not part["v4"] and not part["v6"]:
            lines.append(prefix + tail)
        if part["v4"]:
            lines.append(prefix + "ip saddr { %s } %s" % (", ".join(part["v4"]), tail))
        if part["v6"]:
            lines.append(prefix + "ip6 saddr { %s } %s" % (", ".join(part["v6"]), tail))
    return lines


def render_rule_file(name, rules, header):
    return "\n".join([header.rstrip("\n")] + render_rules(name, rules)) + "\n"


def render_skeleton(rules_dir, header):
    """/etc/nftables.conf: our table, re-created whole on every load, then each role's rule file."""
    return """%(header)s
# Inbound traffic is dropped unless a rule in %(dir)s accepts it. Loading this file (nft -f, as
# `systemctl reload nftables` and boot do) replaces only the table %(table)s, in one transaction;
# other tables (container engines, fail2ban) are left alone.
table inet %(table)s
delete table inet %(table)s

table inet %(table)s {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    ct state invalid drop
    iifname "lo" accept
    meta l4proto { icmp, ipv6-icmp } accept
  }
}

include "%(dir)s/*.nft"
""" % {"header": header.rstrip("\n"), "dir": rules_dir.rstrip("/"), "table": TABLE}


def include_line(rules_dir):
    return 'include "%s/*.nft"' % rules_dir.rstrip("/")


def ruleset_digest(config_text, rule_files):
    """A digest of what `nft -f config` would load: the skeleton and every rule file by name."""
    digest = hashlib.sha256()
    digest.update(config_text.encode())
    for name in sorted(rule_files):
        digest.update(b"\0" + name.encode() + b"\0" + rule_files[name].encode())
    return digest.hexdigest()


def read_rule_files(rules_dir):
    files = {}
    if os.path.isdir(rules_dir):
        for entry in sorted(os.listdir(rules_dir)):
            path = os.path.join(rules_dir, entry)
            if entry.endswith(".nft") and os.path.isfile(path):
                with open(path) as handle:
                    files[entry] = handle.read()
    return files
