"""The alert rules (roles/livekit_monitoring/templates/livekit.rules.yml.j2, rendered with the role's
default thresholds as the role renders it): promtool accepts them, its unit tests pass, other
thresholds land where they should, every alert is proven to fire and to stay quiet, every runbook link lands on a section
of docs/monitoring.md, and every livekit_* name is one livekit-server 1.13.5 exports or one the docs
define for the collection's own exporters."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import jinja2
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "roles" / "livekit_monitoring" / "templates" / "livekit.rules.yml.j2"
DEFAULTS = REPO / "roles" / "livekit_monitoring" / "defaults" / "main.yml"
TESTS = pathlib.Path(__file__).resolve().parent / "livekit.rules.test.yml"
DOC = REPO / "docs" / "monitoring.md"
SCRAPE = REPO / "tests" / "unit" / "monitoring" / "livekit-1.13.5-metric-names.txt"
RUNBOOK_BASE = "https://github.com/selfhosted-livekit/selfhosted.livekit/blob/main/docs/monitoring.md#"


def promtool():
    """scripts/test.sh exports PROMTOOL (Debian 12's, unpacked by scripts/setup.sh unit)."""
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("promtool not found: run scripts/setup.sh unit (it unpacks Debian's prometheus package) "
                    "or set PROMTOOL; the alert rules are not tested without it")
    return path


def run(*args):
    return subprocess.run([promtool(), *args], capture_output=True, text=True, check=False)


def thresholds():
    """The role's default livekit_monitoring_alert_* values."""
    defaults = yaml.safe_load(DEFAULTS.read_text())
    return {name: value for name, value in defaults.items() if name.startswith("livekit_monitoring_alert_")}


def render(**overrides):
    """The rules as the role's template task writes them ([[ ]] variables, Prometheus's {{ }} kept)."""
    env = jinja2.Environment(variable_start_string="[[", variable_end_string="]]",
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    values = dict(thresholds(), ansible_managed="Ansible managed")
    values.update(overrides)
    return env.from_string(TEMPLATE.read_text()).render(**values)


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory):
    """The rendered rules next to a copy of the promtool unit tests that load them."""
    where = tmp_path_factory.mktemp("rules")
    (where / "livekit.rules.yml").write_text(render())
    (where / TESTS.name).write_text(TESTS.read_text())
    return where / "livekit.rules.yml"


def alerts():
    rules = yaml.safe_load(render())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules(rules_file):
    result = run("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(rules_file):
    result = run("test", "rules", str(rules_file.with_name(TESTS.name)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_threshold_is_used_and_other_values_land_in_the_rules(tmp_path):
    template = TEMPLATE.read_text()
    for name in thresholds():
        assert "[[ %s ]]" % name in template, "%s is not used by the rules" % name
    changed = render(livekit_monitoring_alert_cpu_percent=85, livekit_monitoring_alert_backup_max_age_hours=50,
                     livekit_monitoring_alert_join_latency_ms=800)
    (tmp_path / "livekit.rules.yml").write_text(changed)
    result = run("check", "rules", str(tmp_path / "livekit.rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    exprs = {rule["alert"] + rule["labels"]["severity"]: " ".join(rule["expr"].split())
             for group in yaml.safe_load(changed)["groups"] for rule in group["rules"]}
    assert exprs["LivekitHostCpuHighwarning"].endswith("> 85")
    assert "> 50 * 3600" in exprs["LivekitBackupTooOldcritical"]
    assert exprs["LivekitJoinSlowwarning"].endswith("> 800")
    assert exprs["LivekitProbeJoinSlowwarning"].endswith("> 800 / 1000")


def test_every_alert_fires_on_a_bad_series_and_stays_quiet_on_a_good_one():
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    fired, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            if not expected:
                quiet.add(check["alertname"])
            for alert in expected:
                fired.add((check["alertname"], alert["exp_labels"]["severity"]))
    for rule in alerts():
        assert (rule["alert"], rule["labels"]["severity"]) in fired, "no test shows %s (%s) firing" % (
            rule["alert"], rule["labels"]["severity"])
        assert rule["alert"] in quiet, "no test shows %s staying quiet" % rule["alert"]


def anchors():
    """GitHub's heading anchors of docs/monitoring.md."""
    found = set()
    for line in DOC.read_text().splitlines():
        match = re.match(r"#+ (.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_every_alert_says_how_bad_what_and_where_the_runbook_is():
    known = anchors()
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert rule["annotations"].get(key), "%s has no %s" % (rule["alert"], key)
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        assert url[len(RUNBOOK_BASE):] in known, "%s links to a section docs/monitoring.md does not have" % url


def documented_series():
    """The series the collection's own exporters must provide: names in the first column of the
    tables under "Series and labels the rules read"."""
    text = DOC.read_text()
    section = text[text.index("## Series and labels the rules read"):]
    return set(re.findall(r"^\| `([a-z_]+)", section, re.M))


def test_every_livekit_name_in_the_rules_is_exported_or_specified():
    exported = {line for line in SCRAPE.read_text().splitlines() if line and not line.startswith("#")}
    own = documented_series()
    for rule in alerts():
        for name in set(re.findall(r"\blivekit_[a-z_]+", rule["expr"])):
            assert name in exported or name in own, \
                "%s (in %s) is neither exported by livekit-server 1.13.5 nor specified in docs/monitoring.md" % (
                    name, rule["alert"])
    assert {"livekit_backup_last_success_timestamp_seconds", "livekit_backup_last_attempt_ok"} <= own
