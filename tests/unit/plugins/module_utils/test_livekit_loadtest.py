"""The load test's numbers: samples from two readings of the node, the capacity the report gives
(largest load under the limits, the two-samples rule, the extrapolation) and the PNG the report
draws. The real node, generator and SDK are exercised by tests/integration/test_loadtest.py."""

from __future__ import annotations

import pathlib
import re

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_loadtest import (
    PLOT_SERIES,
    build_report,
    capacity,
    make_sample,
    node_counters,
    parse_metrics,
    render_markdown,
    render_plot,
)
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_plot import read_png

NAMES = pathlib.Path(__file__).resolve().parents[2] / "monitoring" / "livekit-1.13.5-metric-names.txt"
LIMITS = {"cpu_percent": 70, "loss_percent": 3, "stop_cpu_percent": 85, "stop_loss_percent": 5,
          "stop_join_failures": 1, "cpu_basis": "host"}

METRICS = """# HELP livekit_participant_total x
livekit_participant_total{node_id="ND_a",node_type="SERVER"} 6
livekit_room_total{node_id="ND_a",node_type="SERVER"} 2
livekit_track_subscribed_total{kind="AUDIO",node_id="ND_a"} 4
livekit_track_subscribed_total{kind="VIDEO",node_id="ND_a"} 4
livekit_track_published_total{kind="AUDIO",node_id="ND_a"} 2
livekit_packet_loss_percent_sum{country="",direction="incoming",source="CAMERA",type="VIDEO"} %s
livekit_packet_loss_percent_count{country="",direction="incoming",source="CAMERA",type="VIDEO"} %s
livekit_packet_loss_percent_sum{country="",direction="outgoing",source="CAMERA",type="VIDEO"} 0
livekit_packet_loss_percent_count{country="",direction="outgoing",source="CAMERA",type="VIDEO"} %s
livekit_session_join_latency_ms_sum{node_id="ND_a",protocol_version="18"} %s
livekit_session_join_latency_ms_count{node_id="ND_a",protocol_version="18"} %s
livekit_packet_bytes{country="",direction="outgoing",transmission="initial"} %s
process_resident_memory_bytes 7.702528e+07
"""


def reading(t, busy, total, proc, loss_sum, loss_count, join_sum, join_count, out_bytes):
    text = METRICS % (loss_sum, loss_count, loss_count, join_sum, join_count, out_bytes)
    return {"t": t, "host": (busy, total, 2), "proc": (proc, 80 << 20), "node": node_counters(parse_metrics(text))}


def test_sample_turns_counters_into_rates_and_means():
    before = reading(100.0, 1000, 4000, 500, 10.0, 100, 300, 5, 0)
    after = reading(102.0, 1300, 4400, 560, 50.0, 120, 400, 7, 2_000_000)
    sample = make_sample(before, after, hz=100)
    assert sample["cpu_host_percent"] == 75.0  # 300 busy of 400 jiffies
    assert sample["cpu_livekit_percent"] == 15.0  # 60 jiffies = 0.6 s in 2 s on 2 CPUs
    assert sample["loss_in_percent"] == 2.0  # 40 percent-points over 20 reports
    assert sample["loss_out_percent"] == 0.0
    assert sample["loss_percent"] == 2.0
    assert sample["join_latency_ms"] == 50.0
    assert sample["egress_mbps"] == 8.0
    assert (sample["participants"], sample["tracks_subscribed"], sample["rss_bytes"]) == (6, 8, 80 << 20)


def test_sampler_reads_only_series_livekit_server_has():
    """Every livekit_* name the sample reads is in a real 1.13.5 scrape (not the seeds' names)."""
    known = {re.sub(r"_(sum|count|bucket)$", "", line.strip())
             for line in NAMES.read_text().splitlines() if line and not line.startswith("#")}
    source = (pathlib.Path(__file__).resolve().parents[4] / "plugins" / "module_utils" / "livekit_loadtest.py").read_text()
    used = {re.sub(r"_(sum|count)$", "", name) for name in re.findall(r'"(livekit_[a-z_]+)"', source)}
    assert used and used <= known, sorted(used - known)


