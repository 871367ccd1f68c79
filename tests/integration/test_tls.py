"""TLS on every client path of a node behind the livekit_proxy role (molecule/tls).

lkt-acme runs Pebble (Debian's package), a real ACME CA; certbot on lkt-tls obtained the
certificate for lk.lkt.test and turn.lkt.test from it over HTTP-01. The tests talk to lkt-tls as
clients would: wss:// signalling through nginx, TURN over TLS on 443 by SNI, browsers' CORS, and
the plain ports that must stay shut. Names resolve through a private /etc/hosts (a mount
namespace per client process), so the controller's own resolver is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest

from conftest import (PARTICIPANT, Node, Participant, load_nodes, make_token, private_hosts, run_playbook, security_exposure,
                      wait_until)

DOMAIN = "lk.lkt.test"  # molecule/tls/group_vars/all/tls.yml
TURN_DOMAIN = "turn.lkt.test"
ALLOWED_ORIGIN = "https://app.lkt.test"
RENEWAL_CONF = "/etc/letsencrypt/renewal/livekit.conf"


def host_named(hosts_dir: str, name: str) -> Node:
    return next(n for n in load_nodes(hosts_dir) if n.name == name)


def pebble_root_pem(acme: Node) -> str:
    """The root Pebble signs with (it makes a new one each time it starts)."""
    pem = acme.sh("curl -sf --cacert /etc/pebble/api-ca.crt https://localhost:15000/roots/0").stdout
    assert "BEGIN CERTIFICATE" in pem
    return pem


@pytest.fixture(scope="module")
def tls_node(request: pytest.FixtureRequest) -> Node:
    return host_named(request.config.getoption("--hosts-dir"), "lkt-tls")


@pytest.fixture(scope="module")
def direct_node(request: pytest.FixtureRequest) -> Node:
    return host_named(request.config.getoption("--hosts-dir"), "lkt-tls-d")


@pytest.fixture(scope="module")
def direct_turn_ip(direct_node: Node) -> str:
    """The second address, whose 443 is livekit-server's own TURN/TLS."""
    addresses = direct_node.sh("ip -o -4 address show scope global | awk '{print $4}'").stdout.split()
    others = [a.split("/")[0] for a in addresses if a.split("/")[0] != direct_node.ip]
    assert len(others) == 1, addresses
    return others[0]


@pytest.fixture(scope="module")
def acme(request: pytest.FixtureRequest) -> Node:
    return host_named(request.config.getoption("--hosts-dir"), "lkt-acme")


