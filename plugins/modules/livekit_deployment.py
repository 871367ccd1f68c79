#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_deployment
short_description: Keep the deployment record and audit log of a livekit-server node
version_added: 0.2.0
description:
  - "Keeps, in O(path), what a rollback needs and an operator asks after an incident:
    C(deployment.json) (the version the node runs, the one before it, when, by whom and through
    which playbook), C(audit.jsonl) (one JSON line per deploy, rollback, drain, force; appended,
    and rotated to C(audit.jsonl.1) at 1 MiB)
    and C(config/VERSION.yaml), the last configuration each version ran with, so a rollback
    restores a binary together with a configuration it can parse."
  - With O(state=present), records that O(version) now runs (after a restart that verified it).
    Recording the version already recorded changes nothing unless its configuration changed.
  - With O(state=query), changes nothing and returns the record and the last audit events, also
    as the fact C(livekit_deployment).
  - The record is also written to O(facts_file), so C(ansible_local) shows it after fact gathering.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  path:
    description: Directory of the record, the audit log and the configuration snapshots.
    type: path
    default: /var/lib/livekit-deploy
  state:
    description: V(present) records a deployment; V(query) only reads.
    type: str
    choices: [present, query]
    default: query
  version:
    description: The livekit-server version that now runs. Required with O(state=present).
    type: str
  event:
    description: What brought this version, for the record and the audit log.
    type: str
    choices: [deploy, rollback]
    default: deploy
  config:
    description:
      - The livekit.yaml this version runs with; a copy is kept (mode 0600) for rollbacks.
    type: path
  playbook:
    description: Playbook (or other tool) that made the change.
    type: str
  by:
    description: Who made the change (for example the controller user).
    type: str
  audit_lines:
    description: How many of the latest audit events to return.
    type: int
    default: 20
  facts_file:
    description: Where to also write the record as a local fact; empty to skip.
    type: path
    default: /etc/ansible/facts.d/livekit_deployment.fact
  key_file:
    description:
      - With O(slot), the key file the slot's instance read at start; the names of its keys (never the
        secrets) are recorded for the slot, so a later swap keeps every key a draining slot still needs.
    type: path
    version_added: 0.5.0
  units:
    description:
      - systemd units whose C(ActiveState) to return in RV(unit_states) (one C(systemctl show) for all).
    type: list
    elements: str
    default: []
    version_added: 0.5.0
  slot:
    description:
      - Under the blue_green deployment strategy, the slot whose instance runs O(version); it becomes
        the record's C(live_slot). Empty for the single instance of the restart strategy.
    type: str
    default: ""
    version_added: 0.5.0
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: full
    details: Shows the record before and after; configuration snapshots are never shown.
notes:
  - Configuration snapshots hold secrets (the Redis password); they are written 0600 root and never
    returned or shown in a diff.
"""

EXAMPLES = r"""
- name: Record the version a verified restart brought up
  selfhosted.livekit.livekit_deployment:
    state: present
    version: 1.13.6
    config: /etc/livekit/livekit.yaml
    playbook: upgrade.yml
    by: "{{ lookup('env', 'USER') }}"

- name: Read what runs and what ran before
  selfhosted.livekit.livekit_deployment:
  register: deployment

- name: Show the previous version
  ansible.builtin.debug:
    msg: "rollback target: {{ deployment.record.previous_version }}"
"""

RETURN = r"""
record:
  description: The deployment record after this task (empty when nothing was ever recorded).
  returned: always
  type: dict
  sample:
    version: 1.13.6
    previous_version: 1.13.5
    event: deploy
    time: "2026-11-23T02:14:09Z"
    by: ops
    playbook: upgrade.yml
    config_sha256: 3b1f...
versions_with_config:
  description: Versions whose configuration snapshot is kept (possible rollback targets).
  returned: always
  type: list
  elements: str
  sample: ["1.13.5", "1.13.6"]
unit_states:
  description: The C(ActiveState) of each of O(units) (C(inactive) for a unit that does not exist).
  returned: always
  type: dict
  sample: {"livekit-server@a.service": active, "livekit-server@b.service": deactivating}
audit:
  description: The latest audit events, oldest first.
  returned: always
  type: list
  elements: dict
ansible_facts:
  description: The same record, audit tail and snapshot list under C(livekit_deployment).
  returned: always
  type: dict
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import parse_key_file
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_record import paths, read_audit, read_json
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_record import record_deployment, snapshots


def slot_update(params):
    """The record's entry for the slot that now runs ``version`` (started by a converge, not a swap)."""
    fields = dict(state="live", version=params["version"])
    if params["key_file"]:
        try:
            with open(params["key_file"]) as handle:
                fields["key_names"] = sorted(parse_key_file(handle.read()))
        except (OSError, ValueError):
            pass
    return {params["slot"]: fields}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/var/lib/livekit-deploy"),
            state=dict(type="str", choices=["present", "query"], default="query"),
            version=dict(type="str"),
            event=dict(type="str", choices=["deploy", "rollback"], default="deploy"),
            config=dict(type="path"),
            playbook=dict(type="str"),
            by=dict(type="str"),
            audit_lines=dict(type="int", default=20),
            facts_file=dict(type="path", default="/etc/ansible/facts.d/livekit_deployment.fact"),
            slot=dict(type="str", default=""),
            units=dict(type="list", elements="str", default=[]),
            key_file=dict(type="path"),
        ),
        required_if=[("state", "present", ["version"])],
        supports_check_mode=True,
    )
    params = module.params
    record_path, audit_path, config_dir = paths(params["path"])
    before = read_json(record_path)
    record = before
    changed = False

    if params["state"] == "present":
        try:
            changed, before, record = record_deployment(
                params["path"], params["version"], event=params["event"], config=params["config"],
                playbook=params["playbook"], by=params["by"], facts_file=params["facts_file"],
                check_mode=module.check_mode, slot=params["slot"] or None,
                slots_update=slot_update(params) if params["slot"] else None)
        except ValueError as err:
            module.fail_json(msg=str(err))

    facts = dict(record=record, audit=read_audit(audit_path, params["audit_lines"]),
                 versions_with_config=snapshots(config_dir))
    unit_states = {}
    if params["units"]:
        rc, out, err = module.run_command(["systemctl", "show", "--property=Id,ActiveState"] + params["units"])
        if rc != 0:
            module.fail_json(msg="systemctl show failed: %s" % (err or out).strip()[:300])
        # One block per unit, in the order asked, separated by blank lines.
        blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                  for block in out.strip().split("\n\n")]
        unit_states = dict((name, block.get("ActiveState", "inactive")) for name, block in zip(params["units"], blocks))
    result = dict(changed=changed, unit_states=unit_states, ansible_facts=dict(livekit_deployment=facts), **facts)
    if module._diff and changed:
        result["diff"] = dict(before=json.dumps(before, indent=2, sort_keys=True) + "\n",
                              after=json.dumps(record, indent=2, sort_keys=True) + "\n",
                              before_header=record_path, after_header=record_path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
