#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_firewall
short_description: Write a role's nftables rules and load the host firewall atomically, touching only its own table
version_added: 0.5.0
description:
  - Each role that opens ports keeps its rules as data and calls this module once. The module renders
    the rules into O(rules_dir)/O(name).nft, checks the complete rule set the host would load with
    C(nft --check), writes what changed, and loads the rule set with C(nft -f) when it differs from
    what was last loaded.
  - The rule set lives in one table, C(inet livekit_filter). O(config) (C(/etc/nftables.conf))
    deletes and re-creates that table and includes every C(*.nft) file of O(rules_dir), and C(nft -f)
    applies a file as one transaction, so a load never flushes other tables (container engines' NAT,
    fail2ban) and the host is never without rules.
  - What was last loaded is remembered as a digest in O(rules_dir)/.loaded.sha256, so a run that
    failed after writing a file still loads it on the next run.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  name:
    description: The rule set, one per role (for example C(host), C(livekit), C(redis)); its file is O(rules_dir)/O(name).nft.
    type: str
    required: true
  rules:
    description:
      - Inbound accept rules. Sources are checked to be IP addresses or networks, ports to be C(N) or
        C(N-M), comments to have no quotes, so no value can add an nftables statement of its own.
    type: list
    elements: dict
    default: []
    suboptions:
      proto:
        description: Transport protocol.
        type: str
        choices: [tcp, udp]
        required: true
      port:
        description: A port or a range C(N-M).
        type: str
        required: true
      sources:
        description: IPv4/IPv6 addresses or CIDR networks allowed; empty means from anywhere.
        type: list
        elements: str
        default: []
      comment:
        description: Shown by C(nft list ruleset).
        type: str
  state:
    description: C(absent) removes the rule set's file (and loads the rule set without it).
    type: str
    choices: [present, absent]
    default: present
  base:
    description:
      - Also write O(config), the skeleton that creates the table and its input chain (policy drop;
        established, loopback and ICMP accepted) and includes O(rules_dir). The host role sets this;
        service roles rely on it and fail with a clear message when it is missing.
    type: bool
    default: false
  rules_dir:
    description: Directory of the rule files.
    type: path
    default: /etc/nftables.d
  config:
    description: The file C(nft -f) loads, at boot and on C(systemctl reload nftables).
    type: path
    default: /etc/nftables.conf
  header:
    description: Comment lines written at the top of each file.
    type: str
    default: "# Managed by the selfhosted.livekit collection; local changes are overwritten."
  load:
    description: Load the rule set when it differs from what was last loaded. Off, only the files are written.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: The complete rule set is checked with C(nft --check) when nft is installed.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: full
notes:
  - Needs the C(nft) binary (Debian package C(nftables)) except in check mode on a host that does not have it yet.
"""

EXAMPLES = r"""
- name: Open the media ports of livekit-server and keep its metrics private
  selfhosted.livekit.livekit_firewall:
    name: livekit
    rules:
      - {proto: udp, port: "50000-60000", comment: livekit media}
      - {proto: tcp, port: "6789", sources: ["10.0.0.5/32"], comment: livekit metrics}

- name: Close what an earlier run opened for Redis
  selfhosted.livekit.livekit_firewall:
    name: redis
    state: absent
"""

RETURN = r"""
path:
  description: The rule set's file.
  returned: always
  type: str
  sample: /etc/nftables.d/livekit.nft
rules:
  description: The nft statements the rule set consists of.
  returned: always
  type: list
  elements: str
  sample: ['add rule inet livekit_filter input udp dport 50000-60000 accept comment "livekit media"']
