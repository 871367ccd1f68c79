# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The idle-room reaper: close rooms in which nobody has published anything for longer than a
threshold (a recorder, an agent or a forgotten tab left alone), through the server API.

One implementation, two entry points: the selfhosted.livekit.livekit_room_reaper module imports it,
and the livekit_server role installs this file (with livekit_api.py and livekit_files.py next to it)
on the host for the ``livekit-room-reaper`` timer. So it imports only the standard library and
those two files, never Ansible.

When a room counts as idle (all from what ListRooms and ListParticipants return):

- a room with a participant that has a published track (muted or not) is active, and the reaper
  remembers that it saw it active at this time (the state file, keyed by the room's sid);
- a room with no participant at all is left to livekit-server's own ``empty_timeout``;
- otherwise the room has been idle since the latest of: its creation, the newest participant's
  join, and the last time a run saw a published track in it. Idle for at least the threshold,
  it is closed (DeleteRoom: every participant is disconnected and the room ends).

Rooms whose name matches an allow-list pattern (Python regular expressions, ``re.search``: a
pattern matches anywhere in the name unless anchored) are never touched, not even listed further.
Before a room is closed its participants are listed again, so someone who started publishing or
joined since the first look keeps the room.
"""

from __future__ import annotations

import json
import re
import time

try:
    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import LiveKitAPIError
    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import (
        append_audit,
        atomic_write,
        iso,
        read_json,
    )
except ImportError:  # on the host, for the timer: installed next to livekit_api.py and livekit_files.py
    from livekit_api import LiveKitAPIError  # pylint: disable=import-error
    from livekit_files import append_audit, atomic_write, iso, read_json  # pylint: disable=import-error

# The thresholds the role and the module accept: a minute (tests, aggressive clean-up) to a week.
THRESHOLD_MIN = 60
THRESHOLD_MAX = 7 * 86400
STATE_VERSION = 1
# At most this many participant identities go into an audit line or a result.
MAX_IDENTITIES = 20

EVENT_CLOSED = "room_reaped"
EVENT_WOULD_CLOSE = "room_reap_dry_run"


class ReaperError(Exception):
    """The reaper could not run (bad settings, the server API refused or did not answer)."""


def compile_patterns(patterns):
    """Compiled allow-list patterns; ValueError naming the first pattern that is not a regular expression."""
    if patterns is None:
        return []
    if isinstance(patterns, (str, bytes)) or not isinstance(patterns, (list, tuple)):
        raise ValueError("the allow-list must be a list of regular expressions, not %r" % (patterns,))
    compiled = []
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("allow-list entry %d (%r) is not a non-empty string" % (index, pattern))
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError("allow-list entry %d (%r) is not a regular expression: %s" % (index, pattern, err)) from None
    return compiled


def check_threshold(threshold):
    """ValueError unless ``threshold`` is a whole number of seconds within the accepted range."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not THRESHOLD_MIN <= threshold <= THRESHOLD_MAX:
        raise ValueError("the threshold must be %d to %d seconds, not %r" % (THRESHOLD_MIN, THRESHOLD_MAX, threshold))


def seconds(value):
    """An int64 time field of the server API (protojson sends int64 as a string; absent means 0)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def publishes(participant):
    """True when the participant has at least one published track (muted tracks count)."""
    return bool(participant.get("tracks"))


def identities(participants):
    return sorted(str(p.get("identity", "")) for p in participants)[:MAX_IDENTITIES]


def judge(room, participants, last_active, now, threshold):
    """(action, reason, idle_since) for one room not on the allow-list.

    ``action`` is ``close`` or ``keep``; ``last_active`` is when a run last saw a track in it (0: never).
    """
    if any(publishes(p) for p in participants):
        return "keep", "publishing", now
    if not participants:
        return "keep", "empty", None
    idle_since = max([seconds(room.get("creation_time")), last_active]
                     + [seconds(p.get("joined_at")) for p in participants])
    if now - idle_since >= threshold:
        return "close", "idle", idle_since
    return "keep", "idle_below_threshold", idle_since


class Reaper:
    """One pass over the rooms a LiveKit server (or cluster) hosts."""

    def __init__(self, client, threshold, allow=(), dry_run=True, state_file=None, audit_log=None,
                 source="module", clock=time.time, log=None):
        check_threshold(threshold)
        self.client = client
        self.threshold = threshold
        self.allow = compile_patterns(list(allow))
        self.dry_run = dry_run
        self.state_file = state_file
        self.audit_log = audit_log
        self.source = source
        self.clock = clock
        self.log = log or (lambda line: None)

    def load_state(self):
        state = read_json(self.state_file) if self.state_file else {}
        rooms = state.get("rooms") if isinstance(state, dict) and state.get("version") == STATE_VERSION else None
        return rooms if isinstance(rooms, dict) else {}

    def save_state(self, rooms):
        data = json.dumps({"version": STATE_VERSION, "rooms": rooms}, sort_keys=True, indent=1).encode() + b"\n"
        atomic_write(self.state_file, data, 0o600)

    def allowed(self, name):
        return next((p.pattern for p in self.allow if p.search(name)), None)

    def run(self, write_state=True):
        """Returns a result dict: ``closed`` (or ``would_close`` in a dry run), ``kept``, ``errors``,
        ``rooms``, ``state_changed``. Raises ReaperError when the rooms cannot be listed."""
        now = int(self.clock())
        try:
            rooms = self.client.list_rooms()
        except Exception as err:  # LiveKitError or anything the transport raised; never a secret in it
            raise ReaperError("could not list the rooms: %s" % err) from None
        previous = self.load_state()
        state = {}
        result = dict(dry_run=self.dry_run, threshold=self.threshold, rooms=len(rooms), closed=[], would_close=[],
                      kept=[], errors=[], checked_at=iso(now))
        for room in sorted(rooms, key=lambda r: str(r.get("name", ""))):
            name, sid = str(room.get("name", "")), str(room.get("sid", ""))
            key = sid or name
            entry = dict(room=name, sid=sid)
            pattern = self.allowed(name)
            if pattern is not None:
                result["kept"].append(dict(entry, reason="allow_listed", pattern=pattern))
                continue
            last_active = seconds((previous.get(key) or {}).get("last_active"))
            try:
                participants = self.client.list_participants(name)
            except LiveKitAPIError as err:
                if err.code == "not_found":
                    continue  # closed since ListRooms
                result["errors"].append(dict(entry, error=str(err)))
                continue
            except Exception as err:
                result["errors"].append(dict(entry, error=str(err)))
                continue
            action, reason, idle_since = judge(room, participants, last_active, now, self.threshold)
            if reason == "publishing":
                last_active = now
            remembered = dict(name=name)
            if last_active:
                remembered["last_active"] = last_active
            reported = (previous.get(key) or {}).get("dry_run_reported")
            if action == "close" and reported:
                remembered["dry_run_reported"] = reported
            if len(remembered) > 1:
                state[key] = remembered
            entry.update(participants=len(participants), identities=identities(participants))
            if idle_since is not None and reason != "publishing":
                entry.update(idle_seconds=now - idle_since, idle_since=iso(idle_since))
            if action == "keep":
                result["kept"].append(dict(entry, reason=reason))
                continue
            if self.close(room, entry, last_active, result, reported) and self.dry_run:
                state[key] = dict(remembered, dry_run_reported=reported or now)
        result["state_changed"] = state != previous
        if self.state_file and write_state and result["state_changed"]:
            self.save_state(state)
        result["changed"] = bool(result["closed"] or result["would_close"])
        return result

    @staticmethod
    def _call(result, entry, call, *args):
        """(True, what call returned), or (False, None) with the failure recorded in result["errors"]
        (a room already gone, not_found, is no error: someone else closed it)."""
        try:
            return True, call(*args)
        except LiveKitAPIError as err:
            if err.code != "not_found":
                result["errors"].append(dict(entry, error=str(err)))
        except Exception as err:
            result["errors"].append(dict(entry, error=str(err)))
        return False, None

    def close(self, room, entry, last_active, result, reported=None):
        """Look again, then close the room (or, in a dry run, say it would be closed). True when it was
        closed (or would be). One audit line per room: a dry run that already reported this room
        (``reported``) says so in the journal only, so a room left alone does not fill the audit log."""
        name = entry["room"]
        if not self.dry_run:
            # Someone may have joined or published since the first look: judge the fresh list.
            ok, participants = self._call(result, entry, self.client.list_participants, name)
            if not ok:
                return False
            action, reason, dummy = judge(room, participants, last_active, int(self.clock()), self.threshold)
            if action != "close":
                result["kept"].append(dict(entry, reason=reason, participants=len(participants),
                                           identities=identities(participants)))
                return False
            ok, dummy = self._call(result, entry, self.client.delete_room, name)
            if not ok:
                return False
        event = EVENT_WOULD_CLOSE if self.dry_run else EVENT_CLOSED
        result["would_close" if self.dry_run else "closed"].append(entry)
        fields = dict(entry, threshold=self.threshold, dry_run=self.dry_run, source=self.source)
        if self.dry_run and reported:
            fields["reported"] = iso(reported)
        self.log(json.dumps(dict(fields, event=event), sort_keys=True))
        if self.audit_log and not (self.dry_run and reported):
            append_audit(self.audit_log, event, **fields)
        return True
