#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_backup_info
short_description: List a host's backups in S3-compatible storage and read their manifests
version_added: 0.3.0
description:
  - Lists the backups of O(host) made by M(selfhosted.livekit.livekit_backup), newest first, says
    which are complete (have a manifest) and which one C(latest) points to, and returns the manifest
    of O(backup) once its signature verifies with O(public_key). Reads only; never downloads an
    archive.
  - A manifest whose signature does not verify (unsigned, signed by another key, changed) fails the
    module with the backup named and the reason; its contents are not returned.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
extends_documentation_fragment:
  - selfhosted.livekit.livekit_s3
options:
  host:
    description: Whose backups (the name they were filed under).
    type: str
    required: true
  public_key:
    description:
      - The OpenSSH Ed25519 public key (C(ssh-ed25519 AAAA...)) of the host whose backups these are
        (C(livekit_backup_signing_public_key) in its inventory).
    type: str
    required: true
    version_added: 0.5.0
  backup:
    description: Which backup's manifest to return, by id, or V(latest).
    type: str
    default: latest
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Read-only.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
seealso:
  - module: selfhosted.livekit.livekit_backup
  - module: selfhosted.livekit.livekit_restore
"""

EXAMPLES = r"""
- name: How old is the newest backup of node-1?
  selfhosted.livekit.livekit_backup_info:
    host: node-1
    public_key: "{{ hostvars['node-1'].livekit_backup_signing_public_key }}"
    bucket: livekit-backups
    endpoint_url: https://fsn1.your-objectstorage.com
    access_key: "{{ vault_backup_access_key }}"
    secret_key: "{{ vault_backup_secret_key }}"
  register: backups

- name: Show it
  ansible.builtin.debug:
    msg: "{{ backups.manifest.id }}, {{ backups.age_seconds }} s old"
"""

RETURN = r"""
backups:
  description: Every backup id found, newest first, with whether it is complete.
  returned: always
  type: list
  elements: dict
  sample: [{"id": "20261123T020000Z", "complete": true}, {"id": "20261122T020000Z", "complete": false}]
latest:
  description: The C(latest) pointer (id, manifest key and checksum, creation time), or null.
  returned: always
  type: dict
manifest:
  description: The signed manifest of O(backup), or null when there is no such complete backup.
  returned: always
  type: dict
age_seconds:
  description: Seconds since the manifest's backup was taken (the data loss if restored now).
  returned: when a manifest was found
  type: int
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.selfhosted.livekit.plugins.module_utils import livekit_backup as lb


def main():
    argument_spec = lb.s3_argument_spec()
    argument_spec.update(host=dict(type="str", required=True), backup=dict(type="str", default="latest"),
                         public_key=dict(type="str", required=True))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not lb.HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3 (Debian: python3-boto3)"))
    params = module.params
    try:
        store = lb.Store(lb.s3_client(**lb.s3_settings(params)), params["bucket"], params["prefix"], params["host"])
        ids, good = store.backup_ids()
        latest = store.get_json(store.key(lb.LATEST_NAME))
        ssh_keygen = module.get_bin_path("ssh-keygen", required=True)
        manifest = None
        if good or latest:
            try:
                manifest = lb.find_backup(store, params["backup"], params["public_key"], ssh_keygen, warn=module.warn)
            except lb.BackupError as err:
                if "has no manifest" not in str(err) and "no backup of" not in str(err):
                    module.fail_json(msg=str(err), backups=[dict(id=i, complete=i in good) for i in ids], latest=latest)
    except (lb.BotoCoreError, lb.ClientError) as err:
        module.fail_json(msg="cannot read s3://%s/%s: %s" % (params["bucket"], params["prefix"], lb.describe_s3_error(err)))
    result = dict(changed=False, latest=latest, manifest=manifest,
                  backups=[dict(id=backup_id, complete=backup_id in good) for backup_id in ids])
    if manifest:
        result["age_seconds"] = int(time.time() - manifest["created_ts"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
