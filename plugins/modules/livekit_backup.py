#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_backup
short_description: Back up a LiveKit host to S3-compatible storage, encrypted and verified
version_added: 0.3.0
description:
  - Takes a fresh Redis snapshot (BGSAVE, waiting for that save to finish) and copies the RDB and
    the AOF directory, then packs them with O(paths) (livekit config, key file, TLS material,
    deployment record) into one tar.gz, encrypted with age for O(recipients). Only the recipients'
    private keys can read it; none needs to be on the host.
  - Uploads the archive with per-part MD5 and SHA-256 checks (multipart above O(part_size)), checks
    the stored object's size and ETag, writes a manifest (sha256, sizes, host, versions, time) and
    reads it back, and only then moves the C(latest) pointer. A run that fails or is killed leaves no
    manifest, and C(latest) keeps pointing to the previous good backup.
  - Prunes old backups by O(keep_last), O(keep_daily) and O(keep_monthly), never the newest good
    one, and aborts multipart uploads that killed runs left behind.
  - Signs the manifest (which holds the archive's SHA-256) with this host's Ed25519 O(signing_key)
    (C(ssh-keygen -Y sign), namespace C(selfhosted.livekit-backup)); restores refuse a backup whose
    signature does not verify with the host's public key.
  - One run at a time per host (a lock file); records the last success for monitoring. While a
    restore is in progress (O(restore_marker)) no backup is taken.
  - The host's C(livekit-backup.timer) (role P(selfhosted.livekit.livekit_backup#role)) runs the
    same code.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
extends_documentation_fragment:
  - selfhosted.livekit.livekit_s3
options:
  host:
    description: Name the backups are filed under (C(<prefix>/<host>/)); usually C(inventory_hostname).
    type: str
    required: true
  recipients:
    description:
      - age recipients (public keys, C(age1...)) the archive is encrypted for. Give two (an online and
        an offline key) so losing one key does not lose the backups.
    type: list
    elements: str
    required: true
  paths:
    description: Files and directories to include (missing ones are skipped).
    type: list
    elements: path
    default: [/etc/livekit, /var/lib/livekit-deploy]
  redis:
    description: The Redis to snapshot on this host. Omit on hosts without Redis.
    type: dict
    suboptions:
      host:
        description: Address Redis listens on (used only without O(redis.socket)).
        type: str
        default: 127.0.0.1
      port:
        description: Redis port (used only without O(redis.socket)).
        type: int
        default: 6379
      socket:
        description:
          - Redis's unix socket. When set the backup connects through it instead of O(redis.host) and
            O(redis.port) (a Redis with TLS has no plaintext TCP listener).
          - The redis role always creates C(/run/redis/redis-server.sock).
        type: path
        version_added: 0.4.0
      password:
        description: Password of the default user. Sent inside the connection only.
        type: str
      dir:
        description: Redis's data directory (C(dir) in redis.conf).
        type: path
        default: /var/lib/redis
  signing_key:
    description:
      - Path on the host of this host's OpenSSH Ed25519 private key (unencrypted, readable by root
        only) that signs the manifests. The role installs it from C(livekit_backup_signing_key).
    type: path
    default: /etc/livekit-backup/signing_key
    version_added: 0.5.0
  restore_marker:
    description:
      - The marker M(selfhosted.livekit.livekit_restore) keeps while a restore is in progress; while
        it is there, the run is skipped (like a run that finds the lock taken) and nothing is uploaded.
    type: path
    default: /var/lib/livekit-backup/restore-in-progress.json
    version_added: 0.5.0
  livekit_version:
    description: The livekit-server version to record in the manifest.
    type: str
  sse:
    description: Server-side encryption to ask for, on top of age.
    type: str
    choices: [AES256, "aws:kms"]
  sse_kms_key_id:
    description: KMS key for O(sse=aws:kms).
    type: str
  part_size:
    description:
      - Multipart part size in MiB (at least 5). Archives up to this size go in one request; larger
        ones in parts, four at a time (so about four parts are held in memory).
    type: int
    default: 16
  spool_dir:
    description:
      - Where the encrypted archive is written before upload (mode 0700). An archive whose upload
        failed is kept here.
    type: path
    default: /var/backups/livekit
  keep_local:
    description: Keep the uploaded archive in O(spool_dir) too.
    type: bool
    default: false
  lock_file:
    description: The lock that keeps two runs (say, the timer and a playbook) apart.
    type: path
    default: /run/lock/livekit-backup.lock
  lock_timeout:
    description: Seconds to wait for a running backup to finish before giving up without doing anything.
    type: int
    default: 600
  keep_last:
    description: Always keep this many newest good backups.
    type: int
    default: 3
  keep_daily:
    description: Keep the newest good backup of each of this many most recent days.
    type: int
    default: 30
  keep_monthly:
    description: Keep the newest good backup of each of this many most recent months.
    type: int
    default: 12
  status_file:
    description: JSON file with the last attempt and the last success.
    type: path
    default: /var/lib/livekit-backup/status.json
  textfile:
    description:
      - node-exporter textfile (C(.prom)) to write C(livekit_backup_last_success_timestamp_seconds)
        and friends to. Empty to skip.
    type: path
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Checks that age can encrypt for the recipients and that the bucket is reachable, and uploads nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
notes:
  - Needs C(age) and boto3 on the host; the role P(selfhosted.livekit.livekit_backup#role) installs both.
seealso:
  - module: selfhosted.livekit.livekit_backup_info
  - module: selfhosted.livekit.livekit_restore
"""

EXAMPLES = r"""
- name: Back up this node now
  selfhosted.livekit.livekit_backup:
    host: "{{ inventory_hostname }}"
    recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
    bucket: livekit-backups
    endpoint_url: https://fsn1.your-objectstorage.com
    region: fsn1
    access_key: "{{ vault_backup_access_key }}"
    secret_key: "{{ vault_backup_secret_key }}"
    redis:
      socket: /run/redis/redis-server.sock
      password: "{{ vault_redis_password }}"
  no_log: true
  register: backup
"""

RETURN = r"""
id:
  description: The backup's id (its UTC time).
  returned: success
  type: str
  sample: 20261123T020000Z
manifest_key:
  description: Where the manifest is.
  returned: success
  type: str
  sample: livekit/node-1/20261123T020000Z/manifest.json
archive_key:
  description: Where the encrypted archive is.
  returned: success
  type: str
archive_size:
  description: Bytes of the encrypted archive.
  returned: success
  type: int
archive_sha256:
  description: SHA-256 of the encrypted archive, as recorded in the manifest.
  returned: success
  type: str
parts:
  description: How many parts the upload had.
  returned: success
  type: int
redis:
  description: Redis facts recorded in the manifest (version, key count, snapshot time, RDB and AOF names).
  returned: success
  type: dict
pruned:
  description: Ids of the old backups removed by retention.
  returned: success
  type: list
  elements: str
duration:
  description: Seconds the whole run took.
  returned: success
  type: float
upload_seconds:
  description: Seconds the upload of the archive took.
  returned: success
  type: float
archive:
  description: Path of the local copy of the archive (kept when the upload fails, or with O(keep_local)).
  returned: always
  type: str
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.selfhosted.livekit.plugins.module_utils import livekit_backup as lb


def module_config(params):
    """The shared backup configuration (what the host's timer reads from its config file)."""
    redis = params["redis"]
    return dict(
        host=params["host"], paths=params["paths"], recipients=params["recipients"],
        redis=dict(redis) if redis else None, livekit_version=params["livekit_version"],
        bucket=params["bucket"], prefix=params["prefix"], s3=lb.s3_settings(params),
        sse=params["sse"], sse_kms_key_id=params["sse_kms_key_id"],
        part_size=params["part_size"] * 1024 * 1024, spool_dir=params["spool_dir"],
        keep_local=params["keep_local"], lock_file=params["lock_file"], lock_timeout=params["lock_timeout"],
        keep_last=params["keep_last"], keep_daily=params["keep_daily"], keep_monthly=params["keep_monthly"],
        signing_key=params["signing_key"], restore_marker=params["restore_marker"],
    )


def check_config(module, cfg):
    """What check mode can prove without writing anything: age takes the recipients, the
    bucket answers."""
    age = module.get_bin_path("age", required=True)
    scratch = tempfile.mkdtemp(prefix="livekit-backup-check-")
    try:
        lb.build_archive(os.path.join(scratch, "probe.age"), cfg["recipients"], {}, [], {"probe": True}, age)
    except lb.BackupError as err:
        module.fail_json(msg="the age recipients are not usable: %s" % err)
    finally:
        shutil.rmtree(scratch)
    try:
        lb.s3_client(**cfg["s3"]).head_bucket(Bucket=cfg["bucket"])
    except (lb.BotoCoreError, lb.ClientError) as err:
        module.fail_json(msg="cannot reach bucket %s: %s" % (cfg["bucket"], lb.describe_s3_error(err)))
    if not os.path.isfile(cfg["signing_key"]):
        module.fail_json(msg="there is no signing key at %s: the livekit_backup role installs it from "
                             "livekit_backup_signing_key" % cfg["signing_key"])


def main():
    argument_spec = lb.s3_argument_spec()
    argument_spec.update(
        host=dict(type="str", required=True),
        recipients=dict(type="list", elements="str", required=True),
        paths=dict(type="list", elements="path", default=["/etc/livekit", "/var/lib/livekit-deploy"]),
        redis=dict(type="dict", options=dict(
            host=dict(type="str", default="127.0.0.1"),
            port=dict(type="int", default=6379),
            socket=dict(type="path"),
            password=dict(type="str", no_log=True),
            dir=dict(type="path", default="/var/lib/redis"),
        )),
        signing_key=dict(type="path", default="/etc/livekit-backup/signing_key"),
        restore_marker=dict(type="path", default="/var/lib/livekit-backup/restore-in-progress.json"),
        livekit_version=dict(type="str"),
        sse=dict(type="str", choices=["AES256", "aws:kms"]),
        sse_kms_key_id=dict(type="str"),
        part_size=dict(type="int", default=16),
        spool_dir=dict(type="path", default="/var/backups/livekit"),
        keep_local=dict(type="bool", default=False),
        lock_file=dict(type="path", default="/run/lock/livekit-backup.lock"),
        lock_timeout=dict(type="int", default=600),
        keep_last=dict(type="int", default=3),
        keep_daily=dict(type="int", default=30),
        keep_monthly=dict(type="int", default=12),
        status_file=dict(type="path", default="/var/lib/livekit-backup/status.json"),
        textfile=dict(type="path"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not lb.HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3 (Debian: python3-boto3)"))
    params = module.params
    if params["part_size"] < 5:
        module.fail_json(msg="part_size is %d MiB; S3 needs at least 5 MiB per part" % params["part_size"])
    if not params["recipients"]:
        module.fail_json(msg="recipients is empty: the backup would be unencrypted; give at least one age public key")
    if params["keep_last"] < 1:
        module.fail_json(msg="keep_last must be at least 1: the newest good backup is always kept")
    cfg = module_config(params)
    if module.check_mode:
        check_config(module, cfg)
        module.exit_json(changed=True, msg="a backup would be taken and uploaded")
    cfg["age"] = module.get_bin_path("age", required=True)
    cfg["ssh_keygen"] = module.get_bin_path("ssh-keygen", required=True)
    ok, result = lb.run_and_record(cfg, params["status_file"], params["textfile"])
    if not ok:
        module.fail_json(**result)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
