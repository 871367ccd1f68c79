"""Monitoring with real components: Debian's exporters on a LiveKit node, Debian's Prometheus and
Alertmanager on the monitoring host, a real call, a real outage and a real webhook receiver.

* the exporters listen on the node's private address only, the firewall lets only the monitoring
  host in, their units are sandboxed, and Redis's password is in no process's arguments;
* after a two-participant call every livekit_*, redis_* and node_* series an alert rule reads exists
  in Prometheus with the rules' job and instance labels (except the series later parts provide);
* stopping livekit-server fires LivekitServerDown at the receiver; starting it resolves it;
* every panel of the Grafana dashboard returns data from that Prometheus after the call, and names
  no metric Prometheus does not have;
* the blackbox exporter reports the TURN/TLS certificate's real expiry;
* the scrape configuration for an existing Prometheus names the same jobs and targets;
* a scrape source that is not a network and an unknown receiver type stop site.yml in its first play;
* the join probe on the monitoring host reports success on both paths against the healthy node (and
  Prometheus has its series), a TURN failure with TURN/TLS blocked by the node's firewall while direct
  media still works, and a join failure with livekit-server stopped; a probe key the servers do not
  have stops site.yml in its first play.
"""

from __future__ import annotations

import calendar
import json
import os
import pathlib
import re
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import yaml

from conftest import (REPO, ArgvSampler, Node, assert_no_secret, load_nodes, participant, run_playbook,
                      security_exposure, tcp_reachable, wait_until)

RULES = "/etc/prometheus/rules/livekit.rules.yml"  # as the role installed them on the monitoring host
DASHBOARD = REPO / "roles" / "livekit_monitoring" / "files" / "dashboards" / "livekit.json"
RECEIVER = pathlib.Path(__file__).with_name("monitoring") / "receiver.py"
RECEIVER_LOG = "/var/log/lkt-receiver.jsonl"
# docs/monitoring.md, "Series and labels the rules read": the probe's series come from the probe
# host (instance lkt-mon-prom) and have tests of their own below.
LATER = re.compile(r"^livekit_probe_")
PROBE_UNIT = "livekit-join-probe"
PROBE_TEXTFILE = "/var/lib/prometheus/node-exporter/livekit_join_probe.prom"


@pytest.fixture(scope="module")
def hosts() -> dict[str, Node]:
    return {n.name: n for n in load_nodes(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"] + "/hosts")}


@pytest.fixture(scope="module")
def lk(hosts) -> Node:
    return next(host for name, host in hosts.items() if not name.endswith("-prom"))


@pytest.fixture(scope="module")
def prom(hosts) -> Node:
    return next(host for name, host in hosts.items() if name.endswith("-prom"))


@pytest.fixture(scope="module")
def call(lk: Node, api_key: str, api_secret: str) -> float:
    """Two real two-participant calls on the node, 15 s apart (and one failing run of the backup
    unit); returns the Unix time the first started. Prometheus's rate() ignores a series' first
    sample, so a fresh server's join and media histograms only show a rate once a second call adds
    to series the first one created, as on any server in use."""
    started = time.time()
    for attempt in range(2):
        if attempt:
            time.sleep(15)  # three scrapes in the scenario: the first call's series are in Prometheus
        room = f"mon-{uuid.uuid4().hex[:8]}"
        run = participant(lk, "--url", lk.ws, "--room", room, "call", "--seconds", "8", key=api_key, secret=api_secret)
        assert run.returncode == 0, run.stdout + run.stderr
    # The backup metric: one real (failing: nobody serves the bucket) run of the backup unit.
    lk.sh("systemctl start livekit-backup.service", check=False)
    return started


def query(prom: Node, expr: str) -> list[dict]:
    url = f"http://{prom.ip}:9090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def fetch_from(host: Node, url: str) -> bool:
    """Whether an HTTP GET of url from inside host succeeds (the test hosts have Python, not curl)."""
    script = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).read()"
    return host.sh(f"python3 -c '{script}' {url}", check=False).returncode == 0


def rule_series(prom: Node) -> set[str]:
    """The livekit_*, redis_* and node_* names the installed alert rules' expressions read."""
    names = set()
    for group in yaml.safe_load(prom.sh(f"cat {RULES}").stdout)["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b((?:livekit|redis|node)_[a-z0-9_]+)\b", rule["expr"]))
    return names


