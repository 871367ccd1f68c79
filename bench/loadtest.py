"""Summarise bench/loadtest.sh's reports as Markdown: per room shape, what joined, the largest load
under the limits, the extrapolated capacity per core and the load generator's own cost.
Usage: python bench/loadtest.py REPORTS_DIR SHAPE..."""

from __future__ import annotations

import json
import pathlib
import statistics
import sys


def row(shape: str, report: dict) -> str:
    cap, gen = report["capacity"], report["generator"]
    largest = cap["largest_load"] or {}
    loaded = [s for s in report["samples"] if s.get("participants")]
    load1 = [s["load1"] for s in report["samples"] if s.get("load1") is not None]
    crossed = f"at {cap['crossed_at_participants']}: {cap['limit_reason']}" if cap["limit_crossed"] else "no"
    return " | ".join(str(x) for x in [
        "", shape, f"{report['participants_joined']}/{report['participants_planned']}",
        report["stop_reason"] or "planned end", crossed,
        f"{largest.get('participants')} ({largest.get('tracks_subscribed')} tracks)",
        f"{largest.get('cpu_livekit_percent')} / {largest.get('cpu_host_percent')}",
        cap["participants_per_core"], cap["subscribed_tracks_per_core"], cap["cpu_millicores_per_subscribed_track"],
        cap["egress_mbps_per_subscribed_track"],
        f"{statistics.median(s['rss_bytes'] for s in loaded if s.get('rss_bytes')) / 1e6:.0f}" if loaded else "n/a",
        report["join_seconds"]["median"], report["loss_max_percent"],
        f"{gen['generator_cores']} cores / {gen['generator_participants_per_core']}",
        f"{max(load1):.1f}" if load1 else "n/a", ""]).strip()


def main(reports: str, shapes: list[str]) -> None:
    print("| shape | joined | ended | limit crossed | largest load under the limits | livekit / host CPU % there "
          "| participants per core (extrapolated to 70 %) | subscribed tracks per core | millicores per track "
          "| egress Mbit/s per track | livekit RSS MB (median) | join s (median) | max loss % "
          "| generator: cores / participants per core | max load average |")
    print("|" + "---|" * 15)
    for shape in shapes:
        found = sorted(pathlib.Path(reports, shape).glob("*/report.json"))
        if found:
            print(row(shape, json.loads(found[-1].read_text())))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
