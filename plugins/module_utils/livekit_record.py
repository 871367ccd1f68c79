# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deployment record of a livekit-server host (``deployment.json``), its configuration snapshots
(``config/VERSION.yaml``) and audit log, written by the livekit_deployment and livekit_swap modules.

The record says which release runs (``version``), which ran before (``previous_version``), when, by
whom, through which playbook. Under the blue_green strategy it also names the live slot
(``live_slot``), the one live before it (``previous_slot``), and per slot in ``slots`` the release,
the configuration's sha256, the API key names (key_names), its state (live, draining, stopped, failed) and since
when.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import atomic_write, read_json
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import append_audit, iso

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
# Fields a record keeps when a deployment is recorded without a slot.
SLOT_FIELDS = ("live_slot", "previous_slot", "slots")


def paths(deploy_dir):
    """(record, audit log, snapshot directory) under ``deploy_dir``."""
    return (os.path.join(deploy_dir, "deployment.json"), os.path.join(deploy_dir, "audit.jsonl"),
            os.path.join(deploy_dir, "config"))


def read_record(deploy_dir):
    return read_json(paths(deploy_dir)[0])


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


def merge_slots(before, update):
    """The record's ``slots`` with ``update`` ({slot: {field: value}}) merged into it."""
    slots = dict((name, dict(fields)) for name, fields in (before or {}).items())
    for name, fields in (update or {}).items():
        slots.setdefault(name, {}).update(fields)
    return slots


def write(deploy_dir, record, facts_file=None):
    record_path = paths(deploy_dir)[0]
    atomic_write(record_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), 0o644)
    if facts_file:
        atomic_write(facts_file, (json.dumps(record, sort_keys=True) + "\n").encode(), 0o644)


def record_deployment(deploy_dir, version, event="deploy", config=None, playbook=None, by=None, facts_file=None,
                      check_mode=False, slot=None, slots_update=None, now=None):
    """Record that ``version`` (with the configuration file ``config``) runs now.

    With ``slot``, that slot is the live one (the one live before becomes ``previous_slot``) and
    ``slots_update`` is merged into ``slots``. Returns (changed, before, record). Raises ValueError
    for a version that is not X.Y.Z or a configuration file that does not exist.
    """
    if not VERSION_RE.match(version or ""):
        raise ValueError("version must look like 1.13.5, not %r" % version)
    record_path, audit_path, config_dir = paths(deploy_dir)
    before = read_json(record_path)
    config_sha = None
    if config:
        if not os.path.isfile(config):
            raise ValueError("config %s does not exist" % config)
        config_sha = sha256(config)
    snapshot = os.path.join(config_dir, version + ".yaml")
    snapshot_stale = config_sha is not None and (not os.path.isfile(snapshot) or sha256(snapshot) != config_sha)
    new_slot = slot is not None and slot != before.get("live_slot")
    slots = merge_slots(before.get("slots"), slots_update)
    if not (before.get("version") != version or event != before.get("event", "deploy") or snapshot_stale
            or new_slot or slots != (before.get("slots") or {})):
        return False, before, before
    record = dict(
        version=version,
        previous_version=before.get("previous_version") if before.get("version") == version else before.get("version"),
        event=event,
        time=iso(now if now is not None else time.time()),
        by=by,
        playbook=playbook,
        config_sha256=config_sha,
    )
    record.update((name, before[name]) for name in SLOT_FIELDS if name in before)
    if slot is not None:
        record["live_slot"] = slot
        if new_slot:
            record["previous_slot"] = before.get("live_slot")
    if slots:
        record["slots"] = slots
    if not check_mode:
        if snapshot_stale:
            with open(config, "rb") as handle:
                atomic_write(snapshot, handle.read(), 0o600)
        write(deploy_dir, record, facts_file)
        audit = dict((k, v) for k, v in record.items() if k not in ("time", "config_sha256", "slots"))
        append_audit(audit_path, audit.pop("event"), **audit)
    return True, before, record
