# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The load test's measurements and its capacity report (docs/loadtest.md).

On the node (module livekit_loadtest_sampler): every interval the host's CPU from /proc/stat,
livekit-server's own CPU and RSS from /proc/<pid>, and from livekit-server's Prometheus listener the
participants, tracks, bytes, packet loss (the ``livekit_packet_loss_percent`` histogram, in percent)
and join latency (``livekit_session_join_latency_ms``). Counters become rates between two samples.

On the controller (module livekit_loadtest_report): the generator's timeline and the node's samples
become the report: the largest load that stayed under the limits (the ops guide's 70 % CPU and 3 %
loss by default), participants and subscribed tracks per core extrapolated to that CPU limit, and a
PNG of participants, CPU and loss over time.

Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import statistics

SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
METADATA_KEY = "selfhosted_livekit_loadtest"
# What the plot shows, in the JSON report's "plot" entry (the tests check them against the image).
PLOT_SERIES = [
    {"panel": "participants", "name": "participants", "color": [31, 119, 180]},
    {"panel": "participants", "name": "tracks_subscribed", "color": [148, 103, 189]},
    {"panel": "cpu", "name": "cpu_host_percent", "color": [214, 39, 40]},
    {"panel": "cpu", "name": "cpu_livekit_percent", "color": [44, 160, 44]},
    {"panel": "loss", "name": "loss_percent", "color": [140, 86, 75]},
]


def parse_metrics(text):
    """{name: [(labels, value), ...]} from Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        match = SAMPLE_LINE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        labels = dict(LABEL.findall(match.group(3) or ""))
        out.setdefault(match.group(1), []).append((labels, value))
    return out


def total(metrics, name, **match):
    """Sum of a metric's series whose labels match."""
    return sum(v for labels, v in metrics.get(name, []) if all(labels.get(k) == w for k, w in match.items()))


def node_counters(metrics):
    """What a sample keeps of livekit-server's metrics (gauges as they are, counters to diff)."""
    if "livekit_participant_total" not in metrics:
        raise ValueError("no livekit_participant_total series: not livekit-server's metrics")
    return {
        "participants": int(total(metrics, "livekit_participant_total")),
        "rooms": int(total(metrics, "livekit_room_total")),
        "tracks_published": int(total(metrics, "livekit_track_published_total")),
        "tracks_subscribed": int(total(metrics, "livekit_track_subscribed_total")),
        "loss_in_sum": total(metrics, "livekit_packet_loss_percent_sum", direction="incoming"),
        "loss_in_count": total(metrics, "livekit_packet_loss_percent_count", direction="incoming"),
        "loss_out_sum": total(metrics, "livekit_packet_loss_percent_sum", direction="outgoing"),
        "loss_out_count": total(metrics, "livekit_packet_loss_percent_count", direction="outgoing"),
        "join_ms_sum": total(metrics, "livekit_session_join_latency_ms_sum"),
        "join_ms_count": total(metrics, "livekit_session_join_latency_ms_count"),
        "bytes_in": total(metrics, "livekit_packet_bytes", direction="incoming"),
        "bytes_out": total(metrics, "livekit_packet_bytes", direction="outgoing"),
        "process_rss_bytes": total(metrics, "process_resident_memory_bytes"),
    }


def read_host_cpu(path="/proc/stat"):
    """(busy, total) jiffies of all CPUs together, and the number of CPUs."""
    with open(path) as handle:
        lines = handle.read().splitlines()
    fields = [int(x) for x in lines[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    cpus = sum(1 for line in lines if re.match(r"^cpu\d+\s", line))
    return sum(fields[:8]) - idle, sum(fields[:8]), cpus


def find_pid(name, proc="/proc"):
    """The oldest process whose command name is ``name``, or None."""
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "comm")) as handle:
                if handle.read().strip() == name[:15]:
                    found.append(int(entry))
        except OSError:
            continue
    return min(found) if found else None


