# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the drain-aware restart needs to know about a livekit-server node on this host, and the
restart itself.

How busy a node is comes from its own Prometheus endpoint (``livekit_room_total`` and
``livekit_participant_total`` are per-node gauges), because the server API's ListRooms lists the
rooms of the whole cluster when nodes share Redis. The drain is always asked of systemd
(``systemctl restart|stop --no-block``), so the unit's ExecStop sends the signals whether an operator
or this code started the stop, and a drain already in progress is joined, never signalled twice
(a second signal would force it).

A load that cannot be read (the metrics endpoint refuses, times out, answers an error or something
that is not livekit-server's metrics) is unknown, never zero: the quiet-hour gate counts it as busy.

The restart logic takes its clock, sleep and probes as arguments, so unit tests drive it with
fakes; the module wires it to systemctl, /proc and HTTP.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import iso

METRIC_RE = re.compile(r"^(livekit_room_total|livekit_participant_total)(?:\{[^}]*\})?\s+(\S+)")


class LoadUnknown(Exception):
    """The node's load could not be read; the message names the URL and the cause."""


class RestartError(Exception):
    """The restart could not be done; ``result`` holds what happened up to that point."""

    def __init__(self, msg, result):
        super().__init__(msg)
        self.result = result


def parse_metrics(text):
    """Rooms and participants on this node from Prometheus text (gauges summed over series).

    livekit-server always exports both gauges (0 on an idle node), so an answer without them is
    not its metrics: ValueError, never a count of zero.
    """
    totals = {"livekit_room_total": 0.0, "livekit_participant_total": 0.0}
    seen = set()
    for line in text.splitlines():
        match = METRIC_RE.match(line)
        if match:
            totals[match.group(1)] += float(match.group(2))
            seen.add(match.group(1))
    missing = sorted(set(totals) - seen)
    if missing:
        raise ValueError("the answer has no %s gauge, so it is not livekit-server's metrics"
                         % " or ".join(missing))
    return {"rooms": int(totals["livekit_room_total"]), "participants": int(totals["livekit_participant_total"])}


def _http_failure(err):
    """A short reason for an exception raised while fetching a URL (no secrets involved)."""
    if isinstance(err, urllib.error.HTTPError):
        return "HTTP %s %s" % (err.code, err.reason)
    if isinstance(err, urllib.error.URLError):
        err = err.reason
    return str(err) or type(err).__name__


def read_load(metrics_url, timeout=5):
    """{'rooms': n, 'participants': n} from the node's metrics.

    Raises LoadUnknown (naming the URL and the cause) when the endpoint refuses, times out, closes
    the connection, answers an HTTP error or answers something without livekit-server's gauges.
    """
    try:
        with open_url(metrics_url, timeout=timeout, follow_redirects="none") as response:
            return parse_metrics(response.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, http.client.HTTPException, UrlsConnectionError, ValueError) as err:
        raise LoadUnknown("%s: %s" % (metrics_url, _http_failure(err))) from None


def read_health(health_url, timeout=5):
    """True when ``GET /`` answers 200 OK."""
    try:
        with open_url(health_url, timeout=timeout, follow_redirects="none") as response:
            return response.status == 200 and response.read().strip() == b"OK"
    except (urllib.error.URLError, OSError, http.client.HTTPException, UrlsConnectionError):
        return False


class Systemd:
    """The few systemctl calls the restart needs. ``run`` is AnsibleModule.run_command."""

    def __init__(self, run, unit):
        self.run = run
        self.unit = unit

    def _ctl(self, *args):
        rc, out, err = self.run(["systemctl"] + list(args))
        if rc != 0:
            raise RuntimeError("systemctl %s failed: %s" % (" ".join(args), (err or out).strip()[:300]))
        return out

    def show(self):
        props = ["LoadState", "ActiveState", "SubState", "MainPID", "TimeoutStopUSec"]
        out = self._ctl("show", "--property=" + ",".join(props), self.unit)
        state = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        state["MainPID"] = int(state.get("MainPID") or 0)
        state["TimeoutStopSec"] = parse_timespan(state.get("TimeoutStopUSec", ""))
        return state

    def restart(self):
        self._ctl("restart", "--no-block", self.unit)

    def stop(self):
        self._ctl("stop", "--no-block", self.unit)

    def start(self):
        self._ctl("start", "--no-block", self.unit)

    def force(self):
        """The second SIGTERM: the server closes its rooms (clients see SERVER_SHUTDOWN) and exits."""
        self._ctl("kill", "--kill-whom=main", "--signal=SIGTERM", self.unit)


TIMESPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400}


