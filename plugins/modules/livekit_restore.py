#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_restore
short_description: Fetch, verify and put in place a LiveKit backup, reversibly
version_added: 0.3.0
description:
  - V(fetched) first checks the signature of the backup's manifest with O(public_key), the public
    key of the host that made it (from the inventory), before it downloads or decrypts anything. A
    backup that is unsigned, signed by another key, or whose manifest was changed is refused, and
    nothing changes. It then downloads the archive into O(work_dir), checks its size and SHA-256
    against the signed manifest, decrypts it with the age O(identity) and unpacks it, refusing links,
    devices, setuid/setgid bits, absolute paths and C(..), members outside O(paths) and the Redis
    files, and owners other than O(owners) and O(groups). Nothing outside O(work_dir) changes (but
    the restore-in-progress O(marker)). In check mode the same checks run in a scratch directory
    that is removed.
  - V(fetched) marks a restore as in progress (O(marker), under the backup lock O(lock_file)) until
    V(committed) or V(reverted). The host's backup timer skips while it is there, and another
    V(fetched) is refused.
  - V(applied) swaps the fetched copies of O(paths) and of Redis's files in O(redis_dir) into place.
    Each step is a rename inside the target's own directory (the restored copy is staged, and the
    live copy kept, as hidden siblings of the target), the directory fsynced, and a journal in
    O(aside_dir) records every target first, so V(reverted) puts the live data back exactly, even
    after a crash or kill at any point. The targets come from O(paths) and O(redis_dir), never from
    the archive. The services using them must be stopped first (the
    P(selfhosted.livekit.livekit_backup#role) role's restore tasks do).
  - V(reverted) puts the live copies back. V(committed) removes them once the restored state is
    verified. Both end the restore (remove O(marker)) and the fetched files.
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
  public_key:
    description:
      - The OpenSSH Ed25519 public key (C(ssh-ed25519 AAAA...)) of the host that made the backup. Its
        manifests must carry a valid signature by this key. Needed for O(state=fetched).
    type: str
    version_added: 0.5.0
  identity:
    description:
      - The age identity (private key text, C(AGE-SECRET-KEY-1...)) to decrypt with. It reaches age
        through a pipe only, never a file or a process argument. Never logged.
      - Ansible must run the module with pipelining, or it writes the module's arguments to a
        temporary file on the host (the role's restore tasks refuse to run without it).
    type: str
  paths:
    description:
      - The files and directories a restore may write and replaces (this host's backup paths, from
        the inventory). Archive members outside them, other than Redis's files, are refused.
    type: list
    elements: path
    default: []
    version_added: 0.5.0
  owners:
    description: The users the restored files may belong to (by name); other owners are refused.
    type: list
    elements: str
    default: [root]
    version_added: 0.5.0
  groups:
    description: The groups the restored files may belong to (by name); other groups are refused.
    type: list
    elements: str
    default: [root]
    version_added: 0.5.0
  work_dir:
    description: Where the backup is downloaded and unpacked (mode 0700).
    type: path
    default: /var/lib/livekit-restore
  aside_dir:
    description:
      - Where V(applied) keeps the journal of the swap until V(committed) or V(reverted). The live
        copies themselves are kept next to their targets (same filesystem).
    type: path
    default: /var/lib/livekit-restore/aside
  redis_dir:
    description: Redis's data directory on this host; empty on hosts without Redis.
    type: path
  redis_files:
    description: Redis's RDB file and AOF directory names in O(redis_dir) that a restore replaces.
    type: list
    elements: str
    default: [dump.rdb, appendonlydir]
    version_added: 0.5.0
  redis_owner:
    description: User owning Redis's data files.
    type: str
    default: redis
  marker:
    description: The restore-in-progress marker, which the host's backups also look for.
    type: path
    default: /var/lib/livekit-backup/restore-in-progress.json
    version_added: 0.5.0
  lock_file:
    description: The backup lock; each step holds it, so a backup never runs in the middle of one.
    type: path
    default: /run/lock/livekit-backup.lock
    version_added: 0.5.0
  lock_timeout:
    description: Seconds to wait for a running backup to finish.
    type: int
    default: 600
    version_added: 0.5.0
  step_delay:
    description:
      - Seconds to wait after each rename of O(state=applied). For fault-injection drills that kill
        the restore halfway; leave at 0.
    type: float
    default: 0
    version_added: 0.5.0
  keep_live:
    description:
      - Files inside the restored paths whose live version replaces the backup's in O(state=applied),
        because this host's inventory made them for this host (C(livekit.yaml) names the host's own
        addresses; a backup restored on a rebuilt host names the old host's). Missing files are skipped.
    type: list
    elements: path
    default: []
    version_added: 0.5.0
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
    public_key: "{{ hostvars['node-1'].livekit_backup_signing_public_key }}"
    identity: "{{ vault_backup_age_identity }}"
    paths: [/etc/livekit, /var/lib/livekit-deploy]
    owners: [root, livekit]
    groups: [root, livekit]
    bucket: livekit-backups
    endpoint_url: https://fsn1.your-objectstorage.com
    access_key: "{{ vault_backup_access_key }}"
    secret_key: "{{ vault_backup_secret_key }}"
  no_log: true
  register: fetched

- name: Put it in place (services stopped)
  selfhosted.livekit.livekit_restore:
    state: applied
    paths: [/etc/livekit, /var/lib/livekit-deploy]
    redis_dir: /var/lib/redis
"""

RETURN = r"""
manifest:
  description: The signed manifest of the fetched backup.
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


def policy(params):
    return lb.ExtractPolicy(params["paths"], redis=bool(params["redis_dir"]), redis_names=params["redis_files"],
                            owners=params["owners"], groups=params["groups"])


def fetch(module, params):
    if not lb.HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3 (Debian: python3-boto3)"))
    for name in ("host", "identity", "bucket", "public_key"):
        if not params[name]:
            module.fail_json(msg="%s is required to fetch a backup" % name)
    age = module.get_bin_path("age", required=True)
    ssh_keygen = module.get_bin_path("ssh-keygen", required=True)
    store = lb.Store(lb.s3_client(**lb.s3_settings(params)), params["bucket"], params["prefix"], params["host"])
    work = params["work_dir"]
    dest = tempfile.mkdtemp(prefix="check-") if module.check_mode else os.path.join(work, "fetched")
    ok = False
    began = False
    try:
        if not module.check_mode:
            lb.begin_restore(params["marker"], params["lock_file"], params["lock_timeout"],
                             dict(source=params["host"], backup=params["backup"]))
            began = True
            os.makedirs(work, 0o700, exist_ok=True)
            os.chmod(work, 0o700)
            if os.path.exists(os.path.join(work, "fetched.json")):
                os.unlink(os.path.join(work, "fetched.json"))
            if os.path.isdir(dest):
                shutil.rmtree(dest)
        # The signature first: nothing is downloaded or decrypted for a backup this host did not make.
        manifest = lb.find_backup(store, params["backup"], params["public_key"], ssh_keygen, warn=module.warn)
        got = lb.fetch_backup(store, manifest, params["identity"], dest, age, policy(params))
        with open(os.path.join(work if not module.check_mode else dest, "fetched.json"), "w") as handle:
            json.dump(dict(manifest=manifest, unpacked=got["unpacked"]), handle)
        ok = True
    except lb.Busy as err:
        module.fail_json(msg=str(err))
    except (lb.BackupError, OSError) as err:
        module.fail_json(msg="%s; nothing outside %s was changed" % (err, work))
    except (lb.BotoCoreError, lb.ClientError) as err:
        module.fail_json(msg="cannot read the backup from s3://%s/%s: %s; nothing was changed"
                         % (params["bucket"], store.base, lb.describe_s3_error(err)))
    finally:
        # A refused archive may have been partly decrypted: leave none of it behind.
        if module.check_mode or not ok:
            shutil.rmtree(dest, ignore_errors=True)
        if began and not ok:
            lb.end_restore(params["marker"])
    module.exit_json(changed=not module.check_mode, manifest=manifest, members=len(got["inner"]["members"]),
                     unpacked=None if module.check_mode else got["unpacked"])


def apply(module, params):
    state_file = os.path.join(params["work_dir"], "fetched.json")
    fetched = lb.read_json(state_file)
    if not fetched:
        module.fail_json(msg="no fetched backup in %s: run state=fetched first" % params["work_dir"])
    plan = lb.restore_plan(fetched["unpacked"], params["paths"], params["redis_dir"], params["redis_files"])
    if module.check_mode:
        module.exit_json(changed=True, targets=[step[1] for step in plan])
    if lb.read_journal(params["aside_dir"]) is not None:
        module.fail_json(msg="%s holds an earlier restore that was neither committed nor reverted; nothing was "
                             "changed: revert it first (restore.yml -e livekit_backup_restore_recover=true)"
                             % os.path.join(params["aside_dir"], lb.JOURNAL))
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
        with lb.Lock(params["lock_file"], params["lock_timeout"]):
            try:
                targets = lb.apply_restore(plan, params["aside_dir"], owner, params["step_delay"], keep_live=params["keep_live"])
            except (lb.BackupError, OSError) as err:
                try:
                    lb.revert_restore(params["aside_dir"])
                except (lb.BackupError, OSError) as again:
                    module.fail_json(msg="restore failed (%s) and so did putting the live data back (%s); the journal "
                                         "is in %s" % (err, again, params["aside_dir"]))
                module.fail_json(msg="restore failed (%s); the live data was put back" % err)
    except lb.Busy as err:
        module.fail_json(msg="%s; nothing was changed" % err)
    module.exit_json(changed=True, targets=targets, manifest=fetched["manifest"])


def settle(module, params):
    """reverted / committed: only a restore that was fetched or applied and not yet settled has work to do."""
    state = params["state"]
    pending = lb.read_journal(params["aside_dir"]) is not None
    fetched = [os.path.join(params["work_dir"], name) for name in ("fetched", "fetched.json")]
    leftovers = any(os.path.exists(path) for path in fetched)
    marked = lb.restore_marker(params["marker"]) is not None
    targets = []
    if module.check_mode:
        module.exit_json(changed=pending or leftovers or marked, targets=targets)
    try:
        with lb.Lock(params["lock_file"], params["lock_timeout"]):
            if pending:
                if state == "reverted":
                    targets = lb.revert_restore(params["aside_dir"])
                else:
                    lb.commit_restore(params["aside_dir"])
            # What is left of the decrypted backup (it holds keys): not needed either way.
            shutil.rmtree(fetched[0], ignore_errors=True)
            if os.path.exists(fetched[1]):
                os.unlink(fetched[1])
            lb.end_restore(params["marker"])
    except (lb.BackupError, OSError) as err:
        module.fail_json(msg="could not settle the restore (state=%s): %s" % (state, err))
    module.exit_json(changed=pending or leftovers or marked, targets=targets)


def main():
    argument_spec = lb.s3_argument_spec()
    argument_spec.update(
        state=dict(type="str", choices=["fetched", "applied", "reverted", "committed"], default="fetched"),
        host=dict(type="str"),
        backup=dict(type="str", default="latest"),
        public_key=dict(type="str"),
        identity=dict(type="str", no_log=True),
        paths=dict(type="list", elements="path", default=[]),
        owners=dict(type="list", elements="str", default=["root"]),
        groups=dict(type="list", elements="str", default=["root"]),
        work_dir=dict(type="path", default="/var/lib/livekit-restore"),
        aside_dir=dict(type="path", default="/var/lib/livekit-restore/aside"),
        redis_dir=dict(type="path"),
        redis_files=dict(type="list", elements="str", default=["dump.rdb", "appendonlydir"]),
        redis_owner=dict(type="str", default="redis"),
        marker=dict(type="path", default="/var/lib/livekit-backup/restore-in-progress.json"),
        lock_file=dict(type="path", default="/run/lock/livekit-backup.lock"),
        lock_timeout=dict(type="int", default=600),
        step_delay=dict(type="float", default=0),
        keep_live=dict(type="list", elements="path", default=[]),
    )
    argument_spec["bucket"]["required"] = False
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    bad = [name for name in params["redis_files"] if not name or "/" in name or name in (".", "..")]
    if bad:
        module.fail_json(msg="redis_files must be plain names in redis_dir, got %s" % ", ".join(bad))
    state = params["state"]
    if state == "fetched":
        fetch(module, params)
    elif state == "applied":
        apply(module, params)
    else:
        settle(module, params)


if __name__ == "__main__":
    main()
