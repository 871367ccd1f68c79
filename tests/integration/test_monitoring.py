"""Monitoring with real components: Debian's exporters on a LiveKit node, Debian's Prometheus and
Alertmanager on the monitoring host, a real call, a real outage and a real webhook receiver.

* the exporters listen on the node's private address only, the firewall lets only the monitoring
  host in, their units are sandboxed, and Redis's password is in no process's arguments;
* after a two-participant call every livekit_*, redis_* and node_* series an alert rule reads exists
  in Prometheus with the rules' job and instance labels (except the series later parts provide);
* stopping livekit-server fires LivekitServerDown at the receiver; starting it resolves it;
* the scrape configuration for an existing Prometheus names the same jobs and targets;
* a scrape source that is not a network and an unknown receiver type stop site.yml in its first play.
"""

from __future__ import annotations

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

from conftest import REPO, Node, load_nodes, participant, run_playbook, tcp_reachable, wait_until

RULES = REPO / "roles" / "livekit_monitoring" / "files" / "rules" / "livekit.rules.yml"
RECEIVER = pathlib.Path(__file__).with_name("monitoring") / "receiver.py"
RECEIVER_LOG = "/var/log/lkt-receiver.jsonl"
# docs/monitoring.md, "To be written by later parts of the collection".
LATER = re.compile(r"^livekit_probe_")