def test_exporters_listen_privately_behind_the_firewall(lk: Node, prom: Node) -> None:
    listening = lk.sh("ss -ltnH").stdout
    for port in (9100, 9121):
        local = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")]
        assert local == [f"{lk.ip}:{port}"], listening
    # The monitoring host gets in; the controller, on the same network, does not.
    for port in (9100, 9121, lk.prometheus_port):
        assert fetch_from(prom, f"http://{lk.ip}:{port}/metrics"), port
        assert not tcp_reachable(lk.ip, port), port
    # Alertmanager's cluster (gossip) port is not open anywhere.
    assert ":9094" not in prom.sh("ss -lntuH").stdout


def test_units_are_hardened(lk: Node, prom: Node) -> None:
    for host, unit in ((lk, "prometheus-node-exporter"), (lk, "prometheus-redis-exporter"),
                       (prom, "prometheus"), (prom, "prometheus-alertmanager"), (prom, "prometheus-blackbox-exporter")):
        assert host.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", unit
        score, worst = security_exposure(host, unit)
        assert score <= 2.0, (unit, worst)


def test_redis_password_is_in_no_argument_list(lk: Node) -> None:
    password = os.environ["LKT_REDIS_PASSWORD"]
    assert password not in lk.sh("ps -eo args").stdout
    assert lk.sh("stat -c '%a %U' /etc/default/prometheus-redis-exporter").stdout.split() == ["600", "root"]


def test_every_series_the_rules_read_exists_after_a_call(lk: Node, prom: Node, call: float) -> None:
    wanted = {name for name in rule_series(prom) if not LATER.match(name)}
    assert {"livekit_participant_join_total", "redis_up", "node_cpu_seconds_total",
            "livekit_backup_last_success_timestamp_seconds"} <= wanted

    def missing() -> dict[str, list]:
        out = {}
        for name in sorted(wanted):
            found = query(prom, f"count by (job, instance) ({name})")
            instances = {r["metric"].get("instance") for r in found}
            # node_* also come from the probe host's node-exporter (the monitoring host runs the probe).
            if lk.name not in instances or not instances <= {lk.name, prom.name}:
                out[name] = [r["metric"] for r in found]
        return out

    assert wait_until(lambda: not missing(), timeout=90, step=5) is not None, missing()
    print("series the rules read, all present:", " ".join(sorted(wanted)))
    # The funnel the join-failure rule reads got a real success from this call.
    assert query(prom, 'sum(livekit_participant_join_total{job="livekit", state="rtc_success"}) > 0')
    jobs = {(r["metric"]["job"], r["metric"]["instance"]) for r in query(prom, "up == 1")}
    assert {("livekit", lk.name), ("node", lk.name), ("redis", lk.name)} <= jobs


