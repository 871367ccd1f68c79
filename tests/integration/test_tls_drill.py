"""Disaster recovery with the proxy, in both TURN modes (molecule/tls; runs after test_tls.py).

lkt-tls (sni mode, HTTP-01) and lkt-tls-d (direct mode, DNS-01) back up to MinIO on lkt-acme and are
destroyed. rebuild_drill.yml stands up the fresh hosts lkt-tls-new and lkt-tls-d-new while the zone
still points at the old addresses, so HTTP-01 cannot pass there: they must serve the backed-up
certificate (the same serial), take a real call over wss and answer TURN/TLS on 443. Then DNS moves
as the runbook says (docs/disaster-recovery.md) and certbot, with the restored account and renewal
settings, renews on the new hosts. The drill runs with -vvv --diff: no secret (API secret, Redis
password, age identity, S3 key, the certificates' keys, the TSIG key) in its output or in any
command line sampled on the controller and the new hosts.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from conftest import PARTICIPANT, Node, load_nodes, run_playbook, run_playbook_watched
from test_tls import DOMAIN, TURN_DOMAIN, force_renewal, pebble_root_pem, private_hosts, served_certificate, stun_binding, turn_tls

DIRECT_DOMAIN = "lkd.lkt.test"  # molecule/tls/host_vars/lkt-tls-d.yml
DIRECT_TURN_DOMAIN = "turnd.lkt.test"
OLD = {"sni": "lkt-tls", "direct": "lkt-tls-d"}
NEW = {"sni": "lkt-tls-new", "direct": "lkt-tls-d-new"}
SCENARIO = pathlib.Path(__file__).resolve().parents[2] / "molecule" / "tls"
STAND_IN = "/etc/letsencrypt/live/livekit/STAND-IN"


@pytest.fixture(scope="module")
def nodes(request: pytest.FixtureRequest) -> dict[str, Node]:
    return {n.name: n for n in load_nodes(request.config.getoption("--hosts-dir"))}


def turn_address(node: Node) -> str:
    addresses = node.sh("ip -o -4 address show scope global | awk '{print $4}'").stdout.split()
    others = [a.split("/")[0] for a in addresses if a.split("/")[0] != node.ip]
    assert len(others) == 1, addresses
    return others[0]


def move_dns(acme: Node, records: dict[str, str]) -> None:
    """Point the zone's names at new addresses through BIND's dynamic update, as at a DNS provider."""
    script = "server 127.0.0.1\nzone lkt.test\n" + "".join(
        f"update delete {name}. A\nupdate add {name}. 5 A {ip}\n" for name, ip in records.items()) + "send\n"
    subprocess.run(["podman", "exec", "-i", acme.name, "nsupdate", "-k", "/etc/bind/lkt-update.key"],
                   input=script, text=True, check=True, capture_output=True, timeout=30)
    for name, ip in records.items():
        answer = acme.sh(f"dig +short @127.0.0.1 {name} A").stdout.split()
        assert answer == [ip], (name, answer)


def join_over_wss(ip: str, root: str, api_key: str, api_secret: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LIVEKIT_API_KEY=api_key, LIVEKIT_API_SECRET=api_secret, SSL_CERT_FILE=root)
    return subprocess.run(
        [*private_hosts(tmp_path / "hosts", ip, [DOMAIN, TURN_DOMAIN]), sys.executable, str(PARTICIPANT),
         "--url", f"wss://{DOMAIN}", "--room", "after-the-drill", "--timeout", "90", "call", "--seconds", "4"],
        capture_output=True, text=True, env=env, timeout=150, check=False,
    )


def test_drill_with_the_proxy_restores_the_certificate_and_renews_after_dns_moves(
        nodes: dict[str, Node], api_key: str, api_secret: str, tmp_path: pathlib.Path) -> None:
    acme = nodes["lkt-acme"]
    root = tmp_path / "pebble-root.pem"
    root.write_text(pebble_root_pem(acme))
    old_sni, old_direct = nodes[OLD["sni"]], nodes[OLD["direct"]]
    before = {
        "sni": served_certificate(old_sni.ip, DOMAIN, str(root)),
        "direct": served_certificate(old_direct.ip, DIRECT_DOMAIN, str(root)),
    }
    second_address = turn_address(old_direct)
    # Secrets the drill moves besides the run's own: the certificates' keys and the DNS-01 TSIG key.
    secrets = {f"TLS key of {node.name}": node.sh("cat /etc/letsencrypt/live/livekit/privkey.pem").stdout.split("\n")[1]
               for node in (old_sni, old_direct)}
    secrets["TSIG secret"] = (pathlib.Path(os.environ["LKT_STATE_DIR"]) / "pebble" / "tsig.secret").read_text().strip()

    result = run_playbook("backup.yml", "--limit", ",".join(OLD.values()))
    assert result.returncode == 0, result.stdout[-3000:]
    for name in OLD.values():
        subprocess.run(["podman", "rm", "--force", "--time", "5", name], check=True, capture_output=True, timeout=120)

    # The fresh hosts get the old hosts' inventory settings; the direct-mode one its second address.
    host_vars = {NEW["sni"]: {}, NEW["direct"]: yaml.safe_load((SCENARIO / "host_vars" / "lkt-tls-d.yml").read_text())}
    for mode in ("sni", "direct"):
        host_vars[NEW[mode]]["livekit_backup_restore_source_host"] = OLD[mode]
    new_sni, new_direct = nodes[NEW["sni"]], nodes[NEW["direct"]]
    # A replacement has addresses of its own (reusing the old one would also meet stale ARP entries).
    second_address = second_address.rsplit(".", 1)[0] + ".251"
    host_vars[NEW["direct"]]["lkt_turn_address"] = second_address
    prefix = new_direct.sh("ip -o -4 address show scope global | awk '{print $4}'").stdout.split()[0].split("/")[1]
    new_direct.sh(f"ip address add {second_address}/{prefix} dev $(ip -o -4 route show default | awk '{{print $5}}')")
    inventory = tmp_path / "drill-inventory.yml"
    inventory.write_text(json.dumps({"livekit": {"hosts": host_vars}, "redis": {"hosts": {n: None for n in host_vars}}}))
    reports = tmp_path / "drill-reports"
    result = run_playbook_watched("rebuild_drill.yml", "-i", str(inventory), "--limit", f"{NEW['sni']},{NEW['direct']},localhost",
                                  "-e", f"livekit_drill_report_dir={reports}", nodes=[new_sni, new_direct],
                                  extra_secrets=secrets, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # DNS still names the old addresses: the new hosts serve the backed-up certificate, no stand-in.
    after = {
        "sni": served_certificate(new_sni.ip, DOMAIN, str(root)),
        "direct": served_certificate(new_direct.ip, DIRECT_DOMAIN, str(root)),
    }
    assert after == before
    for node in (new_sni, new_direct):
        assert node.sh(f"test -e {STAND_IN}", check=False).returncode != 0, f"{node.name} still serves the stand-in"
        # The restored key keeps the group nginx (www-data, not root) reads it through.
        key = node.sh("stat -L -c '%a %U %G' /etc/letsencrypt/live/livekit/privkey.pem").stdout.split()
        assert key == ["640", "root", "www-data"], (node.name, key)
    with turn_tls(new_sni.ip, str(root)) as stream:
        assert stream.getpeercert()["serialNumber"] == before["sni"]["serial"] and stun_binding(stream)
    with turn_tls(second_address, str(root), DIRECT_TURN_DOMAIN) as stream:
        assert stream.getpeercert()["serialNumber"] == before["direct"]["serial"] and stun_binding(stream)
    call = join_over_wss(new_sni.ip, str(root), api_key, api_secret, tmp_path)
    assert call.returncode == 0, call.stdout[-2000:] + call.stderr[-2000:]

    report = json.loads(next(reports.glob("drill-*.json")).read_text())
    assert sorted(h["backup_of"] for h in report["hosts"]) == sorted(OLD.values())
    print(f"\nproxy drill (both modes): RTO {report['rto_seconds']} s (site.yml {report['steps']['site_yml_seconds']} s, "
          f"restore {report['steps']['restore_seconds']} s)")

    # DNS moves; certbot renews with the restored account and settings: HTTP-01 now reaches the new
    # sni host through nginx, DNS-01 the direct one.
    move_dns(acme, {DOMAIN: new_sni.ip, TURN_DOMAIN: new_sni.ip, DIRECT_DOMAIN: new_direct.ip})
    for mode, node, name in (("sni", new_sni, DOMAIN), ("direct", new_direct, DIRECT_DOMAIN)):
        force_renewal(node)
        renewed = served_certificate(node.ip, name, str(root))
        assert renewed["serial"] != before[mode]["serial"] and renewed["names"] == before[mode]["names"], renewed