def ramp(cpus, losses=None):
    """Samples of a run where participants grow by 10 per sample and CPU is given per sample."""
    losses = losses or [0.0] * len(cpus)
    return [{"t": 1000.0 + 2 * i, "cpus": 2, "participants": 10 * (i + 1), "tracks_subscribed": 20 * (i + 1),
             "cpu_host_percent": cpu, "cpu_livekit_percent": cpu / 2, "loss_percent": loss, "egress_mbps": 20.0 * (i + 1)}
            for i, (cpu, loss) in enumerate(zip(cpus, losses))]


def test_largest_load_is_before_two_samples_over_the_limit():
    # One sample over 70 % (noise) is not the limit; two in a row are.
    result = capacity(ramp([20, 40, 72, 60, 65, 75, 80, 90]), LIMITS)
    assert result["limit_crossed"] and result["crossed_at_participants"] == 60
    assert result["largest_load"]["participants"] == 50
    # 50 participants at 65 % of 2 CPUs: 70 % holds 53, 26.9 per core.
    assert result["participants_at_cpu_limit"] == 53 and result["participants_per_core"] == 26.9
    assert result["egress_mbps_per_subscribed_track"] == 1.0
    assert result["cpu_millicores_per_subscribed_track"] == 13.0  # 65 % of 2 cores over 100 tracks


def test_loss_is_a_limit_too_and_the_cpu_basis_is_chosen():
    samples = ramp([10, 20, 30, 40], losses=[0, 0.5, 4, 6])
    assert capacity(samples, LIMITS)["largest_load"]["participants"] == 20
    assert "loss" in capacity(samples, LIMITS)["limit_reason"]
    hot = ramp([50, 75, 80, 90])
    assert capacity(hot, LIMITS)["largest_load"]["participants"] == 10
    assert capacity(hot, dict(LIMITS, cpu_basis="livekit"))["largest_load"]["participants"] == 40  # half of it


def test_no_crossing_reports_the_peak_and_extrapolates():
    result = capacity(ramp([5, 10, 14, 14]), LIMITS)
    assert not result["limit_crossed"] and result["largest_load"]["participants"] == 40
    assert result["participants_at_cpu_limit"] == 200


def test_report_png_and_markdown():
    samples = [dict(s, seconds=0) for s in ramp([10, 20, 30, 40, 50])]
    generator = {"started": 1000.0, "ended": 1010.0, "url": "ws://n:7880", "cpus": 2,
                 "shape": {"rooms": 2, "publishers": 1, "subscribers": 2, "audio_only": False, "resolution": "640x360",
                           "fps": 15, "simulcast": True, "ramp_up": 4, "duration": 10},
                 "participants": [{"joined": True, "join_seconds": 0.2 + i / 10, "error": None} for i in range(5)]
                 + [{"joined": False, "join_seconds": None, "error": "timeout after 20 s"},
                    {"joined": False, "join_seconds": None, "error": "cancelled (the run ended)"}],
                 "timeline": [{"participants": 5, "generator_cores": 0.25}, {"participants": 5, "generator_cores": 0.35}]}
    report = build_report(generator, samples, LIMITS, "lk-1")
    assert report["participants_joined"] == 5 and report["join_failures"] == 1 and report["joins_cancelled"] == 1
    assert report["generator"]["generator_participants_per_core"] == 16.7  # 5 on 0.3 cores
    assert [s["name"] for s in report["plot"]["series"]] == [s["name"] for s in PLOT_SERIES]
    width, height, rows = read_png(render_plot(report))
    assert (width, height) == (960, 692)
    pixels = b"".join(rows)
    for series in PLOT_SERIES:
        assert bytes(series["color"]) in pixels, series["name"]
    text = render_markdown(report)
    assert "5 of 7 participants (1 join failures, 1 not started" in text and "**Participants per core**" in text