@pytest.fixture(scope="module")
def pebble_root(acme: Node, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("pebble") / "root.pem"
    path.write_text(pebble_root_pem(acme))
    return str(path)


@pytest.fixture(scope="module")
def resolve(tls_node: Node, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A command prefix that runs a client with both names resolving to lkt-tls."""
    return private_hosts(tmp_path_factory.mktemp("hosts") / "hosts", tls_node.ip, [DOMAIN, TURN_DOMAIN])


def served_certificate(ip: str, name: str, cafile: str) -> dict:
    """The certificate 443 presents for an SNI name, verified against cafile for that name."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((ip, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            cert = tls.getpeercert()
    return {"serial": cert["serialNumber"], "not_after": cert["notAfter"],
            "names": sorted(v for k, v in cert["subjectAltName"] if k == "DNS"),
            "issuer": dict(x[0] for x in cert["issuer"])}


def stun_binding(sock: ssl.SSLSocket) -> bool:
    """Send a STUN Binding request on a TURN/TLS stream; True when TURN answers it."""
    transaction = secrets.token_bytes(12)
    sock.sendall(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction)
    header = b""
    while len(header) < 20:
        chunk = sock.recv(20 - len(header))
        if not chunk:
            return False
        header += chunk
    kind, length, cookie = struct.unpack("!HHI", header[:8])
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return kind == 0x0101 and cookie == 0x2112A442 and header[8:20] == transaction


def turn_tls(ip: str, cafile: str, name: str = TURN_DOMAIN) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection((ip, 443), timeout=10)
    return context.wrap_socket(raw, server_hostname=name)


def force_renewal(node: Node) -> None:
    """Make the certificate due, then let certbot's own timer unit renew it as it would at night."""
    try:
        node.sh(f"sed -i 's/^renew_before_expiry.*/renew_before_expiry = 3650 days/' {RENEWAL_CONF}")
        renewal = node.sh("systemctl start certbot.service; systemctl show -p Result --value certbot.service",
                          check=False)
        if renewal.stdout.strip() != "success":  # say why: certbot's own words
            why = node.sh("journalctl -u certbot.service --no-pager -o cat -n 40; "
                          "tail -n 40 /var/log/letsencrypt/letsencrypt.log", check=False).stdout
            pytest.fail(f"certbot.service: {renewal.stdout.strip()} {renewal.stderr}\n{why}")
    finally:
        node.sh(f"sed -i 's/^renew_before_expiry.*/renew_before_expiry = 30 days/' {RENEWAL_CONF}")


def main_pid(node: Node) -> str:
    return node.sh("systemctl show -p MainPID --value livekit-server").stdout.strip()


def curl(node: Node, *args: str, resolve_to: str | None = None, cafile: str | None = None) -> tuple[str, dict]:
    """(status line, lowercased headers) of a request from the controller, headers only."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "10"]
    if resolve_to:
        cmd += ["--resolve", f"{DOMAIN}:443:{resolve_to}"]
    if cafile:
        cmd += ["--cacert", cafile]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30, check=False).stdout
    lines = out.replace("\r", "").split("\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def test_certificate_from_the_acme_ca_on_443_for_both_names(tls_node: Node, pebble_root: str) -> None:
    signalling = served_certificate(tls_node.ip, DOMAIN, pebble_root)
    turn = served_certificate(tls_node.ip, TURN_DOMAIN, pebble_root)
    assert signalling["names"] == sorted([DOMAIN, TURN_DOMAIN])
    assert "Pebble" in signalling["issuer"].get("commonName", ""), signalling
    assert turn["serial"] == signalling["serial"]


def test_untrusted_clients_are_refused(tls_node: Node) -> None:
    """Control: the checks above really verify the chain (the system roots do not know Pebble)."""
    with pytest.raises(ssl.SSLCertVerificationError):
        served_certificate(tls_node.ip, DOMAIN, cafile=None)


def test_real_client_joins_over_wss(tls_node: Node, pebble_root: str, resolve: list[str],
                                    api_key: str, api_secret: str) -> None:
    env = dict(os.environ, LIVEKIT_API_KEY=api_key, LIVEKIT_API_SECRET=api_secret, SSL_CERT_FILE=pebble_root)
    run = subprocess.run(
        [*resolve, sys.executable, str(PARTICIPANT), "--url", f"wss://{DOMAIN}", "--room", "tls-call",
         "--timeout", "90", "call", "--seconds", "6"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["video_frames_received"] > 0 and result["audio_frames_received"] > 0


def test_plain_signalling_is_not_reachable(tls_node: Node) -> None:
    # livekit-server's own port is closed to the network: only nginx on this host reaches it.
    with pytest.raises(OSError):
        socket.create_connection((tls_node.ip, tls_node.port), timeout=3).close()
    # ws:// on port 80 gets a redirect to https, never a WebSocket.
    status, headers = curl(tls_node, "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
                           "-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                           "-H", f"Host: {DOMAIN}", f"http://{tls_node.ip}/rtc")
    assert " 301" in status, status
    assert headers.get("location") == f"https://{DOMAIN}/rtc"
    # The plain TURN port behind the SNI proxy is not reachable either.
    with pytest.raises(OSError):
        socket.create_connection((tls_node.ip, 5349), timeout=3).close()


def test_cors_allows_exactly_the_listed_origin(tls_node: Node, pebble_root: str) -> None:
    url = f"https://{DOMAIN}/twirp/livekit.RoomService/ListRooms"
    preflight = ["-X", "OPTIONS", "-H", "Access-Control-Request-Method: POST",
                 "-H", "Access-Control-Request-Headers: authorization, content-type"]
    status, ok = curl(tls_node, *preflight, "-H", f"Origin: {ALLOWED_ORIGIN}", url,
                      resolve_to=tls_node.ip, cafile=pebble_root)
    assert " 204" in status, status
    assert ok.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert "POST" in ok.get("access-control-allow-methods", "")
    for origin in ("https://evil.example", "https://app.lkt.test.evil.example", "http://app.lkt.test"):
        status, denied = curl(tls_node, *preflight, "-H", f"Origin: {origin}", url,
                              resolve_to=tls_node.ip, cafile=pebble_root)
        assert "access-control-allow-origin" not in denied, (origin, denied)
        assert "access-control-allow-methods" not in denied, (origin, denied)
    # livekit-server itself answers "Access-Control-Allow-Origin: *"; the proxy must not pass it on.
    status, proxied = curl(tls_node, "-H", "Origin: https://evil.example", f"https://{DOMAIN}/rtc/validate",
                           resolve_to=tls_node.ip, cafile=pebble_root)
    assert " 401" in status, status  # it reached livekit-server (no token)
    assert "access-control-allow-origin" not in proxied, proxied
    status, proxied = curl(tls_node, "-H", f"Origin: {ALLOWED_ORIGIN}", f"https://{DOMAIN}/rtc/validate",
                           resolve_to=tls_node.ip, cafile=pebble_root)
    assert proxied.get("access-control-allow-origin") == ALLOWED_ORIGIN


def test_turn_answers_over_tls_on_443(tls_node: Node, pebble_root: str) -> None:
    with turn_tls(tls_node.ip, pebble_root) as sock:
        assert stun_binding(sock)


def test_renewal_on_the_timer_reaches_443_without_cutting_a_call(
    tls_node: Node, pebble_root: str, resolve: list[str], api_key: str, api_secret: str, people: list
) -> None:
    before = served_certificate(tls_node.ip, DOMAIN, pebble_root)
    server_pid = main_pid(tls_node)
    env = {"SSL_CERT_FILE": pebble_root}
    url = f"wss://{DOMAIN}"
    alice = Participant(tls_node, "renewal", "alice", api_key, api_secret, publish=True, url=url, wrap=resolve, extra_env=env)
    people.append(alice)
    bob = Participant(tls_node, "renewal", "bob", api_key, api_secret, url=url, wrap=resolve, extra_env=env)
    people.append(bob)
    held_turn = turn_tls(tls_node.ip, pebble_root)  # a TURN/TLS stream open across the renewal
    assert stun_binding(held_turn)
    time.sleep(3)
    force_renewal(tls_node)
    after = wait_until(lambda: (c := served_certificate(tls_node.ip, DOMAIN, pebble_root))["serial"] != before["serial"] and c,
                       timeout=30)
    assert after, "443 still serves the old certificate after the renewal"
    assert served_certificate(tls_node.ip, TURN_DOMAIN, pebble_root)["serial"] == after["serial"]
    log = tls_node.sh("journalctl -t livekit-proxy --no-pager -o cat").stdout
    assert "renewed; nginx reloaded" in log
    time.sleep(5)
    # The call and the TURN stream opened before the renewal are still there.
    assert alice.connected() and bob.connected()
    assert stun_binding(held_turn)
    held_turn.close()
    assert main_pid(tls_node) == server_pid  # no restart was needed
    for person in (alice, bob):
        report = person.hang_up()
        assert report["summary"]["disconnected"] is False, report
        assert not [e for e in report["events"] if e.get("event") == "reconnecting"], report
    assert report["summary"]["video_frames_received"] > 0


def test_certbot_keys_and_credentials_are_private(tls_node: Node) -> None:
    """After the renewal above (a new key, written by certbot under certbot.service's sandbox), the key
    is readable by nginx's group only and the new certificate by everyone, so nginx, which runs as
    www-data, served it."""
    key = tls_node.sh("readlink -f /etc/letsencrypt/live/livekit/privkey.pem").stdout.strip()
    assert not key.endswith("/privkey1.pem"), f"{key}: no renewal made a new key"
    out = tls_node.sh(f"stat -c '%a %U %G' {key}").stdout.split()
    assert out == ["640", "root", "www-data"], out
    chain = tls_node.sh("stat -L -c '%a' /etc/letsencrypt/live/livekit/fullchain.pem").stdout.strip()
    assert chain == "644", chain
    # Nobody else may pass through to it.
    assert tls_node.sh(f"runuser -u nobody -- cat {key}", check=False).returncode != 0
    assert tls_node.sh("systemctl is-enabled certbot.timer").stdout.strip() == "enabled"


@pytest.mark.parametrize("name", ["lkt-tls", "lkt-tls-d"])
def test_nginx_runs_without_root(request: pytest.FixtureRequest, name: str) -> None:
    """No nginx process runs as root: the master is www-data too and keeps only CAP_NET_BIND_SERVICE,
    and still binds 80 and 443."""
    node = host_named(request.config.getoption("--hosts-dir"), name)
    users = node.sh("ps -o user= -C nginx").stdout.split()
    assert users and set(users) == {"www-data"}, users
    master = node.sh("cat /run/nginx/nginx.pid").stdout.strip()
    caps = node.sh(f"awk '/^Cap(Eff|Prm|Bnd):/ {{print $2}}' /proc/{master}/status").stdout.split()
    assert {int(c, 16) for c in caps} == {1 << 10}, caps  # CAP_NET_BIND_SERVICE only
    listeners = [line.split()[3] for line in node.sh("ss -Hltnp").stdout.splitlines() if "nginx" in line]
    assert any(a.endswith(":80") for a in listeners) and any(a.endswith(":443") for a in listeners), listeners


def test_nginx_keeps_working_after_root_checks_its_configuration(tls_node: Node, pebble_root: str) -> None:
    """An administrator's `nginx -t` as root (nginx.conf names no user, so root's nginx hands the
    temporary directories to "nobody") and a reload leave nginx able to buffer a request body to disk."""
    tls_node.sh("nginx -t -q")
    tls_node.sh("systemctl reload nginx.service")
    body = "{" + '"x": "' + "a" * 65536 + '"}'  # above client_body_buffer_size: buffered in /var/lib/nginx/body
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
         "--resolve", f"{DOMAIN}:443:{tls_node.ip}", "--cacert", pebble_root,
         "-H", "Content-Type: application/json", "--data-binary", "@-",
         f"https://{DOMAIN}/twirp/livekit.RoomService/ListRooms"],
        input=body, capture_output=True, text=True, timeout=30, check=False).stdout
    assert out == "401", out  # livekit-server got the request (and wants a token); not nginx's 500


# ---- the proxy's units and logs (issue 13: hardened units, bounded logs, no tokens on disk) ---------

@pytest.mark.parametrize("unit", ["nginx.service", "certbot.service"])
@pytest.mark.parametrize("name", ["lkt-tls", "lkt-tls-d"])
def test_proxy_units_are_hardened(request: pytest.FixtureRequest, name: str, unit: str) -> None:
    """nginx and certbot (whose renewals and deploy hooks the tests above and below exercise under
    this sandbox) rate 2.0 or better, in sni and in direct mode (Debian's units: 9.6 and 9.4)."""
    score, report = security_exposure(host_named(request.config.getoption("--hosts-dir"), name), unit)
    assert score <= 2.0, report


def test_nginx_workers_can_open_every_connection(tls_node: Node) -> None:
    """Each worker may hold worker_connections connections, two descriptors each."""
    config = tls_node.sh("nginx -T 2>/dev/null").stdout
    connections = int(config.split("worker_connections", 1)[1].split(";", 1)[0])
    workers = tls_node.sh("ps -o pid= --ppid $(cat /run/nginx/nginx.pid)").stdout.split()
    assert workers, "no nginx worker runs"
    for pid in workers:
        limits = tls_node.sh(f"grep 'Max open files' /proc/{pid}/limits").stdout.split()
        soft = int(limits[3])
        assert soft >= 2 * connections, f"worker {pid}: {soft} open files for {connections} connections"


def livekit_answers(node: Node, port: int) -> bool:
    """livekit-server answers on its port, seen from the node itself (the firewall hides it from us)."""
    return node.sh(f"timeout 2 bash -c '</dev/tcp/127.0.0.1/{port}'", check=False).returncode == 0


def nginx_logs(node: Node) -> str:
    """Everything nginx logged on the host: its files (rotated and compressed too) and its journal."""
    return node.sh("for f in /var/log/nginx/*; do case $f in *.gz) zcat $f;; *) cat $f;; esac; done; "
                   "journalctl -u nginx.service --no-pager -o cat").stdout


def test_join_tokens_never_reach_the_nginx_logs(tls_node: Node, pebble_root: str,
                                                api_key: str, api_secret: str) -> None:
    """SDKs put the join token in the URL (wss://.../rtc?access_token=...). A client joins through
    the proxy with a token of ours in the URL; neither it nor any token (the SDK joins above
    included) is in nginx's logs, while the request itself is."""
    token = make_token(api_key, api_secret, identity="log-check", roomJoin=True, room="log-check")
    url = f"https://{DOMAIN}/rtc?access_token={token}&auto_subscribe=1&sdk=python&protocol=15"
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--http1.1",
         "--resolve", f"{DOMAIN}:443:{tls_node.ip}", "--cacert", pebble_root,
         "-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13",
         "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", url],
        capture_output=True, text=True, timeout=30, check=False).stdout
    assert out == "101", out  # livekit-server accepted the join: the WebSocket opened
    validate = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
         "--resolve", f"{DOMAIN}:443:{tls_node.ip}", "--cacert", pebble_root,
         f"https://{DOMAIN}/rtc/validate?access_token={token}"],
        capture_output=True, text=True, timeout=30, check=False).stdout
    assert validate == "200", validate
    logs = wait_until(lambda: (text := nginx_logs(tls_node)).count("/rtc/validate") and text, timeout=10)
    assert logs, "nginx logged no /rtc/validate request at all"
    assert token not in logs
    assert token.split(".")[2] not in logs  # not even the signature part
    assert "access_token" not in logs