def read_process(pid, proc="/proc"):
    """(user+system jiffies, RSS bytes) of a process, or (None, None) when it is gone."""
    try:
        with open(os.path.join(proc, str(pid), "stat")) as handle:
            stat = handle.read()
        with open(os.path.join(proc, str(pid), "status")) as handle:
            status = handle.read()
    except OSError:
        return None, None
    fields = stat.rsplit(")", 1)[1].split()
    rss = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.M)
    return int(fields[11]) + int(fields[12]), (int(rss.group(1)) * 1024 if rss else None)


def _ratio(num, den):
    return round(num / den, 3) if den > 0 else None


def make_sample(prev, cur, hz=100):
    """One sample from two raw readings {t, host (busy, total, cpus), proc (jiffies, rss), node counters}.

    CPU is in percent of the whole host (all cores = 100); loss is the mean per-track loss the server
    reported in the interval, per direction, and ``loss_percent`` the worse of the two.
    """
    seconds = cur["t"] - prev["t"]
    host_busy = cur["host"][0] - prev["host"][0]
    host_total = cur["host"][1] - prev["host"][1]
    cpus = cur["host"][2] or 1
    sample = {"t": round(cur["t"], 3), "cpus": cpus,
              "cpu_host_percent": round(100.0 * host_busy / host_total, 2) if host_total > 0 else None,
              "cpu_livekit_percent": None, "rss_bytes": cur["proc"][1], "load1": cur.get("load1")}
    if cur["proc"][0] is not None and prev["proc"][0] is not None and seconds > 0:
        sample["cpu_livekit_percent"] = round(100.0 * (cur["proc"][0] - prev["proc"][0]) / hz / seconds / cpus, 2)
    node, before = cur.get("node"), prev.get("node")
    if node:
        sample.update(participants=node["participants"], rooms=node["rooms"],
                      tracks_published=node["tracks_published"], tracks_subscribed=node["tracks_subscribed"])
        if sample["rss_bytes"] is None:
            sample["rss_bytes"] = int(node["process_rss_bytes"]) or None
    if node and before and seconds > 0:
        loss_in = _ratio(node["loss_in_sum"] - before["loss_in_sum"], node["loss_in_count"] - before["loss_in_count"])
        loss_out = _ratio(node["loss_out_sum"] - before["loss_out_sum"], node["loss_out_count"] - before["loss_out_count"])
        sample.update(loss_in_percent=loss_in, loss_out_percent=loss_out,
                      loss_percent=max([x for x in (loss_in, loss_out) if x is not None], default=None),
                      join_latency_ms=_ratio(node["join_ms_sum"] - before["join_ms_sum"],
                                             node["join_ms_count"] - before["join_ms_count"]),
                      egress_mbps=round((node["bytes_out"] - before["bytes_out"]) * 8 / seconds / 1e6, 3),
                      ingress_mbps=round((node["bytes_in"] - before["bytes_in"]) * 8 / seconds / 1e6, 3))
    return sample


def live_metadata(sample, seq):
    """What the sampler writes into a load-test room's metadata for the generator to read."""
    return json.dumps({METADATA_KEY: {"seq": seq, "t": sample["t"], "cpu_host_percent": sample.get("cpu_host_percent"),
                                      "cpu_livekit_percent": sample.get("cpu_livekit_percent"),
                                      "loss_percent": sample.get("loss_percent")}}, separators=(",", ":"))


# ---- the report ---------------------------------------------------------------------------------
def cpu_of(sample, basis):
    return sample.get("cpu_host_percent" if basis == "host" else "cpu_livekit_percent")