loaded:
  description: Whether the rule set was (or, in check mode, would be) loaded.
  returned: always
  type: bool
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import atomic_write
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_nft import (
    LOADED_HASH_FILE,
    RuleError,
    include_line,
    read_rule_files,
    render_rule_file,
    render_rules,
    render_skeleton,
    ruleset_digest,
)


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _check(module, nft, rules_dir, config_text, files):
    """nft --check of the candidate rule set, from a scratch copy whose include points at it."""
    scratch = os.path.join(module.tmpdir, "nft-candidate")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    for name, text in files.items():
        with open(os.path.join(scratch, name), "w") as handle:
            handle.write(text)
    candidate = os.path.join(scratch, "nftables.conf")
    with open(candidate, "w") as handle:
        handle.write(config_text.replace(include_line(rules_dir), include_line(scratch)))
    rc, out, err = module.run_command([nft, "--check", "--file", candidate])
    if rc != 0:
        module.fail_json(msg="nft refuses the rule set that would result; nothing was changed: %s"
                         % (err or out).strip().replace(scratch, rules_dir))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            rules=dict(type="list", elements="dict", default=[], options=dict(
                proto=dict(type="str", required=True, choices=["tcp", "udp"]),
                port=dict(type="str", required=True),
                sources=dict(type="list", elements="str", default=[]),
                comment=dict(type="str"),
            )),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            base=dict(type="bool", default=False),
            rules_dir=dict(type="path", default="/etc/nftables.d"),
            config=dict(type="path", default="/etc/nftables.conf"),
            header=dict(type="str", default="# Managed by the selfhosted.livekit collection; local changes are overwritten."),
            load=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    rules_dir = p["rules_dir"].rstrip("/")
    filename = p["name"] + ".nft"
    path = os.path.join(rules_dir, filename)
    header = "\n".join(line if line.startswith("#") else "# " + line for line in p["header"].splitlines())
    try:
        lines = render_rules(p["name"], p["rules"]) if p["state"] == "present" else []
        wanted = render_rule_file(p["name"], p["rules"], header) if p["state"] == "present" else None
    except RuleError as err:
        module.fail_json(msg=str(err))

    config_before = _read(p["config"])
    if p["base"]:
        config_after = render_skeleton(rules_dir, header)
    elif config_before is None and module.check_mode:
        # A check run on a new host: the host role's own (checked) run would write it first.
        config_after = render_skeleton(rules_dir, header)
    elif config_before is None or include_line(rules_dir) not in config_before:
        module.fail_json(msg="%s is not the firewall skeleton that includes %s/*.nft: the selfhosted.livekit.livekit_host "
                         "role writes it (livekit_host_firewall_enabled: true) and must run first. Either enable it, or "
                         "turn this role's firewall setting off and open the ports yourself." % (p["config"], rules_dir))
    else:
        config_after = config_before

    files_before = read_rule_files(rules_dir)
    files_after = dict(files_before)
    if wanted is None:
        files_after.pop(filename, None)
    else:
        files_after[filename] = wanted

    file_changed = files_before.get(filename) != files_after.get(filename)
    config_changed = config_before != config_after
    loaded_digest = (_read(os.path.join(rules_dir, LOADED_HASH_FILE)) or "").strip()
    need_load = p["load"] and ruleset_digest(config_after, files_after) != loaded_digest
    changed = file_changed or config_changed or need_load

    diff = []
    if file_changed:
        diff.append(dict(before_header=path, after_header=path, before=files_before.get(filename, ""),
                         after=files_after.get(filename, "")))
    if config_changed:
        diff.append(dict(before_header=p["config"], after_header=p["config"], before=config_before or "",
                         after=config_after))
    result = dict(changed=changed, path=path, rules=lines, loaded=need_load, diff=diff)

    nft = module.get_bin_path("nft")
    if changed and nft:
        _check(module, nft, rules_dir, config_after, files_after)
    if module.check_mode or not changed:
        module.exit_json(**result)
    if not nft:
        module.fail_json(msg="nft is not installed (Debian package nftables); the livekit_host role installs it.")

    if not os.path.isdir(rules_dir):
        os.makedirs(rules_dir, 0o755)
    if config_changed:
        atomic_write(p["config"], config_after.encode(), 0o644, 0, 0)
    if file_changed:
        if wanted is None:
            os.unlink(path)
        else:
            atomic_write(path, wanted.encode(), 0o644, 0, 0)
    if need_load:
        rc, out, err = module.run_command([nft, "--file", p["config"]])
        if rc != 0:
            # Put back what was there, so the files on disk keep matching the rules the kernel runs.
            if config_changed and config_before is not None:
                atomic_write(p["config"], config_before.encode(), 0o644, 0, 0)
            if file_changed:
                if filename in files_before:
                    atomic_write(path, files_before[filename].encode(), 0o644, 0, 0)
                elif os.path.exists(path):
                    os.unlink(path)
            module.fail_json(msg="nft could not load %s; the previous files were put back and the running rules "
                             "are unchanged: %s" % (p["config"], (err or out).strip()))
        atomic_write(os.path.join(rules_dir, LOADED_HASH_FILE),
                     (ruleset_digest(config_after, files_after) + "\n").encode(), 0o644, 0, 0)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
