"""The blue-green swap (module_utils/livekit_swap.py) against a fake host: the new instance serves
before the old one drains, and every failure before the drain leaves the live instance untouched."""

from __future__ import annotations

import pytest

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_record import merge_slots
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_swap import Host, Swap, SwapError
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_swap import node_id_from_metrics, slot_order

SLOTS = {
    "a": dict(port=7880, rtc_tcp_port=7881, turn_udp_port=3478, turn_tls_port=5349, prometheus_port=6789),
    "b": dict(port=7890, rtc_tcp_port=7891, turn_udp_port=3488, turn_tls_port=5359, prometheus_port=6799),
    "c": dict(port=7900, rtc_tcp_port=7901, turn_udp_port=3498, turn_tls_port=5369, prometheus_port=6809),
}


class FakeHost:
    """A host with units, Redis nodes, nginx and a record, as the swap sees them."""

    def __init__(self, live="a", record=None):
        self.units = {"livekit-server@%s.service" % s: dict(ActiveState="inactive", MainPID=0, NRestarts="0") for s in SLOTS}
        self.units["livekit-server.service"] = dict(ActiveState="inactive", MainPID=0, NRestarts="0")
        self.nodes = []
        self.record_data = record if record is not None else {"live_slot": live, "version": "1.13.4",
                                                              "slots": {live: {"state": "live", "version": "1.13.4",
                                                                               "key_names": ["APIold"]}}}
        if live is not None:
            self.run_instance(self.unit(live), 100, "ND_old")
        self.pids = 200
        self.keys = ["APIold"]
        self.taken = set()
        self.events = []
        self.calls = []
        self.nginx = "old"
        self.start_fails = None       # None, "exit" or "unhealthy"
        self.refused_keys = []
        self.versions = {}
        self.new_version = "1.13.5"
        self.proxy_test_error = None
        self.reload_error = None
        self.mem = 4096.0

    # -- the fake's own bookkeeping
    def run_instance(self, unit, pid, node_id):
        self.units[unit].update(ActiveState="active", MainPID=pid, node_id=node_id)
        self.nodes.append({"id": node_id, "state": "SERVING", "unit": unit})

    @staticmethod
    def unit(slot):
        return "livekit-server@%s.service" % slot if slot else "livekit-server.service"

    def port_unit(self, port):
        for slot, ports in SLOTS.items():
            if port in ports.values():
                return self.unit(slot)
        return None

    def host(self):
        return Host(
            unit=self.unit, show=lambda u: dict(self.units[u]), start=self.start, stop=self.stop,
            stop_now=self.stop_now, enable=lambda u: self.calls.append(("enable", u)),
            disable=lambda u: self.calls.append(("disable", u)),
            health=lambda port: self.units[self.port_unit(port)]["ActiveState"] in ("active", "deactivating")
            and self.start_fails != "unhealthy",
            metrics=lambda port: 'livekit_node_info{node_id="%s"} 1' % self.units[self.port_unit(port)].get("node_id", "")
            if self.units[self.port_unit(port)]["ActiveState"] != "inactive" else None,
            participants=lambda port: 2, list_nodes=lambda slot: [dict(n) for n in self.nodes],
            version=self.versions.get, rss_mb=lambda pid: 64.0, mem_available_mb=lambda: self.mem,
            free_fds=lambda: 10 ** 6, listening=lambda: self.taken, key_names=lambda: list(self.keys),
            check_keys=lambda port: [(k, "401 unauthorized") for k in self.refused_keys],
            proxy_write=lambda slot: self.calls.append(("nginx_write", slot)), proxy_test=lambda: self.proxy_test_error,
            proxy_restore=lambda: self.calls.append(("nginx_restore",)), proxy_reload=self.reload,
            record=lambda: self.record_data, save=self.save,
            audit=lambda event, **fields: self.events.append((event, fields)), legacy_ports=SLOTS["a"])

    def start(self, unit):
        self.calls.append(("start", unit))
        self.pids += 1
        if self.start_fails == "exit":
            self.units[unit].update(ActiveState="activating", MainPID=self.pids, NRestarts="1")
            return
        self.versions[self.pids] = self.new_version
        self.run_instance(unit, self.pids, "ND_new%d" % self.pids)

    def stop(self, unit):
        self.calls.append(("drain", unit))
        self.units[unit]["ActiveState"] = "deactivating"
        for node in self.nodes:
            if node["unit"] == unit:
                node["state"] = "SHUTTING_DOWN"

    def stop_now(self, unit):
        self.calls.append(("stop", unit))
        self.units[unit].update(ActiveState="inactive", MainPID=0)
        self.nodes = [n for n in self.nodes if n["unit"] != unit]

    def reload(self):
        self.calls.append(("nginx_reload",))
        if self.reload_error:
            return self.reload_error
        self.nginx = "new"
        return None

    def save(self, slot, version, update):
        self.record_data = dict(self.record_data, slots=merge_slots(self.record_data.get("slots"), update))
        if slot is not None:
            self.record_data.update(live_slot=slot, version=version)