def capacity(samples, limits):
    """The largest load that stayed under the limits, and the load extrapolated to the CPU limit.

    A limit counts as crossed at the first of two samples in a row over it (one sample over it is
    noise: a GC pause, another process). Before that, the sample with the most participants is the
    largest load that held. The extrapolation goes
    from the plateau at that load (the median of its samples) linearly to the CPU limit.
    """
    basis, cpu_limit, loss_limit = limits["cpu_basis"], limits["cpu_percent"], limits["loss_percent"]

    def over(sample):
        cpu, loss = cpu_of(sample, basis), sample.get("loss_percent")
        reasons = []
        if cpu is not None and cpu > cpu_limit:
            reasons.append("CPU %.1f %% > %s %%" % (cpu, fmt_num(cpu_limit)))
        if loss is not None and loss > loss_limit:
            reasons.append("loss %.2f %% > %s %%" % (loss, fmt_num(loss_limit)))
        return reasons

    loaded = [s for s in samples if s.get("participants")]
    crossed, reason = None, None
    for i in range(len(loaded) - 1):
        if over(loaded[i]) and over(loaded[i + 1]):
            crossed, reason = i, "; ".join(over(loaded[i]))
            break
    held = loaded[:crossed] if crossed is not None else loaded
    best = max(held, key=lambda s: (s["participants"], -(cpu_of(s, basis) or 0)), default=None)
    cpus = max((s.get("cpus") or 0 for s in samples), default=0) or None
    result = {"limit_crossed": crossed is not None, "limit_reason": reason,
              "crossed_at_participants": loaded[crossed]["participants"] if crossed is not None else None,
              "largest_load": None, "participants_at_cpu_limit": None, "participants_per_core": None,
              "subscribed_tracks_per_core": None, "cpu_millicores_per_subscribed_track": None,
              "egress_mbps_per_subscribed_track": None, "node_cpus": cpus, "plateau": None}
    if best is None:
        return result
    result["largest_load"] = {k: best.get(k) for k in ("participants", "rooms", "tracks_published", "tracks_subscribed",
                                                       "cpu_host_percent", "cpu_livekit_percent", "loss_percent",
                                                       "rss_bytes", "egress_mbps", "t")}
    # The plateau at the largest load: its median CPU and subscribed tracks, extrapolated linearly
    # through zero (conservative: the idle node's CPU counts as load too).
    plateau = [s for s in held if s["participants"] == best["participants"] and cpu_of(s, basis) is not None]
    cpu_there = statistics.median(cpu_of(s, basis) for s in plateau) if plateau else None
    tracks_there = statistics.median(s.get("tracks_subscribed") or 0 for s in plateau) if plateau else 0
    result["plateau"] = {"samples": len(plateau), "cpu_percent": cpu_there, "tracks_subscribed": tracks_there}
    if cpu_there and cpus:
        scale = cpu_limit / cpu_there
        result["participants_at_cpu_limit"] = int(best["participants"] * scale)
        result["participants_per_core"] = round(best["participants"] * scale / cpus, 1)
        if tracks_there:
            result["subscribed_tracks_per_core"] = round(tracks_there * scale / cpus, 1)
            # 1 % of the host is cpus * 10 millicores.
            result["cpu_millicores_per_subscribed_track"] = round(cpu_there * cpus * 10 / tracks_there, 3)
    rates = [s["egress_mbps"] / s["tracks_subscribed"] for s in held
             if s.get("egress_mbps") and s.get("tracks_subscribed")]
    if rates:
        result["egress_mbps_per_subscribed_track"] = round(statistics.median(rates), 4)
    return result


def generator_cost(gen):
    """Cores the generator used while everyone was connected, and participants per core it sustains."""
    timeline = gen.get("timeline", [])
    cores = [(p["participants"], p["generator_cores"]) for p in timeline
             if p.get("generator_cores") is not None and p.get("participants")]
    if not cores:
        return {"generator_cores": None, "generator_participants_per_core": None, "load_host_cpus": gen.get("cpus")}
    peak = max(n for n, _c in cores)
    at_peak = [c for n, c in cores if n == peak]
    used = statistics.median(at_peak)
    return {"generator_cores": round(used, 3), "generator_participants_per_core": round(peak / used, 1) if used > 0 else None,
            "load_host_cpus": gen.get("cpus"), "generator_peak_participants": peak}


def fmt_num(value):
    return ("%d" % value) if float(value).is_integer() else ("%g" % value)


