#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_restore
short_description: Fetch, verify and put in place a LiveKit backup, reversibly
version_added: 0.3.0
description:
  - V(fetched) downloads a backup made by M(selfhosted.livekit.livekit_backup) into O(work_dir),
    checks its size and SHA-256 against the manifest, decrypts it with the age O(identity) and checks
    every member against the archive's own checksums. Nothing outside O(work_dir) changes, so a
    corrupt archive, a wrong identity or a checksum mismatch stops the restore before the live data
    is touched. In check mode the same checks run in a scratch directory that is removed.
  - V(applied) moves the live copies of the backed-up paths and of Redis's RDB and AOF aside into
    O(aside_dir) and the fetched copies into their place, keeping a journal. The services using them
    must be stopped first (the P(selfhosted.livekit.livekit_backup#role) role's restore tasks do).
  - V(reverted) puts the live copies back from O(aside_dir). V(committed) removes them once the
    restored state is verified.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
extends_documentation_fragment:
  - selfhosted.livekit.livekit_s3
options:
  state:
    description: Which step to take.
    type: str
    choices: [fetched, applied, reverted, committed]
    default: fetched
  host:
    description: Whose backup to fetch (the name it was filed under; may differ from the host restored to).
    type: str
  backup:
    description: The backup id to fetch, or V(latest).
    type: str
    default: latest
  identity:
    description:
      - The age identity (private key text, C(AGE-SECRET-KEY-1...)) to decrypt with. Written to a
        0600 file inside O(work_dir) only while age runs. Never logged.
    type: str
  work_dir:
    description: Where the backup is downloaded and unpacked (mode 0700).
    type: path
    default: /var/lib/livekit-restore
  aside_dir:
    description: Where V(applied) keeps the live copies until V(committed) or V(reverted).
    type: path
    default: /var/lib/livekit-restore/aside
  redis_dir:
    description: Redis's data directory on this host; empty on hosts without Redis.
    type: path
  redis_owner:
    description: User owning Redis's data files.
    type: str
    default: redis
  bucket:
    description: The bucket the backups live in. Needed for O(state=fetched).
    type: str
    required: false
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: O(state=fetched) verifies in a scratch directory; the other states only report.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
seealso:
  - module: selfhosted.livekit.livekit_backup
  - module: selfhosted.livekit.livekit_backup_info
"""

EXAMPLES = r"""
- name: Fetch and verify the latest backup of node-1
  selfhosted.livekit.livekit_restore:
    state: fetched
    host: node-1
    identity: "{{ vault_backup_age_identity }}"
    bucket: livekit-backups
    endpoint_url: https://fsn1.your-objectstorage.com
    access_key: "{{ vault_backup_access_key }}"
    secret_key: "{{ vault_backup_secret_key }}"
  no_log: true
  register: fetched

- name: Put it in place (services stopped)
  selfhosted.livekit.livekit_restore:
    state: applied
    redis_dir: /var/lib/redis
"""

RETURN = r"""
manifest:
  description: The manifest of the fetched backup.
  returned: state=fetched
  type: dict
unpacked:
  description: Directory holding the verified, decrypted backup.
  returned: state=fetched and not check mode
  type: str
members:
  description: How many files the archive held, each checked against its SHA-256.
  returned: state=fetched
  type: int
targets:
  description: The paths replaced (applied) or put back (reverted).
  returned: state=applied or state=reverted
  type: list
  elements: str
"""

import json
import os
import pwd
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.selfhosted.livekit.plugins.module_utils import livekit_backup as lb


def fetch(module, params):
    if not lb.HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3 (Debian: python3-boto3)"))
    for name in ("host", "identity", "bucket"):
        if not params[name]:
            module.fail_json(msg="%s is required to fetch a backup" % name)
    age = module.get_bin_path("age", required=True)
    store = lb.Store(lb.s3_client(**lb.s3_settings(params)), params["bucket"], params["prefix"], params["host"])
    work = params["work_dir"]
    dest = tempfile.mkdtemp(prefix="check-") if module.check_mode else os.path.join(work, "fetched")
    ok = False
    try:
        if not module.check_mode:
            os.makedirs(work, 0o700, exist_ok=True)
            os.chmod(work, 0o700)
            if os.path.exists(os.path.join(work, "fetched.json")):
                os.unlink(os.path.join(work, "fetched.json"))
            if os.path.isdir(dest):
                shutil.rmtree(dest)
        manifest = lb.find_backup(store, params["backup"])
        got = lb.fetch_backup(store, manifest, params["identity"], dest, age)
        with open(os.path.join(work if not module.check_mode else dest, "fetched.json"), "w") as handle:
            json.dump(dict(manifest=manifest, unpacked=got["unpacked"]), handle)
        ok = True
    except (lb.BackupError, OSError) as err:
        module.fail_json(msg="%s; nothing outside %s was changed" % (err, work))
    except (lb.BotoCoreError, lb.ClientError) as err:
        module.fail_json(msg="cannot read the backup from s3://%s/%s: %s; nothing was changed"
                         % (params["bucket"], store.base, lb.describe_s3_error(err)))
    finally:
        # A refused archive may have been partly decrypted: leave none of it behind.
        if module.check_mode or not ok:
            shutil.rmtree(dest, ignore_errors=True)
    module.exit_json(changed=not module.check_mode, manifest=manifest, members=len(got["inner"]["members"]),
                     unpacked=None if module.check_mode else got["unpacked"])


def apply(module, params):
    state_file = os.path.join(params["work_dir"], "fetched.json")
    fetched = lb.read_json(state_file)
    if not fetched:
        module.fail_json(msg="no fetched backup in %s: run state=fetched first" % params["work_dir"])
    inner_path = os.path.join(fetched["unpacked"], lb.INNER_MANIFEST)
    inner = lb.read_json(inner_path)
    plan = lb.restore_plan(fetched["unpacked"], inner, params["redis_dir"])
    if module.check_mode:
        module.exit_json(changed=True, targets=[step[1] for step in plan])
    owner = {}
    if params["redis_dir"]:
        try:
            user = pwd.getpwnam(params["redis_owner"])
        except KeyError:
            module.fail_json(msg="redis_owner %s does not exist on this host" % params["redis_owner"])
        for target in (step[1] for step in plan):
            if target.startswith(params["redis_dir"].rstrip("/") + "/"):
                owner[target] = (user.pw_uid, user.pw_gid)
    try:
        targets = lb.apply_restore(plan, params["aside_dir"], owner)
    except (lb.BackupError, OSError) as err:
        try:
            lb.revert_restore(params["aside_dir"])
        except OSError as again:
            module.fail_json(msg="restore failed (%s) and so did putting the live data back (%s); the live "
                                 "copies are in %s" % (err, again, params["aside_dir"]))
        module.fail_json(msg="restore failed (%s); the live data was put back" % err)
    module.exit_json(changed=True, targets=targets, manifest=fetched["manifest"])


def main():
    argument_spec = lb.s3_argument_spec()
    argument_spec.update(
        state=dict(type="str", choices=["fetched", "applied", "reverted", "committed"], default="fetched"),
        host=dict(type="str"),
        backup=dict(type="str", default="latest"),
        identity=dict(type="str", no_log=True),
        work_dir=dict(type="path", default="/var/lib/livekit-restore"),
        aside_dir=dict(type="path", default="/var/lib/livekit-restore/aside"),
        redis_dir=dict(type="path"),
        redis_owner=dict(type="str", default="redis"),
    )
    argument_spec["bucket"]["required"] = False
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    state = params["state"]
    if state == "fetched":
        fetch(module, params)
    elif state == "applied":
        apply(module, params)
    else:
        # reverted / committed: only a restore that was applied and not yet settled has work to do.
        pending = os.path.exists(os.path.join(params["aside_dir"], lb.JOURNAL))
        fetched = [os.path.join(params["work_dir"], name) for name in ("fetched", "fetched.json")]
        leftovers = any(os.path.exists(path) for path in fetched)
        targets = []
        if pending and not module.check_mode:
            if state == "reverted":
                targets = lb.revert_restore(params["aside_dir"])
            else:
                lb.commit_restore(params["aside_dir"])
        if leftovers and not module.check_mode:
            # What is left of the decrypted backup (it holds keys): not needed either way.
            shutil.rmtree(fetched[0], ignore_errors=True)
            if os.path.exists(fetched[1]):
                os.unlink(fetched[1])
        module.exit_json(changed=pending or leftovers, targets=targets)


if __name__ == "__main__":
    main()