def test_join_tokens_stay_out_of_the_error_log_when_livekit_is_down(tls_node: Node, pebble_root: str,
                                                                    api_key: str, api_secret: str) -> None:
    """A client joins while livekit-server is down: nginx answers 502 and would log the request line
    and the upstream URL, query string and token included, at error level. Neither is written; the
    access log shows the failure (status and upstream=502) without the token."""
    token = make_token(api_key, api_secret, identity="down-check", roomJoin=True, room="down-check")
    tls_node.sh("systemctl stop livekit-server.service")
    try:
        statuses = []
        for path in ("/rtc", "/rtc/validate"):
            statuses.append(subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--http1.1",
                 "--resolve", f"{DOMAIN}:443:{tls_node.ip}", "--cacert", pebble_root,
                 f"https://{DOMAIN}{path}?access_token={token}&auto_subscribe=1"],
                capture_output=True, text=True, timeout=30, check=False).stdout)
        assert statuses == ["502", "502"], statuses
    finally:
        tls_node.sh("systemctl start livekit-server.service")
        assert wait_until(lambda: livekit_answers(tls_node, tls_node.port), timeout=60), "livekit-server did not come back"
    logs = wait_until(lambda: (text := nginx_logs(tls_node)).count("upstream=502") >= 2 and text, timeout=10)
    assert logs, "the access log does not show the failed requests"
    assert token not in logs
    assert token.split(".")[2] not in logs
    assert "access_token" not in logs