def build_report(gen, samples, limits, node_name):
    """The JSON report from the generator's result and the node's samples."""
    start = gen.get("started") or (samples[0]["t"] if samples else 0)
    samples = sorted(samples, key=lambda s: s["t"])
    people = gen.get("participants", [])
    joins = sorted(p["join_seconds"] for p in people if p.get("joined"))

    def pct(values, q):
        return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None

    cpu_values = [s[k] for s in samples for k in ("cpu_host_percent", "cpu_livekit_percent") if s.get(k) is not None]
    latency = [s["join_latency_ms"] for s in samples if s.get("join_latency_ms") is not None]
    report = {
        "node": node_name,
        "url": gen.get("url"),
        "started": start,
        "ended": gen.get("ended"),
        "shape": gen.get("shape"),
        "limits": limits,
        "stop_reason": gen.get("stop_reason"),
        "participants_planned": len(people),
        "participants_joined": sum(1 for p in people if p.get("joined")),
        "join_failures": sum(1 for p in people if p.get("error") and not p["error"].startswith("cancelled")),
        "joins_cancelled": sum(1 for p in people if (p.get("error") or "").startswith("cancelled")),
        "join_errors": sorted({p["error"] for p in people if p.get("error")})[:10],
        "join_seconds": {"median": pct(joins, 0.5), "p95": pct(joins, 0.95), "max": joins[-1] if joins else None},
        "server_join_latency_ms_max": max(latency) if latency else None,
        "cpu_samples": sum(1 for s in samples if s.get("cpu_host_percent") is not None),
        "cpu_max_percent": max(cpu_values) if cpu_values else None,
        "rss_max_bytes": max((s.get("rss_bytes") or 0 for s in samples), default=0) or None,
        "loss_max_percent": max((s["loss_percent"] for s in samples if s.get("loss_percent") is not None), default=None),
        "capacity": capacity(samples, limits),
        "generator": generator_cost(gen),
        "samples": [dict(s, seconds=round(s["t"] - start, 2)) for s in samples],
        "generator_timeline": gen.get("timeline", []),
        "plot": {"file": "report.png", "x": "seconds from start",
                 "series": [dict(s, points=sum(1 for x in samples if x.get(s["name"]) is not None))
                            for s in PLOT_SERIES]},
    }
    return report


def render_plot(report):
    """The PNG: participants and subscribed tracks, CPU (host and livekit-server) with the limits,
    and packet loss with its limits, over seconds from the start."""
    samples = report["samples"]
    limits = report["limits"]

    def series(name):
        spec = next(s for s in PLOT_SERIES if s["name"] == name)
        return {"name": name.replace("_", " "), "color": tuple(spec["color"]),
                "points": [(s["seconds"], s.get(name)) for s in samples]}

    orange, red = (255, 127, 14), (200, 0, 0)
    panels = [
        {"title": "Participants, subscribed tracks", "series": [series("participants"), series("tracks_subscribed")]},
        {"title": "CPU %% (limit on %s)" % limits["cpu_basis"], "ymax": 100,
         "series": [series("cpu_host_percent"), series("cpu_livekit_percent")],
         "hlines": [{"value": limits["cpu_percent"], "color": orange, "label": "LIMIT %s" % fmt_num(limits["cpu_percent"])},
                    {"value": limits["stop_cpu_percent"], "color": red, "label": "STOP %s" % fmt_num(limits["stop_cpu_percent"])}]},
        {"title": "Packet loss %", "ymax": max([limits["stop_loss_percent"] * 1.2]
                                               + [s.get("loss_percent") or 0 for s in samples]),
         "series": [series("loss_percent")],
         "hlines": [{"value": limits["loss_percent"], "color": orange, "label": "LIMIT %s" % fmt_num(limits["loss_percent"])},
                    {"value": limits["stop_loss_percent"], "color": red, "label": "STOP %s" % fmt_num(limits["stop_loss_percent"])}]},
    ]
    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_plot import chart  # pylint: disable=import-outside-toplevel
    return chart(panels, title="LiveKit load test: %s" % report["node"])


def _mb(value):
    return "%.0f MB" % (value / 1e6) if value else "n/a"


def _v(value, unit=""):
    return "n/a" if value is None else "%s%s" % (fmt_num(value) if isinstance(value, (int, float)) else value, unit)