def parse_timespan(text):
    """Seconds in a systemd timespan such as '5h 2min' or '1min 30s'; None for infinity/unknown."""
    text = text.strip()
    if not text or text == "infinity":
        return None
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*(us|ms|min|s|h|d)", text):
        total += float(number) * TIMESPAN_UNITS[unit]
    if re.fullmatch(r"\d+", text):  # plain microseconds (older systemd prints TimeoutStopUSec raw)
        total = int(text) / 1e6
    return total


def process_alive(pid):
    """False once ``pid`` has exited. Only its absence from /proc counts as exited: a /proc entry
    that cannot be read (permissions, a mount with hidepid) is a process still running."""
    if pid <= 0:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            # A zombie has exited; its parent (systemd) has not reaped it yet.
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True


def running_version(run, pid):
    """The version the binary of process ``pid`` reports (``/proc/PID/exe --version``), or None."""
    if pid <= 0:
        return None
    rc, out, _err = run(["/proc/%d/exe" % pid, "--version"])
    match = re.search(r"version (\S+)", out or "")
    return match.group(1) if rc == 0 and match else None


class DrainRestart:
    """Quiet-hour gate, drain through systemd, optional force, start and verify."""

    STOP_MARGIN = 120  # the unit's TimeoutStopSec must exceed the drain budget by this much

    def __init__(self, systemd, load, health, version, alive=process_alive, clock=time.monotonic,
                 sleep=time.sleep, wall=time.time, poll=1.0, on_event=None):
        self.systemd = systemd
        self.load = load          # () -> {'rooms', 'participants'}; raises LoadUnknown (or returns None)
        self.health = health      # () -> bool
        self.version = version    # (pid) -> str or None
        self.alive = alive        # (pid) -> bool
        self.clock = clock
        self.sleep = sleep
        self.wall = wall
        self.poll = poll
        self.events = []          # (event, fields) for the audit log
        # Called with each event as it happens, so the audit log shows a drain that is still under way
        # (or whose caller was killed) and not only the outcome.
        self.on_event = on_event

    def _event(self, name, fields):
        """Record an audit event with the time it happened and hand it to ``on_event`` at once."""
        now = self.wall()
        fields = dict(fields, time=iso(now), ts=round(now, 3))
        self.events.append((name, fields))
        if self.on_event:
            self.on_event(name, fields)

    def _read_load(self, load):
        """Read the node's load into ``load``; returns None, or why it could not be read."""
        try:
            current = self.load()
        except LoadUnknown as err:
            return str(err)
        if current is None:
            return "no reading"
        load.update(current)
        return None

    def _wait(self, done, timeout):
        """Poll ``done()`` until true or ``timeout`` seconds pass; returns (ok, seconds waited)."""
        start = self.clock()
        while True:
            if done():
                return True, self.clock() - start
            if self.clock() - start >= timeout:
                return False, self.clock() - start
            self.sleep(self.poll)

    def run(self, state="restarted", quiet_threshold=None, quiet_timeout=0, on_busy="fail",
            drain_timeout=18000, on_drain_timeout="fail", start_timeout=120, expected_version=None,
            check_mode=False, max_refusal=None, allow_long_refusal=False):
        result = dict(changed=False, action="none", deferred=False, old_pid=None, new_pid=None,
                      old_version=None, new_version=None, rooms_at_drain=None, participants_at_drain=None,
                      gate_seconds=0.0, drain_seconds=0.0, forced_participants=0, restart_seconds=None,
                      refused_new_rooms=None)
        unit = self.systemd.show()
        if unit.get("LoadState") != "loaded":
            raise RestartError("unit %s is not loaded (LoadState=%s)" % (self.systemd.unit, unit.get("LoadState")),
                               result)
        active = unit["ActiveState"]
        result["old_pid"] = unit["MainPID"] or None
        result["old_version"] = self.version(unit["MainPID"])

        if active not in ("active", "deactivating", "reloading"):
            if state == "stopped":
                return result
            result.update(changed=True, action="started")
            if check_mode:
                return result
            self.systemd.start()
            return self._await_start(result, 0, start_timeout, expected_version, drain_began=None, exited=self.wall())

        stop_budget = unit.get("TimeoutStopSec")
        if stop_budget is not None and drain_timeout + self.STOP_MARGIN > stop_budget:
            fits = max(0, stop_budget - self.STOP_MARGIN)
            raise RestartError(
                "drain_timeout=%ds does not fit in the unit's TimeoutStopSec=%ds, after which systemd would "
                "SIGKILL the draining server: lower drain_timeout to at most %ds, or raise the unit's drain "
                "budget (livekit_server_drain_budget)" % (drain_timeout, stop_budget, fits), result)

        # Unknown until read: a load that cannot be read never counts as an idle node.
        load = {"rooms": None, "participants": None}
        reading = {"error": None}
        joined = active == "deactivating"
        if not joined and quiet_threshold is not None:
            def quiet():
                reading["error"] = self._read_load(load)
                return reading["error"] is None and load["participants"] <= quiet_threshold
            ok, waited = (quiet(), 0.0) if check_mode else self._wait(quiet, quiet_timeout)
            result["gate_seconds"] = round(waited, 1)
            if not ok:
                if reading["error"] is not None:
                    load.update(rooms=None, participants=None)
                    result["load_error"] = reading["error"]
                if on_busy == "defer":
                    result.update(deferred=True, action="deferred", participants_at_drain=load["participants"],
                                  rooms_at_drain=load["rooms"])
                    event = dict(participants=load["participants"], rooms=load["rooms"])
                    if reading["error"] is not None:
                        event["load_error"] = reading["error"]
                    self._event("restart_deferred", event)
                    return result
                if on_busy == "fail":
                    if reading["error"] is not None:
                        raise RestartError(
                            "the load of the node could not be read (%s) after waiting %ds; an unknown load "
                            "counts as busy, so nothing was signalled. Check that metrics_url is livekit-server's "
                            "Prometheus endpoint (prometheus_port in livekit.yaml) and that it answers, or use "
                            "on_busy=drain to drain anyway" % (reading["error"], quiet_timeout), result)
                    raise RestartError(
                        "%s participant(s) still connected after waiting %ds for at most %d; nothing was "
                        "signalled" % (load["participants"], quiet_timeout, quiet_threshold), result)
        else:
            reading["error"] = self._read_load(load)
            if reading["error"] is not None:
                result["load_error"] = reading["error"]

        if joined:
            action = "joined_drain"
        else:
            action = "drained" if state == "stopped" else "restarted"
        result.update(changed=True, action=action,
                      rooms_at_drain=load["rooms"], participants_at_drain=load["participants"])
        # On a single node a drain refuses every new room until the last call ends: bounded by max_refusal.
        if (max_refusal is not None and not joined and drain_timeout > max_refusal
                and (load["participants"] is None or load["participants"] > 0)):
            message = (
                "this node is the only one, so a drain refuses every new room until its %s participant(s) leave: up "
                "to %ds (the drain timeout), more than livekit_server_restart_max_refusal=%ds"
                % ("an unknown number of" if load["participants"] is None else load["participants"], drain_timeout,
                   max_refusal))
            if not allow_long_refusal:
                raise RestartError(
                    message + ". Nothing was signalled. Run in a quiet hour, lower livekit_server_restart_drain_timeout "
                    "(with on_drain_timeout=force the calls are cut then), allow it with "
                    "livekit_server_restart_allow_long_refusal=true, or use livekit_server_deployment_strategy="
                    "blue_green, which refuses no new room", result)
            result["refusal_warning"] = message
        if check_mode:
            return result

        old_pid = unit["MainPID"]
        drain_began = self.wall()
        if not joined:
            (self.systemd.stop if state == "stopped" else self.systemd.restart)()
        self._event("drain_started" if not joined else "drain_joined",
                    dict(participants=load["participants"], rooms=load["rooms"], pid=old_pid,
                         version=result["old_version"]))

        def exited():
            self._read_load(load)  # the last count read (unknown stays None) is reported below
            return not self.alive(old_pid)
        ok, waited = self._wait(exited, drain_timeout)
        result["drain_seconds"] = round(waited, 1)
        if not ok:
            if on_drain_timeout != "force":
                result["participants_left"] = load["participants"]
                self._event("drain_timeout", dict(participants=load["participants"], pid=old_pid))
                raise RestartError(
                    "the node is still draining after %ds with %s participant(s); it refuses new rooms and "
                    "restarts by itself when they leave (or when the unit's drain budget forces it). Rerun with "
                    "on_drain_timeout=force to end their sessions"
                    % (drain_timeout, "an unknown number of" if load["participants"] is None else load["participants"]),
                    result)
            result["forced_participants"] = load["participants"]
            self._event("drain_forced", dict(participants=load["participants"], pid=old_pid))
            self.systemd.force()
            ok, extra = self._wait(lambda: not self.alive(old_pid), 60)
            result["drain_seconds"] = round(waited + extra, 1)
            if not ok:
                raise RestartError("livekit-server (pid %d) did not exit within 60s of the forcing signal" % old_pid,
                                   result)
        exited_at = self.wall()
        if state == "stopped":
            self._wait(lambda: self.systemd.show()["ActiveState"] in ("inactive", "failed"), 30)
            self._event("stopped", dict(pid=old_pid, forced=result["forced_participants"]))
            return result
        return self._await_start(result, old_pid, start_timeout, expected_version, drain_began, exited_at)

    def _await_start(self, result, old_pid, start_timeout, expected_version, drain_began, exited):
        status = {}
        kicked = []

        def serving():
            status.update(self.systemd.show())
            if status["ActiveState"] in ("inactive", "failed") and not kicked:
                # A plain stop (an operator's, that this run joined) ends inactive: start it.
                kicked.append(True)
                self.systemd.start()
                return False
            pid = status["MainPID"]
            return status["ActiveState"] == "active" and pid not in (0, old_pid) and self.health()
        ok = self._wait(serving, start_timeout)[0]
        healthy_at = self.wall()
        result["new_pid"] = status.get("MainPID") or None
        result["restart_seconds"] = round(healthy_at - exited, 1)
        if drain_began is not None:
            result["refused_new_rooms"] = dict(started=iso(drain_began), ended=iso(healthy_at),
                                               seconds=round(healthy_at - drain_began, 1))
        if not ok:
            self._event("start_failed", dict(state=status.get("ActiveState")))
            raise RestartError(
                "livekit-server did not come back healthy within %ds (ActiveState=%s); see journalctl -u %s"
                % (start_timeout, status.get("ActiveState"), self.systemd.unit), result)
        result["new_version"] = self.version(status["MainPID"])
        self._event("restarted", dict(pid=result["new_pid"], version=result["new_version"],
                                      previous_version=result["old_version"],
                                      forced=result["forced_participants"],
                                      drain_seconds=result["drain_seconds"]))
        if expected_version and result["new_version"] != expected_version:
            raise RestartError("livekit-server came back as version %s, not the expected %s"
                               % (result["new_version"], expected_version), result)
        return result