def test_nginx_logs_are_rotated(tls_node: Node, pebble_root: str) -> None:
    """Debian's logrotate covers nginx's logs and runs daily; after a rotation nginx (inside its
    sandbox, with its pid file moved) writes to the new file."""
    assert tls_node.sh("systemctl is-enabled logrotate.timer").stdout.strip() == "enabled"
    assert "/var/log/nginx/*.log" in tls_node.sh("cat /etc/logrotate.d/nginx").stdout
    before = tls_node.sh("stat -c %i /var/log/nginx/access.log").stdout.strip()
    tls_node.sh("logrotate -f /etc/logrotate.d/nginx")
    assert tls_node.sh("stat -c %i /var/log/nginx/access.log").stdout.strip() != before
    marker = f"/rotation-check-{secrets.token_hex(4)}"
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "10", "--resolve", f"{DOMAIN}:443:{tls_node.ip}",
                    "--cacert", pebble_root, f"https://{DOMAIN}{marker}"], timeout=30, check=False)
    assert wait_until(lambda: marker in tls_node.sh("cat /var/log/nginx/access.log").stdout, timeout=10), \
        "nginx did not reopen its access log after the rotation"


# ---- direct mode: livekit-server terminates TURN/TLS itself on 443 of its own address ----------

DIRECT_DOMAIN = "lkd.lkt.test"  # molecule/tls/host_vars/lkt-tls-d.yml
DIRECT_TURN = "turnd.lkt.test"