def render_markdown(report):
    """The Markdown report."""
    cap, gen, shape, limits = report["capacity"], report["generator"], report["shape"] or {}, report["limits"]
    largest = cap["largest_load"] or {}
    lines = [
        "# LiveKit load test: %s" % report["node"], "",
        "- Signalling URL: `%s`" % report["url"],
        "- Shape: %s room(s) x (%s publisher(s) + %s subscriber(s)), %s, ramp-up %s s, hold %s s"
        % (shape.get("rooms"), shape.get("publishers"), shape.get("subscribers"),
           "audio only" if shape.get("audio_only") else "audio + video %s at %s fps%s"
           % (shape.get("resolution"), shape.get("fps"), ", simulcast" if shape.get("simulcast") else ""),
           shape.get("ramp_up"), shape.get("duration")),
        "- Ended: %s" % (report["stop_reason"] or "after the planned duration"),
        "- Joined: %d of %d participants (%d join failures, %d not started or cut short by the end of the run); "
        "join time median %s s, p95 %s s"
        % (report["participants_joined"], report["participants_planned"], report["join_failures"], report["joins_cancelled"],
           _v(report["join_seconds"]["median"]), _v(report["join_seconds"]["p95"])),
        "- Node: %s CPU(s); CPU samples: %d; peak CPU %s %%; peak livekit-server RSS %s; peak loss %s %%"
        % (_v(cap["node_cpus"]), report["cpu_samples"], _v(report["cpu_max_percent"]), _mb(report["rss_max_bytes"]),
           _v(report["loss_max_percent"])),
        "",
        "## Capacity",
        "",
        "Limits (the ops guide's headroom rule): CPU %s %% of the node (%s CPU), packet loss %s %%. "
        "The run stops early above CPU %s %% or loss %s %% (two samples in a row) or after %s join failure(s)."
        % (fmt_num(limits["cpu_percent"]), "host" if limits["cpu_basis"] == "host" else "livekit-server's",
           fmt_num(limits["loss_percent"]), fmt_num(limits["stop_cpu_percent"]), fmt_num(limits["stop_loss_percent"]),
           limits["stop_join_failures"]),
        "",
        "| | |", "|---|---|",
        "| Largest load that stayed under the limits | %s participants, %s subscribed tracks%s |"
        % (_v(largest.get("participants")), _v(largest.get("tracks_subscribed")),
           "" if cap["limit_crossed"] else " (the limits were never crossed: the capacity is higher)"),
        "| CPU there (host / livekit-server) | %s %% / %s %% |"
        % (_v(largest.get("cpu_host_percent")), _v(largest.get("cpu_livekit_percent"))),
        "| Limit crossed | %s |"
        % (("at %s participants: %s" % (cap["crossed_at_participants"], cap["limit_reason"])) if cap["limit_crossed"] else "no"),
        "| Participants at %s %% CPU (extrapolated) | %s |" % (fmt_num(limits["cpu_percent"]), _v(cap["participants_at_cpu_limit"])),
        "| **Participants per core** (extrapolated, this shape) | **%s** |" % _v(cap["participants_per_core"]),
        "| Subscribed tracks per core | %s |" % _v(cap["subscribed_tracks_per_core"]),
        "| CPU per subscribed track | %s millicores |" % _v(cap["cpu_millicores_per_subscribed_track"]),
        "| Egress per subscribed track | %s Mbit/s |" % _v(cap["egress_mbps_per_subscribed_track"]),
        "| Load generator | %s core(s) for %s participants: %s participants per core (load host: %s CPUs) |"
        % (_v(gen["generator_cores"]), _v(gen.get("generator_peak_participants")),
           _v(gen["generator_participants_per_core"]), _v(gen["load_host_cpus"])),
        "",
        "The extrapolation is linear in participants of this room shape; a different shape (room size, "
        "video or audio only) needs its own run. See docs/sizing.md.",
        "",
        "![participants, CPU and loss over time](report.png)",
        "",
    ]
    return "\n".join(lines)
