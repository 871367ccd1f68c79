# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic file writes for the collection's modules: a reader sees the old file or the new one,
whole, never a half-written one; the mode and owner are set before the file gets its name. And the
audit log the modules and the host's timers append to.

Standard library only: the roles also install this file on hosts for their timers."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import tempfile
import time


def atomic_write(path, data, mode, uid=-1, gid=-1):
    """Write ``data`` (bytes) to ``path`` through a temporary file in the same directory."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o750)
    fd, tmp = tempfile.mkstemp(prefix=".%s-" % os.path.basename(path), dir=directory)
    try:
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path):
    """The JSON document in ``path``, or {} when it is missing or unreadable."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# The audit log keeps at most AUDIT_MAX_BYTES in audit.jsonl plus one rotated file, audit.jsonl.1:
# a line that would take audit.jsonl past the cap first renames it to audit.jsonl.1 (replacing the
# previous one), so the log never holds more than about twice the cap, and the newest events are
# always in audit.jsonl.
AUDIT_MAX_BYTES = 1024 * 1024


def append_audit(path, event, max_bytes=AUDIT_MAX_BYTES, **fields):
    """Append one JSON line to the audit log (created 0640 root), rotating it at ``max_bytes``
    (one rotated file, ``<path>.1``). Writers hold an exclusive lock on the file while they check
    its size, rotate and write, so two writers never rotate the same file twice. Each line is
    written as it happens (a drain's events appear while the drain is still under way). Never
    pass secrets here."""
    if not path:
        return
    record = {"time": iso(time.time()), "host": socket.gethostname(), "event": event}
    record.update(fields)  # an event's own time, when it carries one, wins
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, 0o750)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is None or current.st_ino != os.fstat(fd).st_ino:
                continue  # another writer rotated it while we waited for the lock: open the new one
            size = os.fstat(fd).st_size
            if size > 0 and size + len(line) > max_bytes:
                os.rename(path, path + ".1")
                continue  # write to a fresh file
            os.write(fd, line)
            return
        finally:
            os.close(fd)