def query_range(prom: Node, expr: str, start: float) -> list[dict]:
    params = {"query": expr, "start": f"{start:.0f}", "end": f"{time.time():.0f}", "step": "5"}
    url = f"http://{prom.ip}:9090/api/v1/query_range?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.load(resp)
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, with Grafana's variables as Grafana would fill
    them for "All" nodes over the last 15 minutes."""
    fill = {"$instance": ".+", "$__rate_interval": "1m", "$__range": "15m"}
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in fill.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, (panel["title"], expr)
            out.append((panel["title"], expr))
    return out


@pytest.fixture(scope="module")
def tls_names(lk: Node, prom: Node) -> str:
    """The node's TURN/TLS name resolves on the monitoring host (what a real zone would give);
    returns the endpoint the blackbox exporter probes."""
    prom.sh(f"grep -q ' {lk.turn_domain}$' /etc/hosts || echo '{lk.ip} {lk.turn_domain}' >> /etc/hosts")
    return f"{lk.turn_domain}:{lk.turn_tls_port}"


def test_every_dashboard_panel_returns_data_after_a_call(lk: Node, prom: Node, call: float, tls_names: str) -> None:
    queries = [(title, expr) for title, expr in dashboard_queries()
               # The probe panels included: the monitoring host's probe has run since the converge.
               if not any(LATER.match(name) and not name.startswith("livekit_probe_")
                          for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))]
    assert len(queries) >= 15, queries

    def empty() -> list[str]:
        # A panel has data when some series has a finite value since the call started.
        return [f"{title}: {expr}" for title, expr in queries
                if not any(value not in ("NaN", "+Inf", "-Inf")
                           for series in query_range(prom, expr, call - 60) for stamp, value in series["values"])]

    assert wait_until(lambda: not empty(), timeout=120, step=10) is not None, empty()
    # And no query names a metric Prometheus does not have (a typo that happens to match nothing).
    names = set(query_names(prom))
    unknown = {title: sorted(set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr)) - names)
               for title, expr in queries}
    assert not {title: missing for title, missing in unknown.items() if missing}, unknown
    print(f"{len(queries)} panel queries, all with data:", "; ".join(title for title, expr in queries))


def query_names(prom: Node) -> list[str]:
    with urllib.request.urlopen(f"http://{prom.ip}:9090/api/v1/label/__name__/values", timeout=10) as resp:
        return json.load(resp)["data"]


def test_turn_tls_certificate_expiry_is_watched(lk: Node, prom: Node, tls_names: str) -> None:
    """The blackbox exporter on the monitoring host checks the node's TURN/TLS chain against the
    configured CA and reports the expiry of the certificate the node really serves."""
    endpoint = tls_names
    served = subprocess.run(
        ["openssl", "s_client", "-connect", f"{lk.ip}:{lk.turn_tls_port}", "-servername", lk.turn_domain],
        input="", capture_output=True, text=True, timeout=30, check=False).stdout
    not_after = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-dateopt", "iso_8601"],
                               input=served, capture_output=True, text=True, check=True).stdout
    expected = calendar.timegm(time.strptime(not_after.strip().split("=", 1)[1], "%Y-%m-%d %H:%M:%SZ"))

    def expiry() -> list[dict]:
        return query(prom, f'probe_ssl_earliest_cert_expiry{{job="blackbox", instance="{endpoint}"}}'
                           f' and on (instance) probe_success{{job="blackbox"}} == 1')

    found = wait_until(expiry, timeout=90, step=5)
    assert found, query(prom, 'probe_success{job="blackbox"}')
    assert found[0]["metric"]["host"] == lk.name
    assert abs(float(found[0]["value"][1]) - expected) < 2, (found, not_after)
    # Far from expiry: the certificate alerts stay quiet.
    assert not query(prom, 'ALERTS{alertname="LivekitCertificateExpiring"}')


def receiver_events(prom: Node) -> list[dict]:
    out = prom.sh(f"cat {RECEIVER_LOG} 2>/dev/null || true").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def server_down_status(prom: Node, instance: str) -> list[str]:
    return [alert["status"] for event in receiver_events(prom) for alert in event.get("alerts", [])
            if alert["labels"].get("alertname") == "LivekitServerDown"
            and alert["labels"].get("instance") == instance]


def test_stopping_livekit_pages_and_starting_it_resolves(lk: Node, prom: Node) -> None:
    subprocess.run(["podman", "exec", "-i", prom.name, "sh", "-c", "cat > /usr/local/bin/lkt-receiver.py"],
                   input=RECEIVER.read_text(), text=True, check=True, timeout=60)
    prom.sh(f"rm -f {RECEIVER_LOG}; systemctl stop lkt-receiver.service 2>/dev/null; "
            f"systemd-run --unit=lkt-receiver python3 /usr/local/bin/lkt-receiver.py 127.0.0.1 9099 {RECEIVER_LOG}")
    assert wait_until(lambda: "127.0.0.1:9099" in prom.sh("ss -ltnH").stdout, timeout=30)
    assert not server_down_status(prom, lk.name)

    started = time.monotonic()
    lk.sh("systemctl stop livekit-server")
    try:
        assert wait_until(lambda: "firing" in server_down_status(prom, lk.name), timeout=150, step=2), receiver_events(prom)
        print(f"LivekitServerDown reached the receiver {time.monotonic() - started:.0f} s after the stop")
    finally:
        lk.sh("systemctl start livekit-server")
    assert wait_until(lambda: "resolved" in server_down_status(prom, lk.name), timeout=150, step=2), receiver_events(prom)


def test_scrape_config_for_an_existing_prometheus(lk: Node, prom: Node, tmp_path: pathlib.Path) -> None:
    run = run_playbook("monitoring_targets.yml", "-e", f"livekit_exporters_scrape_config_dir={tmp_path}")
    assert run.returncode == 0, run.stdout + run.stderr
    expected = {"livekit": lk.prometheus_port, "node": 9100, "redis": 9121}
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(expected)
    for job, port in expected.items():
        groups = json.loads((tmp_path / f"{job}.json").read_text())
        wanted = [{"targets": [f"{lk.ip}:{port}"], "labels": {"instance": lk.name}}]
        if job == "node":  # the monitoring host runs the probe: its node-exporter publishes the results
            wanted.append({"targets": [f"{prom.ip}:{port}"], "labels": {"instance": prom.name}})
        assert groups == wanted, groups
        # The monitoring host's Prometheus reads the same targets.
        assert json.loads(prom.sh(f"cat /etc/prometheus/file_sd/{job}.json").stdout) == groups
    # The alert rules, with the inventory's thresholds: the ones the monitoring host loaded.
    assert (tmp_path / "livekit.rules.yml").read_text() == prom.sh(f"cat {RULES}").stdout
    snippet = yaml.safe_load((tmp_path / "scrape_configs.yml").read_text())
    assert sorted(job["job_name"] for job in snippet) == sorted(expected)


@pytest.mark.parametrize("extra, words", [
    ({"livekit_exporters_prometheus_sources": ["prometheus.internal"]},
     ("livekit_exporters_prometheus_sources", "prometheus.internal", "CIDR")),
    ({"livekit_monitoring_receivers": [{"name": "oncall", "type": "pager", "url": "http://127.0.0.1:9099/"}]},
     ("livekit_monitoring_receivers[0]", "pager", "email, webhook or slack")),
    ({"livekit_monitoring_alert_cpu_percent": 150},
     ("livekit_monitoring_alert_cpu_percent=150", "at most 100")),
    ({"livekit_monitoring_alert_certificate_warning_days": 2},
     ("livekit_monitoring_alert_certificate_warning_days=2", "above livekit_monitoring_alert_certificate_critical_days")),
    ({"livekit_monitoring_tls_endpoints": ["https://livekit.example.com"]},
     ("livekit_monitoring_tls_endpoints", "https://livekit.example.com", "name and port")),
    ({"livekit_join_probe_api_key": "APIprobeunknown"},
     ("livekit_join_probe_api_key", "APIprobeunknown", "is not in livekit_server_api_keys of lkt-mon-node")),
], ids=["scrape-source-not-a-cidr", "unknown-receiver-type", "cpu-threshold-out-of-range",
        "certificate-warning-below-critical", "tls-endpoint-not-name-port", "probe-key-not-in-the-servers-key-set"])
def test_bad_input_is_refused_before_any_host_changes(lk: Node, prom: Node, extra: dict, words: tuple) -> None:
    def state() -> list[str]:
        cmd = ("sha256sum /etc/default/prometheus* /etc/prometheus/*.yml /etc/prometheus/file_sd/* "
               "/etc/livekit-join-probe/* /etc/livekit/keys.yaml 2>/dev/null; "
               "nft list ruleset 2>/dev/null | sha256sum; systemctl show -p MainPID --value prometheus-alertmanager prometheus")
        return [lk.sh(cmd, check=False).stdout, prom.sh(cmd, check=False).stdout]

    before = state()
    run = run_playbook("site.yml", "-e", json.dumps(extra), timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "PLAY [Prepare the hosts]" not in output and "PLAY [Run Prometheus" not in output, output[-3000:]
    failure = output[output.find("FAILED!"):] if "FAILED!" in output else output
    for word in words:
        assert word in failure, failure[:3000]
    assert state() == before


def test_reload_keeps_prometheus_and_alertmanager_running(prom: Node) -> None:
    """A configuration change reloads (SIGHUP), it does not restart: the main PIDs stay."""
    pids = prom.sh("systemctl show -p MainPID --value prometheus prometheus-alertmanager").stdout.split()
    run = run_playbook("site.yml", "-e", json.dumps({"livekit_monitoring_group_wait": "6s",
                                                     "livekit_monitoring_evaluation_interval": "6s"}), timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "group_wait: 6s" in prom.sh("cat /etc/prometheus/alertmanager.yml").stdout
    assert "evaluation_interval: 6s" in prom.sh("cat /etc/prometheus/prometheus.yml").stdout
    assert prom.sh("systemctl show -p MainPID --value prometheus prometheus-alertmanager").stdout.split() == pids
    # Both run the new configuration.
    with urllib.request.urlopen(f"http://{prom.ip}:9090/api/v1/status/config", timeout=10) as resp:
        assert "evaluation_interval: 6s" in json.load(resp)["data"]["yaml"]
    script = ("import json, urllib.request; "
              "print(json.load(urllib.request.urlopen('http://127.0.0.1:9093/api/v2/status'))['config']['original'])")
    assert "group_wait: 6s" in prom.sh(f'python3 -c "{script}"').stdout


# ---- the join probe (docs/monitoring.md, "Probe") ------------------------------------------------
@pytest.fixture(scope="module")
def probe(lk: Node, prom: Node):
    """The probe on the monitoring host, its timer paused so only the tests' runs write results; the
    TURN name resolves to the node there (the lab has no DNS for it)."""
    prom.sh(f"grep -q ' {lk.turn_domain}$' /etc/hosts || echo '{lk.ip} {lk.turn_domain}' >> /etc/hosts")
    prom.sh(f"systemctl stop {PROBE_UNIT}.timer")
    wait_until(lambda: prom.sh(f"systemctl is-active {PROBE_UNIT}.service", check=False).stdout.strip() != "activating",
               timeout=180, step=2)
    yield prom
    prom.sh(f"systemctl start {PROBE_UNIT}.timer")


def run_probe(prom: Node) -> dict[str, dict]:
    """One probe run through its unit, as the timer starts it: {path: the JSON line it logged}."""
    since = prom.sh("date +%s.%N").stdout.strip()
    prom.sh(f"systemctl start {PROBE_UNIT}.service")
    out = prom.sh(f"journalctl -u {PROBE_UNIT}.service --since @{since} -o cat --no-pager").stdout
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["path"]: r for r in results if r["target"] == "lkt-mon-node"}


def probe_series(prom: Node, name: str, path: str) -> list[dict]:
    return query(prom, f'{name}{{instance="lkt-mon-prom", target="lkt-mon-node", path="{path}"}}')


def test_probe_succeeds_on_both_paths_and_prometheus_has_it(lk: Node, probe: Node) -> None:
    sampler = ArgvSampler([probe])
    sampler.start()
    try:
        results = run_probe(probe)
    finally:
        sampler.stop.set()
        sampler.join(timeout=60)
    print("probe results:", json.dumps(results))
    for path in ("direct", "relay_tls"):
        assert results[path]["failure"] == "none", results
        assert 0 < results[path]["join_seconds"] < 10 and 0 < results[path]["first_frame_seconds"] < 15, results
    # The key's secret: in no command line or unit, on disk for root and the probe's group only.
    assert_no_secret("the probe", json.dumps(results) + probe.sh(f"systemctl cat {PROBE_UNIT}.service").stdout,
                     sampler, {"probe key secret": os.environ["LKT_PROBE_API_SECRET"]})
    assert probe.sh("stat -c '%a %U %G' /etc/livekit-join-probe/api-secret").stdout.split() == ["640", "root", "livekit-probe"]
    assert os.environ["LKT_PROBE_API_SECRET"] not in probe.sh(f"systemctl show -p Environment {PROBE_UNIT}.service").stdout
    # The textfile series, written atomically by the probe's user, read by node-exporter.
    text = probe.sh(f"cat {PROBE_TEXTFILE}").stdout
    assert 'livekit_probe_success{target="lkt-mon-node",path="relay_tls",failure="none"} 1' in text, text
    assert probe.sh(f"stat -L -c '%U' {PROBE_TEXTFILE}").stdout.strip() == "livekit-probe"

    def in_prometheus() -> bool:
        return all(
            [float(r["value"][1]) for r in probe_series(probe, "livekit_probe_success", path)
             if r["metric"]["failure"] == "none"] == [1.0]
            and probe_series(probe, "livekit_probe_join_seconds", path)
            and probe_series(probe, "livekit_probe_first_frame_seconds", path)
            for path in ("direct", "relay_tls"))

    assert wait_until(in_prometheus, timeout=60, step=3), query(probe, '{__name__=~"livekit_probe_.*"}')
    assert query(probe, 'time() - livekit_probe_last_run_timestamp_seconds{instance="lkt-mon-prom", target="lkt-mon-node"} < 300')


def test_probe_unit_is_hardened(probe: Node) -> None:
    score, worst = security_exposure(probe, f"{PROBE_UNIT}.service")
    assert score <= 2.0, worst
    assert probe.sh(f"systemctl show -p User --value {PROBE_UNIT}.service").stdout.strip() == "livekit-probe"
    limit = probe.sh(f"systemctl show -p TimeoutStartUSec --value {PROBE_UNIT}.service").stdout.strip()
    assert limit not in ("", "infinity"), limit


def test_probe_reports_a_turn_failure_when_turn_tls_is_blocked(lk: Node, probe: Node) -> None:
    """TURN/TLS on 443 dropped by the node's firewall (a table of the test's own, before the
    collection's): relay_tls fails and says why, direct media still works."""
    lk.sh(f"nft add table inet lkt_test_block && nft add chain inet lkt_test_block input "
          f"'{{ type filter hook input priority -10; }}' && nft add rule inet lkt_test_block input "
          f"ip saddr {probe.ip} tcp dport {lk.turn_tls_port} drop")
    try:
        results = run_probe(probe)
    finally:
        lk.sh("nft delete table inet lkt_test_block", check=False)
    print("probe results with TURN/TLS blocked:", json.dumps(results))
    assert results["direct"]["failure"] == "none", results
    assert results["relay_tls"]["failure"] == "timeout", results

    def turn_failure_in_prometheus() -> bool:
        return [(r["metric"]["failure"], r["value"][1]) for r in probe_series(probe, "livekit_probe_success", "relay_tls")] \
            == [("timeout", "0")]

    assert wait_until(turn_failure_in_prometheus, timeout=60, step=3), probe_series(probe, "livekit_probe_success", "relay_tls")
    # A failed path leaves no join or first-frame time behind.
    assert not probe_series(probe, "livekit_probe_join_seconds", "relay_tls")
    assert probe_series(probe, "livekit_probe_join_seconds", "direct")


def test_probe_reports_a_join_failure_when_the_server_is_stopped(lk: Node, probe: Node) -> None:
    lk.sh("systemctl stop livekit-server")
    try:
        results = run_probe(probe)
    finally:
        lk.sh("systemctl start livekit-server")
    print("probe results with livekit-server stopped:", json.dumps(results))
    for path in ("direct", "relay_tls"):
        assert results[path]["failure"] == "error" and "refused" in results[path]["detail"], results
    assert wait_until(lambda: tcp_reachable(lk.ip, lk.port), timeout=60)
    # And it recovers with the server.
    assert wait_until(lambda: run_probe(probe)["direct"]["failure"] == "none", timeout=120, step=5)