def swap(fake):
    clock = [0.0]

    def sleep(seconds):
        clock[0] += seconds
    return Swap(fake.host(), SLOTS, clock=lambda: clock[0], sleep=sleep, wall=lambda: 1.7e9 + clock[0], poll=1.0)


def test_the_new_instance_serves_before_the_old_one_drains():
    fake = FakeHost()
    result = swap(fake).run("1.13.5", timeout=30)
    order = [c[0] for c in fake.calls]
    # nginx points at the new instance before the old one is told to drain (an idle one exits at once).
    assert order.index("start") < order.index("nginx_reload") < order.index("drain")
    assert ("drain", "livekit-server@a.service") in fake.calls
    assert fake.units["livekit-server@b.service"]["ActiveState"] == "active"
    assert result["live_slot"] == "b" and result["previous_slot"] == "a" and result["draining"] == ["a"]
    assert fake.record_data["live_slot"] == "b"
    assert fake.record_data["slots"]["a"]["state"] == "draining"
    assert fake.record_data["slots"]["b"] == dict(fake.record_data["slots"]["b"], state="live", version="1.13.5",
                                                  key_names=["APIold"])
    assert [event[0] for event in fake.events] == ["drain_began", "swap"]


def test_a_rollback_while_one_slot_drains_takes_the_third():
    fake = FakeHost()
    swap(fake).run("1.13.5")
    fake.new_version = "1.13.4"
    result = swap(fake).run("1.13.4", event="rollback")
    assert result["target"] == "c" and result["previous_slot"] == "b"
    assert fake.units["livekit-server@a.service"]["ActiveState"] == "deactivating"   # its calls untouched


def test_no_free_slot_is_refused_naming_the_draining_ones():
    fake = FakeHost()
    swap(fake).run("1.13.5")
    fake.new_version = "1.13.4"
    swap(fake).run("1.13.4")
    with pytest.raises(SwapError, match="no free slot.*a, b|no free slot.*drain") as err:
        swap(fake).run("1.13.5")
    assert "systemctl stop" in str(err.value)


