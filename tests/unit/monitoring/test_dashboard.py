"""The Grafana dashboard (roles/livekit_monitoring/files/dashboards/livekit.json) imports anywhere:
its Prometheus is a variable, every panel and query uses it, panel ids are unique, and every livekit_*
name a query reads is one livekit-server 1.13.5 exports or one docs/monitoring.md defines. That every
query returns data is proven against a real Prometheus in tests/integration/test_monitoring.py."""

from __future__ import annotations

import json
import pathlib
import re

from test_rules import SCRAPE, documented_series

REPO = pathlib.Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "roles" / "livekit_monitoring" / "files" / "dashboards" / "livekit.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def targets():
    return [(panel, target) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def test_the_prometheus_is_chosen_on_import():
    variables = {var["name"]: var for var in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["datasource"] == DATASOURCE
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
    for panel, target in targets():
        assert target["datasource"] == DATASOURCE, panel["title"]


def test_panels_are_distinct_and_described():
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"] and panel["description"], panel["title"]
    ref_ids = [[target["refId"] for target in panel.get("targets", [])] for panel in panels]
    assert all(len(refs) == len(set(refs)) for refs in ref_ids)


def test_what_the_issue_asks_to_see_is_on_it():
    exprs = " ".join(target["expr"] for panel, target in targets())
    for name in ("livekit_room_total", "livekit_participant_total", "livekit_track_published_total",
                 "livekit_session_join_latency_ms_bucket", "livekit_participant_join_total",
                 "livekit_packet_loss_percent_sum", "livekit_jitter_us_bucket", "livekit_rtt_ms_bucket",
                 "node_cpu_seconds_total", "process_resident_memory_bytes", "redis_memory_used_bytes",
                 "livekit_backup_last_success_timestamp_seconds", "probe_ssl_earliest_cert_expiry",
                 "livekit_probe_success"):
        assert name + "{" in exprs, name


def test_every_livekit_name_is_exported_or_specified():
    exported = {line for line in SCRAPE.read_text().splitlines() if line and not line.startswith("#")}
    own = documented_series()
    for panel, target in targets():
        for name in set(re.findall(r"\b(livekit_[a-z_]+)\{", target["expr"])):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert {name, base} & (exported | own), "%s (panel %s) is neither exported nor specified" % (
                name, panel["title"])