def test_direct_mode_serves_signalling_and_turn_on_their_own_addresses(
    direct_node: Node, direct_turn_ip: str, pebble_root: str
) -> None:
    signalling = served_certificate(direct_node.ip, DIRECT_DOMAIN, pebble_root)
    turn = served_certificate(direct_turn_ip, DIRECT_TURN, pebble_root)
    assert signalling["names"] == sorted([DIRECT_DOMAIN, DIRECT_TURN])
    assert turn["serial"] == signalling["serial"]
    listeners = direct_node.sh("ss -Hltnp 'sport = :443'").stdout
    assert f"{direct_turn_ip}:443" in listeners and "livekit-server" in listeners, listeners
    assert f"{direct_node.ip}:443" in listeners and "nginx" in listeners, listeners
    with turn_tls(direct_turn_ip, pebble_root, DIRECT_TURN) as sock:
        assert stun_binding(sock)


def test_dns01_certificate_and_private_credentials(direct_node: Node) -> None:
    """lkt-tls-d got (and renews) its certificate over DNS-01: certbot's rfc2136 plugin wrote the
    TXT records into the test zone with the TSIG key kept in a root-only file."""
    renewal = direct_node.sh(f"cat {RENEWAL_CONF}").stdout
    assert "authenticator = dns-rfc2136" in renewal, renewal
    assert direct_node.sh("stat -c '%a %U' /etc/livekit-proxy/dns-credentials.ini").stdout.split() == ["600", "root"]