@pytest.mark.parametrize("fault,reason", [
    ("exit", "it exited"),
    ("unhealthy", "not healthy and SERVING"),
    ("version", "runs 1.13.9, not 1.13.5"),
    ("key", "refused API key APIold"),
    ("nginx", "nginx refused"),
    ("reload", "nginx did not reload"),
])
def test_a_failed_swap_leaves_the_live_instance_untouched(fault, reason):
    fake = FakeHost()
    fake.start_fails = fault if fault in ("exit", "unhealthy") else None
    fake.new_version = "1.13.9" if fault == "version" else "1.13.5"
    fake.refused_keys = ["APIold"] if fault == "key" else []
    fake.proxy_test_error = "nginx: [emerg] bad" if fault == "nginx" else None
    fake.reload_error = "Job for nginx.service failed" if fault == "reload" else None
    with pytest.raises(SwapError, match=reason) as err:
        swap(fake).run("1.13.5", timeout=10)
    assert "live instance was left as it was" in str(err.value)
    live = fake.units["livekit-server@a.service"]
    assert live["ActiveState"] == "active" and live["MainPID"] == 100
    assert fake.units["livekit-server@b.service"]["ActiveState"] == "inactive"
    assert not any(c[0] == "drain" for c in fake.calls) and fake.nginx == "old"
    assert [n["id"] for n in fake.nodes] == ["ND_old"], "no stray node may stay in Redis"
    assert fake.record_data["live_slot"] == "a"
    assert fake.record_data["slots"]["b"]["state"] == "failed" and reason.split()[0] in fake.record_data["slots"]["b"]["reason"]
    assert fake.events[-1][0] == "swap_failed"
    assert (fault in ("nginx", "reload")) == (("nginx_restore",) in fake.calls)


def test_taken_ports_and_capacity_are_refused_before_anything_starts():
    fake = FakeHost()
    fake.taken = {("tcp", 7890), ("tcp", 7900)}
    with pytest.raises(SwapError, match="slot b: port 7890 already in use; slot c: port 7900"):
        swap(fake).run("1.13.5")
    assert fake.record_data["slots"]["b"]["state"] == "failed" and "7890 already in use" in fake.record_data["slots"]["b"]["reason"]
    assert fake.events[-1][0] == "swap_failed" and "no free slot can start" in fake.events[-1][1]["reason"]
    assert fake.events[-1][1]["slot"] == "b" and fake.events[-1][1]["candidates"] == ["b", "c"]
    assert fake.record_data["live_slot"] == "a"
    fake.taken = {("tcp", 7890)}
    assert swap(fake).plan()["target"] == "c"
    fake.taken = set()
    fake.mem = 100.0
    with pytest.raises(SwapError, match="100 MB available, 256 MB needed"):
        swap(fake).run("1.13.5")
    assert not any(c[0] == "start" for c in fake.calls)


def test_a_key_a_draining_slot_started_with_must_stay():
    fake = FakeHost()
    fake.keys = ["APIold", "APInew"]
    swap(fake).run("1.13.5")                      # a drains with APIold
    fake.keys = ["APInew"]
    with pytest.raises(SwapError, match="lacks APIold \\(slot a\\)"):
        swap(fake).run("1.13.5")


def test_the_restart_strategys_instance_is_the_first_live_one():
    fake = FakeHost(live=None, record={})
    fake.run_instance("livekit-server.service", 50, "ND_legacy")
    fake.taken = {("tcp", 7880), ("tcp", 7881), ("tcp", 6789)}   # the single instance holds slot a's ports
    result = swap(fake).run("1.13.5")
    assert result["target"] == "b" and result["previous_slot"] == ""
    assert ("disable", "livekit-server.service") in fake.calls and ("drain", "livekit-server.service") in fake.calls


def test_ended_drains_are_noted():
    fake = FakeHost()
    swap(fake).run("1.13.5")
    fake.units["livekit-server@a.service"].update(ActiveState="inactive", MainPID=0)
    s = swap(fake)
    state = s.survey()
    assert state["ended"] == ["a"] and s.note_ended_drains(state, check_mode=False)
    assert fake.record_data["slots"]["a"]["state"] == "stopped" and fake.events[-1][0] == "drain_ended"


def test_helpers():
    assert node_id_from_metrics('livekit_node_info{node_id="ND_abc123",x="y"} 1') == "ND_abc123"
    assert node_id_from_metrics("nothing") is None
    assert slot_order(SLOTS, "b") == ["c", "a"] and slot_order(SLOTS, None) == ["a", "b", "c"]