@pytest.fixture(scope="module")
def hosts() -> dict[str, Node]:
    return {n.name: n for n in load_nodes(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"] + "/hosts")}


@pytest.fixture(scope="module")
def lk(hosts) -> Node:
    return hosts["lkt-mon-node"]


@pytest.fixture(scope="module")
def prom(hosts) -> Node:
    return hosts["lkt-mon-prom"]


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


def rule_series() -> set[str]:
    """The livekit_*, redis_* and node_* names the alert rules' expressions read."""
    names = set()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b((?:livekit|redis|node)_[a-z0-9_]+)\b", rule["expr"]))
    return names


def exposure(host: Node, unit: str) -> float:
    out = host.sh(f"systemd-analyze security {unit} --no-pager", check=False).stdout
    line = [line for line in out.splitlines() if "Overall exposure level" in line][-1]
    return float(line.split(":")[1].split()[0])


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
                       (prom, "prometheus"), (prom, "prometheus-alertmanager")):
        assert host.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", unit
        assert exposure(host, unit) <= 2.0, unit


def test_redis_password_is_in_no_argument_list(lk: Node) -> None:
    password = os.environ["LKT_REDIS_PASSWORD"]
    assert password not in lk.sh("ps -eo args").stdout
    assert lk.sh("stat -c '%a %U' /etc/default/prometheus-redis-exporter").stdout.split() == ["600", "root"]


def test_every_series_the_rules_read_exists_after_a_call(lk: Node, prom: Node, api_key: str, api_secret: str) -> None:
    room = f"mon-{uuid.uuid4().hex[:8]}"
    run = participant(lk, "--url", lk.ws, "--room", room, "call", "--seconds", "8", key=api_key, secret=api_secret)
    assert run.returncode == 0, run.stdout + run.stderr
    # The backup metric: one real (failing: nobody serves the bucket) run of the backup unit.
    lk.sh("systemctl start livekit-backup.service", check=False)

    wanted = {name for name in rule_series() if not LATER.match(name)}
    assert {"livekit_participant_join_total", "redis_up", "node_cpu_seconds_total",
            "livekit_backup_last_success_timestamp_seconds"} <= wanted

    def missing() -> dict[str, list]:
        out = {}
        for name in sorted(wanted):
            found = query(prom, f"count by (job, instance) ({name})")
            if not found or {r["metric"].get("instance") for r in found} != {"lkt-mon-node"}:
                out[name] = [r["metric"] for r in found]
        return out

    assert wait_until(lambda: not missing(), timeout=90, step=5) is not None, missing()
    print("series the rules read, all present:", " ".join(sorted(wanted)))
    # The funnel the join-failure rule reads got a real success from this call.
    assert query(prom, 'sum(livekit_participant_join_total{job="livekit", state="rtc_success"}) > 0')
    jobs = {(r["metric"]["job"], r["metric"]["instance"]) for r in query(prom, "up == 1")}
    assert {("livekit", "lkt-mon-node"), ("node", "lkt-mon-node"), ("redis", "lkt-mon-node")} <= jobs


def receiver_events(prom: Node) -> list[dict]:
    out = prom.sh(f"cat {RECEIVER_LOG} 2>/dev/null || true").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def server_down_status(prom: Node) -> list[str]:
    return [alert["status"] for event in receiver_events(prom) for alert in event.get("alerts", [])
            if alert["labels"].get("alertname") == "LivekitServerDown"
            and alert["labels"].get("instance") == "lkt-mon-node"]


def test_stopping_livekit_pages_and_starting_it_resolves(lk: Node, prom: Node) -> None:
    subprocess.run(["podman", "exec", "-i", prom.name, "sh", "-c", "cat > /usr/local/bin/lkt-receiver.py"],
                   input=RECEIVER.read_text(), text=True, check=True, timeout=60)
    prom.sh(f"rm -f {RECEIVER_LOG}; systemctl stop lkt-receiver.service 2>/dev/null; "
            f"systemd-run --unit=lkt-receiver python3 /usr/local/bin/lkt-receiver.py 127.0.0.1 9099 {RECEIVER_LOG}")
    assert wait_until(lambda: "127.0.0.1:9099" in prom.sh("ss -ltnH").stdout, timeout=30)
    assert not server_down_status(prom)

    started = time.monotonic()
    lk.sh("systemctl stop livekit-server")
    try:
        assert wait_until(lambda: "firing" in server_down_status(prom), timeout=150, step=2), receiver_events(prom)
        print(f"LivekitServerDown reached the receiver {time.monotonic() - started:.0f} s after the stop")
    finally:
        lk.sh("systemctl start livekit-server")
    assert wait_until(lambda: "resolved" in server_down_status(prom), timeout=150, step=2), receiver_events(prom)


def test_scrape_config_for_an_existing_prometheus(lk: Node, prom: Node, tmp_path: pathlib.Path) -> None:
    run = run_playbook("monitoring_targets.yml", "-e", f"livekit_exporters_scrape_config_dir={tmp_path}")
    assert run.returncode == 0, run.stdout + run.stderr
    expected = {"livekit": lk.prometheus_port, "node": 9100, "redis": 9121}
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(expected)
    for job, port in expected.items():
        groups = json.loads((tmp_path / f"{job}.json").read_text())
        assert groups == [{"targets": [f"{lk.ip}:{port}"], "labels": {"instance": "lkt-mon-node"}}], groups
        # The monitoring host's Prometheus reads the same targets.
        assert json.loads(prom.sh(f"cat /etc/prometheus/file_sd/{job}.json").stdout) == groups
    snippet = yaml.safe_load((tmp_path / "scrape_configs.yml").read_text())
    assert sorted(job["job_name"] for job in snippet) == sorted(expected)


@pytest.mark.parametrize("extra, words", [
    ({"livekit_exporters_prometheus_sources": ["prometheus.internal"]},
     ("livekit_exporters_prometheus_sources", "prometheus.internal", "CIDR")),
    ({"livekit_monitoring_receivers": [{"name": "oncall", "type": "pager", "url": "http://127.0.0.1:9099/"}]},
     ("livekit_monitoring_receivers[0]", "pager", "email, webhook or slack")),
], ids=["scrape-source-not-a-cidr", "unknown-receiver-type"])
def test_bad_input_is_refused_before_any_host_changes(lk: Node, prom: Node, extra: dict, words: tuple) -> None:
    def state() -> list[str]:
        cmd = ("sha256sum /etc/default/prometheus* /etc/prometheus/*.yml /etc/prometheus/file_sd/* 2>/dev/null; "
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
