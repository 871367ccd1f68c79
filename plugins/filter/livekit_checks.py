# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the roles' settings checks (tasks/preflight.yml) use on the controller, so that a value the
hosts would refuse later is refused before any host changes, with the value and the reason named.

Addresses and networks are judged by Python's ipaddress module, and firewall rules by the same code
the livekit_firewall module renders them with (module_utils/livekit_nft), so a rule the checks pass
is one the module accepts.
"""

from __future__ import annotations

import base64
import ipaddress
import struct

from ansible.errors import AnsibleFilterError
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_nft import RuleError, render_rules
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_reaper import compile_patterns


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


def outside_network(values, network):
    """The entries of ``values`` (addresses or networks) that do not lie inside ``network``; entries
    that are not addresses at all count as outside."""
    try:
        outer = ipaddress.ip_network(str(network).strip(), strict=False)
    except ValueError:
        raise AnsibleFilterError("outside_network: %r is not a CIDR network" % (network,))
    if isinstance(values, (str, bytes)):
        values = [values]
    out = []
    for value in _as_list(values, "outside_network"):
        try:
            inner = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            out.append(str(value))
            continue
        if inner.version != outer.version or not inner.subnet_of(outer):
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


def _ssh_string(blob, offset):
    (length,) = struct.unpack(">I", blob[offset:offset + 4])
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4:end], end


def ssh_public_key(private_key):
    """The public key line (``ssh-ed25519 AAAA...``) of an unencrypted OpenSSH Ed25519 private key,
    read from the key file's own public section (no file, no subprocess: the private key never
    leaves the controller's memory); an empty string for anything else (an empty value, another key
    type, a key with a passphrase, garbage), so a settings check can name the variable."""
    text = str(private_key or "").strip()
    head, tail = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    if not (text.startswith(head) and text.endswith(tail)):
        return ""
    try:
        blob = base64.b64decode("".join(text[len(head):-len(tail)].split()), validate=True)
        if not blob.startswith(b"openssh-key-v1\x00"):
            return ""
        offset = len(b"openssh-key-v1\x00")
        cipher, offset = _ssh_string(blob, offset)
        kdf, offset = _ssh_string(blob, offset)
        dummy, offset = _ssh_string(blob, offset)
        (count,) = struct.unpack(">I", blob[offset:offset + 4])
        public, offset = _ssh_string(blob, offset + 4)
        key_type, dummy = _ssh_string(public, 0)
    except (ValueError, TypeError, struct.error):
        return ""
    if cipher != b"none" or kdf != b"none" or count != 1 or key_type != b"ssh-ed25519" or len(public) != 51:
        return ""
    return "ssh-ed25519 " + base64.b64encode(public).decode()


def pattern_problems(patterns):
    """Why a list of room-name patterns is not what the idle-room reaper accepts (the message of the
    same check the reaper makes), or an empty string when every entry is a regular expression."""
    try:
        compile_patterns(patterns)
    except ValueError as err:
        return str(err)
    return ""


class FilterModule(object):
    def filters(self):
        return {
            "invalid_addresses": invalid_addresses,
            "invalid_networks": invalid_networks,
            "firewall_rule_problems": firewall_rule_problems,
            "outside_network": outside_network,
            "ssh_public_key": ssh_public_key,
            "pattern_problems": pattern_problems,
        }