def test_direct_mode_renewal_waits_for_a_drain_aware_restart(
    direct_node: Node, direct_turn_ip: str, pebble_root: str
) -> None:
    """livekit-server reads its TURN certificate only at start: after a renewal, nginx serves the
    new one at once, TURN keeps the old one and a restart is left pending, which the next converge
    performs through the drain-aware path (here the node is idle, so it restarts at once)."""
    before = served_certificate(direct_turn_ip, DIRECT_TURN, pebble_root)
    pid = main_pid(direct_node)
    force_renewal(direct_node)
    signalling = wait_until(
        lambda: (c := served_certificate(direct_node.ip, DIRECT_DOMAIN, pebble_root))["serial"] != before["serial"] and c,
        timeout=30)
    assert signalling, "nginx still serves the old certificate"
    assert served_certificate(direct_turn_ip, DIRECT_TURN, pebble_root)["serial"] == before["serial"]
    assert direct_node.sh("test -e /var/lib/livekit/restart-pending", check=False).returncode == 0
    assert main_pid(direct_node) == pid
    run = run_playbook("site.yml", "--limit", "lkt-tls-d")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert main_pid(direct_node) != pid
    assert served_certificate(direct_turn_ip, DIRECT_TURN, pebble_root)["serial"] == signalling["serial"]
    assert direct_node.sh("test -e /var/lib/livekit/restart-pending", check=False).returncode != 0
