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

import hashlib
import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import atomic_write, read_json
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import append_audit, iso

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")


def read_audit(path, lines):
    try:
        with open(path) as handle:
            tail = handle.read().splitlines()[-lines:] if lines > 0 else []
    except OSError:
        return []
    events = []
    for line in tail:
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"unparsable": line[:200]})
    return events


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(65536), b""):
            digest.update(chunk)
    return digest.hexdigest()


def snapshots(config_dir):
    try:
        names = os.listdir(config_dir)
    except OSError:
        return []
    return sorted(name[:-5] for name in names if name.endswith(".yaml"))


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
        ),
        required_if=[("state", "present", ["version"])],
        supports_check_mode=True,
    )
    params = module.params
    record_path = os.path.join(params["path"], "deployment.json")
    audit_path = os.path.join(params["path"], "audit.jsonl")
    config_dir = os.path.join(params["path"], "config")
    before = read_json(record_path)
    record = dict(before)
    changed = False

    if params["state"] == "present":
        version = params["version"]
        if not VERSION_RE.match(version):
            module.fail_json(msg="version must look like 1.13.5, not %r" % version)
        config_sha = None
        if params["config"]:
            if not os.path.isfile(params["config"]):
                module.fail_json(msg="config %s does not exist" % params["config"])
            config_sha = sha256(params["config"])
        snapshot = os.path.join(config_dir, version + ".yaml")
        snapshot_stale = config_sha is not None and (
            not os.path.isfile(snapshot) or sha256(snapshot) != config_sha)
        if before.get("version") != version or params["event"] != before.get("event", "deploy") or snapshot_stale:
            changed = True
            record = dict(
                version=version,
                previous_version=before.get("previous_version") if before.get("version") == version
                else before.get("version"),
                event=params["event"],
                time=iso(time.time()),
                by=params["by"],
                playbook=params["playbook"],
                config_sha256=config_sha,
            )
            if not module.check_mode:
                if snapshot_stale:
                    with open(params["config"], "rb") as handle:
                        atomic_write(snapshot, handle.read(), 0o600)
                atomic_write(record_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), 0o644)
                if params["facts_file"]:
                    atomic_write(params["facts_file"], (json.dumps(record, sort_keys=True) + "\n").encode(), 0o644)
                audit = dict((k, v) for k, v in record.items() if k not in ("time", "config_sha256"))
                append_audit(audit_path, audit.pop("event"), **audit)

    facts = dict(record=record, audit=read_audit(audit_path, params["audit_lines"]),
                 versions_with_config=snapshots(config_dir))
    result = dict(changed=changed, ansible_facts=dict(livekit_deployment=facts), **facts)
    if module._diff and changed:
        result["diff"] = dict(before=json.dumps(before, indent=2, sort_keys=True) + "\n",
                              after=json.dumps(record, indent=2, sort_keys=True) + "\n",
                              before_header=record_path, after_header=record_path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
