# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blue-green on one host: start the new release or configuration as a second livekit-server
instance (a *slot*: its own ports, the same Redis and keys), switch nginx to it, and let the old
instance drain (docs/blue-green.md).

Why this order (findings in docs/blue-green.md):
- the new instance must be SERVING in Redis before the old one drains, so no moment exists in which
  no node takes new rooms (F2);
- a draining node can never serve again (F3), so a rollback is another swap, to a free slot;
- every key of a slot that is still draining must be in the new key set (F5, F6): its participants'
  TURN credentials and refreshed tokens reach the new instance;
- a failed new instance registers for well under a second before it exits (F9): its ports are checked
  first, and after a failure its node must be gone from Redis before the swap reports.

Nothing here talks to systemd, HTTP or the file system directly: the module wires the callables, so
unit tests drive every failure with fakes.
"""

from __future__ import annotations

import re
import time

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import iso

NODE_ID_RE = re.compile(r'node_id="(ND_[A-Za-z0-9]+)"')
ACTIVE = ("active", "activating", "deactivating", "reloading")


class SwapError(Exception):
    """The swap did not happen (or did not finish); ``result`` says how far it got."""

    def __init__(self, msg, result):
        super().__init__(msg)
        self.result = result


def node_id_from_metrics(text):
    """The node ID livekit-server labels its own series with, or None."""
    match = NODE_ID_RE.search(text or "")
    return match.group(1) if match else None


def slot_order(slots, live):
    """Slot names in the order a swap tries them: the ones after the live slot first (a, b, c, a...)."""
    names = sorted(slots)
    if live in names:
        index = names.index(live)
        return names[index + 1:] + names[:index]
    return names


def tcp_ports(ports):
    return sorted({int(ports[name]) for name in ("port", "rtc_tcp_port", "prometheus_port", "turn_tls_port")
                   if int(ports.get(name) or 0) > 0})


def udp_ports(ports):
    return sorted({int(ports[name]) for name in ("turn_udp_port",) if int(ports.get(name) or 0) > 0})


class Host:
    """What the swap reads and does on the host; every attribute is a callable the module provides.

    unit(slot) -> unit name ('' is the single instance of the restart strategy, being migrated)
    show(unit) -> {'ActiveState', 'MainPID', 'NRestarts', 'UnitFileState'}
    start(unit), stop(unit) (non-blocking: a drain), stop_now(unit) (blocking), enable(unit), disable(unit)
    health(port) -> bool; metrics(port) -> text or None; participants(port) -> int or None
    list_nodes(slot) -> [{'id', 'state', ...}] (raises RuntimeError when it cannot be read)
    version(pid) -> str or None; rss_mb(pid) -> float; mem_available_mb() -> float; free_fds() -> int
    listening() -> {('tcp', port), ('udp', port)}; key_names() -> [str]; check_keys(port) -> [(name, error)]
    proxy_write(slot), proxy_test() -> error or None, proxy_restore(), proxy_reload() -> error or None
    record() -> dict; save(slot, version, slots_update) (writes the record); audit(event, **fields)
    """

    def __init__(self, **callables):
        self.__dict__.update(callables)


class Swap:
    def __init__(self, host, slots, clock=time.monotonic, sleep=time.sleep, wall=time.time, poll=1.0):
        self.host = host
        self.slots = slots          # {name: {port, rtc_tcp_port, turn_udp_port, turn_tls_port, prometheus_port, ...}}
        self.clock = clock
        self.sleep = sleep
        self.wall = wall
        self.poll = poll

    def _wait(self, done, timeout):
        start = self.clock()
        while True:
            value = done()
            if value:
                return value
            if self.clock() - start >= timeout:
                return None
            self.sleep(self.poll)

    # ---- what is where ----------------------------------------------------------------------
    def survey(self):
        """Which slot is live, which drain, which are free; notes drains that have ended."""
        record = self.host.record()
        units = dict((name, self.host.show(self.host.unit(name))) for name in self.slots)
        live = record.get("live_slot")
        if live not in self.slots or units[live]["ActiveState"] != "active":
            live = None
        legacy = None
        if not record.get("live_slot") and self.host.unit("") is not None:
            legacy = self.host.show(self.host.unit(""))
            if legacy["ActiveState"] == "active":
                live = ""       # the restart strategy's single instance: the first swap moves off it
        draining = sorted(name for name, unit in units.items() if unit["ActiveState"] == "deactivating")
        if legacy and legacy["ActiveState"] == "deactivating":
            draining.append("")
        ended = sorted(name for name, fields in (record.get("slots") or {}).items()
                       if fields.get("state") == "draining" and name in units
                       and units[name]["ActiveState"] not in ACTIVE)
        free = [name for name in slot_order(self.slots, live)
                if name != live and units[name]["ActiveState"] not in ACTIVE]
        return dict(record=record, units=units, live=live, legacy=legacy, draining=draining, ended=ended, free=free)

    def note_ended_drains(self, state, check_mode):
        """Mark slots whose drain has ended as stopped (audit drain_ended); True when that changed the record."""
        if not state["ended"] or check_mode:
            return bool(state["ended"])
        now = self.wall()
        update = {}
        for name in state["ended"]:
            since = state["record"]["slots"][name].get("since")
            update[name] = dict(state="stopped", since=iso(now))
            self.host.audit("drain_ended", slot=name, unit=self.host.unit(name), draining_since=since)
        self.host.save(None, None, update)
        return True

    def _ports_taken(self, slot):
        taken = self.host.listening()
        ports = self.slots[slot]
        return ([p for p in tcp_ports(ports) if ("tcp", p) in taken]
                + ["%d/udp" % p for p in udp_ports(ports) if ("udp", p) in taken])

    def plan(self, target=None, min_free_memory_mb=256, min_free_fds=65536, check_mode=False):
        """Choose the target slot and check the swap can start; raises SwapError naming what is missing.

        A refusal is a failed swap too: the audit log gets swap_failed with the reason, and slots refused
        for their ports are recorded as failed with it (nothing is written in check mode)."""
        blocked = {}
        try:
            return self._plan(target, min_free_memory_mb, min_free_fds, blocked)
        except SwapError as err:
            if not check_mode:
                now = iso(self.wall())
                if blocked:
                    self.host.save(None, None, dict((name, dict(state="failed", reason=reason, since=now))
                                                    for name, reason in blocked.items()))
                self.host.audit("swap_failed", slot=err.result.get("target") or target or next(iter(blocked), None),
                                candidates=err.result.get("free"), reason=str(err))
            raise

    def _plan(self, target, min_free_memory_mb, min_free_fds, blocked_slots):
        state = self.survey()
        result = dict(changed=False, live_slot=state["live"], draining=state["draining"], free=state["free"],
                      target=None, drains_ended=state["ended"])
        record_slots = state["record"].get("slots") or {}
        if target is not None:
            if target not in self.slots:
                raise SwapError("slot %r is not one of %s" % (target, ", ".join(sorted(self.slots))), result)
            if target not in state["free"]:
                raise SwapError("slot %s is not free: it is %s" % (
                    target, "the live one" if target == state["live"] else state["units"][target]["ActiveState"]),
                    result)
            candidates = [target]
        else:
            candidates = state["free"]
        if not candidates:
            busy = ", ".join("%s (%s since %s)" % (name or "livekit-server.service", "draining",
                                                   record_slots.get(name, {}).get("since", "?"))
                             for name in state["draining"])
            raise SwapError(
                "no free slot for the new instance: %s is live and %s still drain%s. A draining instance cannot "
                "serve again; wait for its calls to end (or stop it: systemctl stop %s ends them) and run again"
                % (state["live"] or "livekit-server.service", busy or "the others",
                   "s" if len(state["draining"]) == 1 else "", " ".join(self.host.unit(n) for n in state["draining"])),
                result)
        blocked = []
        for name in candidates:
            taken = self._ports_taken(name)
            if not taken:
                result["target"] = name
                break
            plural = "s" if len(taken) > 1 else ""
            blocked.append("slot %s: port%s %s already in use" % (name, plural, ", ".join(str(p) for p in taken)))
            blocked_slots[name] = blocked[-1]
        if result["target"] is None:
            raise SwapError("no free slot can start: %s. Find the listener with ss -ltnup and stop it, or give "
                            "livekit_server_slots other ports" % "; ".join(blocked), result)

        live_unit = state["units"].get(state["live"]) if state["live"] else state["legacy"]
        live_rss = self.host.rss_mb(live_unit["MainPID"]) if live_unit and live_unit.get("MainPID") else 0.0
        need_mb = max(float(min_free_memory_mb), live_rss)
        have_mb = self.host.mem_available_mb()
        result.update(memory_available_mb=round(have_mb), memory_needed_mb=round(need_mb),
                      live_rss_mb=round(live_rss, 1))
        if have_mb < need_mb:
            raise SwapError(
                "not enough memory for a second instance: %d MB available, %d MB needed (the larger of "
                "livekit_server_swap_min_free_memory_mb=%d and the live instance's %d MB RSS, which the new one "
                "grows to as calls move). Free memory or use the restart strategy"
                % (have_mb, need_mb, min_free_memory_mb, live_rss), result)
        fds = self.host.free_fds()
        result["free_fds"] = fds
        if fds < min_free_fds:
            raise SwapError(
                "not enough file descriptors for a second instance: %d free in the system (fs.file-max minus "
                "allocated), livekit_server_swap_min_free_fds=%d. Raise fs.file-max" % (fds, min_free_fds), result)

        keys = set(self.host.key_names())
        missing = []
        for name in state["draining"]:
            for key in record_slots.get(name, {}).get("key_names") or []:
                if key not in keys:
                    missing.append("%s (slot %s)" % (key, name))
        if missing:
            raise SwapError(
                "the new key set lacks %s, which a slot that is still draining uses: its participants' TURN "
                "credentials and refreshed tokens are signed with it and reach the new instance. Keep the key until "
                "that slot has drained (its calls ended), then retire it" % ", ".join(missing), result)
        result["state"] = state
        return result

    # ---- the swap ---------------------------------------------------------------------------
    def _gone(self, node_id, slot):
        try:
            return not any(node["id"] == node_id for node in self.host.list_nodes(slot))
        except RuntimeError:
            return False

    def record_failure(self, target, reason):
        """The record and audit log say the swap to ``target`` failed, and why."""
        self.host.save(None, None, {target: dict(state="failed", reason=reason, since=iso(self.wall()))})
        self.host.audit("swap_failed", slot=target, unit=self.host.unit(target), reason=reason)

    def _abort(self, result, target, reason, live_pid, live_unit, node_id):
        """Stop the new instance (it has no participants), leave the live one alone, record why."""
        unit = self.host.unit(target)
        try:
            self.host.stop_now(unit)
            self.host.disable(unit)
        except RuntimeError as err:
            reason += "; stopping %s failed too: %s" % (unit, err)
        if node_id and not self._wait(lambda: self._gone(node_id, target), 15):
            reason += "; its node %s is still listed in Redis (it expires within seconds)" % node_id
        if live_unit is not None:
            now = self.host.show(live_unit)
            result["live_pid_after"] = now["MainPID"] or None
            if now["MainPID"] != live_pid:
                reason += "; the live instance's PID changed from %s to %s" % (live_pid, now["MainPID"])
        self.record_failure(target, reason)
        raise SwapError("the swap to slot %s failed, and the live instance was left as it was: %s" % (target, reason),
                        result)

    def run(self, version, target=None, min_free_memory_mb=256, min_free_fds=65536, timeout=120,
            check_mode=False, event="deploy"):
        started = self.clock()
        result = self.plan(target, min_free_memory_mb, min_free_fds, check_mode)
        state = result.pop("state")
        target, live = result["target"], state["live"]
        result.update(changed=True, previous_slot=live, version=version)
        if check_mode:
            return result
        self.note_ended_drains(state, check_mode)
        live_unit = self.host.unit(live) if live is not None else None
        live_pid = (state["units"][live] if live else state["legacy"])["MainPID"] if live is not None else 0
        result["old_pid"] = live_pid or None
        old_id = None
        old_participants = None
        if live is not None:
            old_ports = self.slots.get(live) or self.host.legacy_ports
            old_id = node_id_from_metrics(self.host.metrics(old_ports["prometheus_port"]))
            old_participants = self.host.participants(old_ports["prometheus_port"])
        result["participants_at_drain"] = old_participants
        ports = self.slots[target]
        unit = self.host.unit(target)

        self.host.start(unit)
        progress = dict(node_id=None, status=None, step="start")

        def serving():
            status = self.host.show(unit)
            progress["status"] = status
            if int(status.get("NRestarts") or 0) > 0 or status["ActiveState"] == "failed":
                return "exited"
            if status["ActiveState"] != "active" or not self.host.health(ports["port"]):
                return None
            progress["node_id"] = progress["node_id"] or node_id_from_metrics(self.host.metrics(ports["prometheus_port"]))
            if not progress["node_id"]:
                return None
            try:
                nodes = self.host.list_nodes(target)
            except RuntimeError:
                return None
            mine = [node for node in nodes if node["id"] == progress["node_id"]]
            return "serving" if mine and mine[0]["state"] == "SERVING" else None
        outcome = self._wait(serving, timeout)
        node_id = progress["node_id"]
        result["new_node_id"] = node_id
        if outcome != "serving":
            status = progress["status"] or {}
            why = ("it exited (a configuration or port it could not use; journalctl -u %s)" % unit
                   if outcome == "exited" else
                   "it was not healthy and SERVING in Redis within %ds (ActiveState=%s; journalctl -u %s)"
                   % (timeout, status.get("ActiveState"), unit))
            self._abort(result, target, "the new instance did not start: " + why, live_pid, live_unit, node_id)
        result["start_seconds"] = round(self.clock() - started, 1)
        new_pid = progress["status"]["MainPID"]
        result["new_pid"] = new_pid
        running = self.host.version(new_pid)
        if running != version:
            self._abort(result, target, "the new instance runs %s, not %s" % (running, version),
                        live_pid, live_unit, node_id)
        refused = self.host.check_keys(ports["port"])
        if refused:
            self._abort(result, target, "the new instance refused API key%s %s" % (
                "s" if len(refused) > 1 else "", "; ".join("%s (%s)" % pair for pair in refused)),
                live_pid, live_unit, node_id)
        self.host.proxy_write(target)
        error = self.host.proxy_test()
        if error:
            self.host.proxy_restore()
            self._abort(result, target, "nginx refused the configuration pointing at the new instance: " + error,
                        live_pid, live_unit, node_id)

        # nginx first: an idle old instance exits the moment it is told to drain, and nginx would answer
        # 502 until it pointed at the new one. While both serve, a new room may still land on the old
        # instance (random selector); that only lengthens its drain.
        reload_error = self.host.proxy_reload()
        if reload_error:
            self.host.proxy_restore()
            if self.host.proxy_reload():
                reload_error += "; reloading the old configuration failed too"
            self._abort(result, target, "nginx did not reload onto the new instance: " + reload_error,
                        live_pid, live_unit, node_id)
        # Past this point the old instance drains, which cannot be undone (F3): only forward.
        self.host.enable(unit)
        now = self.wall()
        if live is not None:
            self.host.disable(live_unit)
            self.host.stop(live_unit)
            self.host.audit("drain_began", slot=live, unit=live_unit, pid=live_pid, participants=old_participants)
            if old_id:
                def draining():
                    try:
                        nodes = self.host.list_nodes(target)
                    except RuntimeError:
                        return False
                    mine = [node for node in nodes if node["id"] == old_id]
                    return not mine or mine[0]["state"] == "SHUTTING_DOWN"
                if not self._wait(draining, 30):
                    result.setdefault("warnings", []).append(
                        "the old instance (node %s) did not show SHUTTING_DOWN in Redis within 30s" % old_id)
        update = {target: dict(state="live", version=version, key_names=sorted(self.host.key_names()), since=iso(now),
                               node_id=node_id, reason=None)}
        if live:
            update[live] = dict(state="draining", since=iso(now))
        self.host.save(target, version, update)
        self.host.audit("swap", slot=target, unit=unit, version=version, previous_slot=live,
                        previous_version=(state["record"].get("slots") or {}).get(live, {}).get("version")
                        if live else state["record"].get("version"), kind=event,
                        participants_on_previous=old_participants, start_seconds=result["start_seconds"])
        result.update(live_slot=target, draining=sorted(set(state["draining"]) | ({live} if live is not None else set())),
                      total_seconds=round(self.clock() - started, 1))
        return result
