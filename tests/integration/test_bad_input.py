"""Bad settings stop site.yml before any host changes, with an error that names the variable.

Every case is a real `ansible-playbook playbooks/site.yml -e @bad.json` run against the fresh test host.
The runs are independent (each one only reads the host), so they run a few at a time
(LKT_BAD_INPUT_JOBS, default 3); each test then judges its own run:

* the run failed, in site.yml's first play (the settings checks): no later play started (a run that
  gets that far is stopped there, so a regression cannot go on to change the test host);
* its error (the part of the output from the first failure on) names the variable and says what is
  wrong (each case lists the words it must contain), not only "the output has been hidden";
* no secret of the case appears anywhere in the output.

At the end the host must be byte-for-byte what it was before (packages, users, files, firewall).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
import yaml

from conftest import REPO, Node, load_nodes, playbook_command

SNAPSHOT = (
    "dpkg-query -W | sha256sum; getent passwd livekit || true; "
    "ls -d /etc/livekit /opt/livekit /var/lib/livekit /etc/nftables.d /etc/redis /etc/nginx /etc/letsencrypt "
    "/etc/livekit-backup /usr/local/lib/selfhosted-livekit 2>&1 || true; "
    "sha256sum /etc/nftables.conf; ls /etc/sysctl.d /etc/systemd/system /etc/security/limits.d; "
    "nft list ruleset | sha256sum"
)
JOBS = max(1, int(os.environ.get("LKT_BAD_INPUT_JOBS", "3")))
RUN_TIMEOUT = 120  # seconds; a run ends in its first play, or is stopped when the next one starts


def tampered_artifacts(tmp: pathlib.Path) -> str:
    """A copy of the test release whose checksums.txt does not match the tarball."""
    src = pathlib.Path(os.environ["LKT_ARTIFACT_DIR"])
    dst = tmp / "tampered"
    dst.mkdir()
    for tarball in src.glob("*.tar.gz"):
        shutil.copy(tarball, dst / tarball.name)
        (dst / "checksums.txt").write_text(f"{'0' * 64}  {tarball.name}\n")
    return str(dst)


def tls_files(tmp: pathlib.Path) -> dict[str, str]:
    """PEM files for the Redis TLS cases: a CA, a certificate from it with its key, another key, an
    expired certificate and one from a different CA (made here with cryptography, the library the
    controller's community.crypto uses)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    out: dict[str, str] = {}

    def save(name: str, data: bytes) -> None:
        (tmp / name).write_bytes(data)
        out[name] = str(tmp / name)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def cert(subject: str, k, issuer: str, issuer_key, days: tuple[int, int], ca: bool = False,
             names: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> bytes:
        import ipaddress

        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=days[0]))
                   .not_valid_after(now + datetime.timedelta(days=days[1]))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names or ips:
            sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, other_ca_key, redis_key = key(), key(), key()
    save("ca.crt", cert("test CA", ca_key, "test CA", ca_key, (-1, 30), ca=True))
    save("redis.key", pem_key(redis_key))
    save("redis.crt", cert("redis", redis_key, "test CA", ca_key, (-1, 30), names=("localhost",), ips=("127.0.0.1",)))
    save("other.key", pem_key(key()))
    save("expired.crt", cert("redis", redis_key, "test CA", ca_key, (-30, -1)))
    save("foreign.crt", cert("redis", redis_key, "other CA", other_ca_key, (-1, 30)))
    # The proxy's and TURN's certificates (livekit_proxy_cert_file, livekit_server_tls_cert_file).
    bad_names = ("lk.bad.test", "turn.bad.test")
    save("proxy.crt", cert("lk.bad.test", redis_key, "test CA", ca_key, (-1, 30), names=bad_names))
    save("proxy-expired.crt", cert("lk.bad.test", redis_key, "test CA", ca_key, (-30, -1), names=bad_names))
    save("proxy-othername.crt", cert("lk.other.test", redis_key, "test CA", ca_key, (-1, 30), names=("lk.other.test",)))
    return out


def redis_tls(cert: str = "redis.crt", key: str = "redis.key", ca: str = "ca.crt") -> dict:
    return {"redis_tls_enabled": True, "redis_tls_cert_file": f"@tls:{cert}", "redis_tls_key_file": f"@tls:{key}",
            "redis_tls_ca_file": f"@tls:{ca}"}


PROXY = {"livekit_proxy_enabled": True, "livekit_proxy_domain": "lk.bad.test", "livekit_server_turn_domain": "turn.bad.test"}
PROXY_FILES = {**PROXY, "livekit_proxy_cert_source": "files",
               "livekit_proxy_cert_file": "@tls:proxy.crt", "livekit_proxy_key_file": "@tls:redis.key"}
DIRECT = {**PROXY, "livekit_proxy_turn_mode": "direct", "livekit_proxy_listen_address": "10.0.0.5",
          "livekit_server_turn_bind_addresses": ["10.0.0.6"]}
BACKUP = {"livekit_backup_enabled": True, "livekit_backup_s3_bucket": "lkt-bad-input",
          "livekit_backup_s3_endpoint_url": "http://10.0.0.9:9000", "livekit_backup_recipients": ["@recipient"]}
LONG = "abcdefghijklmnopqrstuvwxyz0123456789"  # 36 characters, a plausible secret length


def secret(text: str) -> str:
    """A secret of a case: the test checks it appears nowhere in the run's output."""
    return "@secret:" + text


# (case id, extra vars, words the error must contain). Values "@secret:..." are secrets; "@tls:<file>",
# "@tampered" and "@recipient" are replaced by files and an age public key made for the run.
CASES = [
    # ---- livekit_server: ports, versions, policies ----------------------------------------------
    ("udp-range-reversed", {"livekit_server_rtc_port_range_start": 60000, "livekit_server_rtc_port_range_end": 50000},
     "livekit_server_rtc_port_range_start"),
    ("tcp-port-collision", {"livekit_server_prometheus_port": 7880}, "livekit_server_prometheus_port"),
    ("turn-udp-inside-media-range", {"livekit_server_turn_udp_port": 50050}, "livekit_server_turn_udp_port"),
    ("turn-tls-port-clients-never-use", {"livekit_server_turn_tls_port": 5349}, "livekit_server_turn_tls_port"),
    ("port-not-a-number", {"livekit_server_port": "seventy"}, "livekit_server_port"),
    ("port-out-of-range", {"livekit_server_port": 70000}, ("livekit_server_port", "70000")),
    ("unknown-version", {"livekit_server_version": "latest"}, "livekit_server_version"),
    ("unknown-restart-policy", {"livekit_server_restart_policy": "sometimes"}, "livekit_server_restart_policy"),
    ("artifact-checksum-mismatch", {"livekit_server_local_artifact_dir": "@tampered"}, "Refusing to install it"),
    ("keep-releases-negative", {"livekit_server_keep_releases": -1}, "livekit_server_keep_releases"),
    ("boolean-given-as-string", {"livekit_server_turn_enabled": "false"}, ("livekit_server_turn_enabled", "string")),
    # ---- livekit_server: API keys (item 10: the cause must show, the secret never) ---------------
    ("short-api-secret", {"livekit_server_api_keys": {"APIshort": secret("only-twenty-chars-xx")}},
     ("livekit_server_api_keys", "APIshort", "20 characters")),
    ("no-api-keys", {"livekit_server_api_keys": {}}, ("livekit_server_api_keys", "no key")),
    ("api-key-name-with-space", {"livekit_server_api_keys": {"API key": secret(LONG)}}, ("livekit_server_api_keys", "'API key'")),
    ("api-secret-with-comment-sign", {"livekit_server_api_keys": {"APIhash": secret(LONG + " #x")}},
     ("livekit_server_api_keys", "APIhash")),
    ("api-secret-with-colon-space", {"livekit_server_api_keys": {"APIcolon": secret("abc: " + LONG)}},
     ("livekit_server_api_keys", "APIcolon")),
    # ---- livekit_server: addresses and networks --------------------------------------------------
    ("node-ip-not-an-address", {"livekit_server_node_ip": "not-an-ip"}, ("livekit_server_node_ip", "not-an-ip")),
    ("node-ip-two-ipv4", {"livekit_server_node_ip": "10.0.0.1,10.0.0.2"}, "livekit_server_node_ip"),
    ("bind-address-invalid", {"livekit_server_bind_addresses": ["0.0.0.0.0"]}, ("livekit_server_bind_addresses", "0.0.0.0.0")),
    ("restricted-peer-cidr-invalid", {"livekit_server_turn_allow_restricted_peer_cidrs": ["10.0.0.0/33"]},
     ("livekit_server_turn_allow_restricted_peer_cidrs", "10.0.0.0/33")),
    ("metrics-sources-not-networks", {"livekit_server_prometheus_sources": ["prometheus.internal"]},
     ("livekit_server_prometheus_sources", "prometheus.internal")),
    # ---- livekit_exporters ----------------------------------------------------------------------------
    ("exporter-sources-not-networks", {"livekit_exporters_prometheus_sources": ["prometheus.internal"]},
     ("livekit_exporters_prometheus_sources", "prometheus.internal", "CIDR")),
    ("exporters-on-a-public-address", {"livekit_exporters_listen_address": "8.8.8.8"},
     ("livekit_exporters_listen_address", "8.8.8.8", "private")),
    # ---- livekit_server: livekit_server_config_extra (item 9) ------------------------------------
    ("config-extra-moves-signalling-port", {"livekit_server_config_extra": {"port": 8080}},
     ("livekit_server_config_extra", "port", "livekit_server_port")),
    ("config-extra-moves-redis", {"livekit_server_config_extra": {"redis": {"address": "10.0.0.9:6379"}}},
     ("livekit_server_config_extra", "redis.address", "livekit_server_redis_address")),
    ("config-extra-media-ports", {"livekit_server_config_extra": {"rtc": {"port_range_start": 40000}}},
     ("livekit_server_config_extra", "rtc.port_range_start", "livekit_server_rtc_port_range_start")),
    ("config-extra-inline-keys", {"livekit_server_config_extra": {"keys": {"APIinline": secret(LONG)}}},
     ("livekit_server_config_extra", "keys", "livekit_server_api_keys")),
    ("config-extra-unknown-option", {"livekit_server_config_extra": {"not_an_option": True}},
     ("livekit_server_config_extra", "not_an_option")),
    ("config-extra-wrong-type", {"livekit_server_config_extra": {"room": {"empty_timeout": "five minutes"}}},
     ("livekit_server_config_extra", "empty_timeout")),
    # ---- livekit_server: TURN and its certificate --------------------------------------------------
    ("turn-tls-without-domain", {"livekit_server_turn_domain": ""}, "livekit_server_turn_domain"),
    ("turn-tls-without-cert", {"livekit_server_tls_source": "files"}, "livekit_server_tls_cert_file"),
    ("turn-cert-expired", {"livekit_server_tls_source": "files", "livekit_server_tls_cert_file": "@tls:proxy-expired.crt",
                           "livekit_server_tls_key_file": "@tls:redis.key"}, "livekit_server_tls_cert_file"),
    # ---- livekit_server and redis: how livekit-server reaches Redis -------------------------------
    ("remote-redis-without-password",
     {"livekit_server_redis_address": "10.0.0.5:6379", "livekit_server_redis_password": ""},
     "livekit_server_redis_password"),
    ("remote-redis-in-plaintext", {"livekit_server_redis_address": "10.0.0.5:6379"},
     "livekit_server_redis_plaintext_ok"),
    ("livekit-redis-tls-ca-missing",
     {"livekit_server_redis_tls": True, "livekit_server_redis_tls_ca_file": "/nonexistent/ca.crt"},
     "livekit_server_redis_tls_ca_file"),
    ("redis-db-out-of-range", {"livekit_server_redis_db": 16}, "livekit_server_redis_db"),
    ("local-redis-password-differs", {"redis_password": secret("a-different-password-" + LONG)},
     ("livekit_server_redis_password", "redis_password")),
    ("local-redis-port-differs", {"redis_port": 6380}, ("livekit_server_redis_address", "redis_port")),
    ("local-redis-tls-but-livekit-plaintext", redis_tls(), ("livekit_server_redis_tls", "redis_tls_enabled")),
    # ---- redis -------------------------------------------------------------------------------------
    ("redis-open-without-password", {"redis_bind": ["0.0.0.0"], "redis_password": ""}, "redis_password"),
    ("redis-on-the-network-in-plaintext", {"redis_bind": ["127.0.0.1", "10.0.0.5"]}, "redis_tls_plaintext_ok"),
    ("redis-bind-empty", {"redis_bind": []}, "redis_bind"),
    ("redis-bind-not-an-address", {"redis_bind": ["127.0.0.1", "10.0.0.300"], "redis_tls_plaintext_ok": True},
     ("redis_bind", "10.0.0.300")),
    ("redis-eviction-policy", {"redis_maxmemory_policy": "allkeys-lru"}, ("redis_maxmemory_policy", "noeviction")),
    ("redis-maxmemory-not-a-size", {"redis_maxmemory": "2 GB"}, "redis_maxmemory"),
    ("redis-dir-relative", {"redis_dir": "var/lib/redis"}, "redis_dir"),
    ("redis-password-with-newline",
     {"redis_password": secret(LONG + "\nbind 0.0.0.0"), "livekit_server_redis_password": secret(LONG + "\nbind 0.0.0.0")},
     ("redis_password", "control character")),
    ("redis-allowed-clients-not-networks", {"redis_allowed_clients": ["lk-node-1"]}, ("redis_allowed_clients", "lk-node-1")),
    ("redis-extra-config-rebinds", {"redis_extra_config": {"bind": "0.0.0.0"}}, ("redis_extra_config", "bind", "redis_bind")),
    ("redis-extra-config-drops-password", {"redis_extra_config": {"requirepass": '""'}},
     ("redis_extra_config", "requirepass", "redis_password")),
    ("redis-extra-config-protected-mode", {"redis_extra_config": {"protected-mode": "no"}},
     ("redis_extra_config", "protected-mode")),
    ("redis-extra-config-eviction", {"redis_extra_config": {"MAXMEMORY-POLICY": "allkeys-lru"}},
     ("redis_extra_config", "MAXMEMORY-POLICY", "redis_maxmemory_policy")),
    ("redis-extra-config-include", {"redis_extra_config": {"include": "/etc/redis/local.conf"}}, ("redis_extra_config", "include")),
    ("redis-extra-config-newline", {"redis_extra_config": {"loglevel": "notice\nbind 0.0.0.0"}},
     ("redis_extra_config", "loglevel", "line break")),
    # ---- redis: TLS ----------------------------------------------------------------------------------
    ("redis-tls-without-files", {"redis_tls_enabled": True, "redis_tls_cert_file": "/nonexistent/redis.crt"},
     "redis_tls_cert_file"),
    ("redis-tls-key-of-another-certificate", redis_tls(key="other.key"), "is not the key of redis_tls_cert_file"),
    ("redis-tls-expired-certificate", redis_tls(cert="expired.crt"), "expired.crt) expired on"),
    ("redis-tls-certificate-from-another-ca", redis_tls(cert="foreign.crt"), "was not issued by redis_tls_ca_file"),
    # ---- livekit_host ------------------------------------------------------------------------------
    ("firewall-rule-source-not-a-network",
     {"livekit_host_firewall_extra_rules": [{"proto": "tcp", "port": "9100", "sources": ["10.0.0.300/32"]}]},
     ("livekit_host_firewall_extra_rules", "10.0.0.300/32")),
    ("firewall-rule-port-out-of-range", {"livekit_host_firewall_extra_rules": [{"proto": "udp", "port": "70000"}]},
     ("livekit_host_firewall_extra_rules", "70000")),
    ("firewall-rule-comment-with-quotes",
     {"livekit_host_firewall_extra_rules": [{"proto": "tcp", "port": "9100", "comment": 'node "exporter"'}]},
     ("livekit_host_firewall_extra_rules", "comment")),
    ("ssh-sources-not-networks", {"livekit_host_firewall_ssh_sources": ["office"]}, ("livekit_host_firewall_ssh_sources", "office")),
    ("firewall-switch-as-string", {"livekit_host_firewall_enabled": "false"}, ("livekit_host_firewall_enabled", "string")),
    ("sysctl-unknown-key", {"livekit_host_sysctl": {"net.core.rmem_maxx": 16777216}}, ("livekit_host_sysctl", "net.core.rmem_maxx")),
    ("service-user-not-a-user-name", {"livekit_host_user": "Live Kit"}, "livekit_host_user"),
    ("config-dir-relative", {"livekit_host_config_dir": "etc/livekit"}, "livekit_host_config_dir"),
    # ---- livekit_proxy -----------------------------------------------------------------------------
    ("proxy-without-domain", {"livekit_proxy_enabled": True}, "livekit_proxy_domain"),
    ("proxy-wildcard-cors", {**PROXY, "livekit_proxy_cors_origins": ["*"]}, "livekit_proxy_cors_origins"),
    ("proxy-cert-key-mismatch", {**PROXY_FILES, "livekit_proxy_key_file": "@tls:other.key"}, "does not belong to the certificate"),
    ("proxy-cert-expired", {**PROXY_FILES, "livekit_proxy_cert_file": "@tls:proxy-expired.crt"}, "is not valid now"),
    ("proxy-cert-wrong-names", {**PROXY_FILES, "livekit_proxy_cert_file": "@tls:proxy-othername.crt"}, "does not name"),
    ("proxy-turn-domain-differs", {**PROXY, "livekit_proxy_turn_domain": "turn2.bad.test"},
     ("livekit_proxy_turn_domain", "livekit_server_turn_domain")),
    ("proxy-acme-email-invalid", {**PROXY, "livekit_proxy_acme_email": "ops-at-example"}, "livekit_proxy_acme_email"),
    ("proxy-acme-cert-name-is-a-path", {**PROXY, "livekit_proxy_acme_cert_name": "../livekit"}, "livekit_proxy_acme_cert_name"),
    ("proxy-internal-port-collides", {**PROXY, "livekit_proxy_internal_https_port": 7880},
     ("livekit_proxy_internal_https_port", "livekit_server_port")),
    ("proxy-upstream-port-differs", {**PROXY, "livekit_proxy_upstream_port": 7000},
     ("livekit_proxy_upstream_port", "livekit_server_port")),
    ("proxy-signalling-on-443", {**PROXY, "livekit_server_port": 443}, ("livekit_server_port", "443")),
    ("proxy-direct-listen-address-invalid", {**DIRECT, "livekit_proxy_listen_address": "10.0.0.300"},
     "livekit_proxy_listen_address"),
    ("proxy-direct-turn-on-every-address", {**DIRECT, "livekit_server_turn_bind_addresses": []},
     "livekit_server_turn_bind_addresses"),
    # ---- livekit_backup ----------------------------------------------------------------------------
    ("backup-without-recipients", {**BACKUP, "livekit_backup_recipients": []}, "livekit_backup_recipients"),
    ("backup-bucket-name-invalid", {**BACKUP, "livekit_backup_s3_bucket": "LiveKit_Backups"}, "livekit_backup_s3_bucket"),
    ("backup-endpoint-not-a-url", {**BACKUP, "livekit_backup_s3_endpoint_url": "minio:9000"}, "livekit_backup_s3_endpoint_url"),
    ("backup-access-key-without-secret", {**BACKUP, "livekit_backup_s3_access_key": "lktaccess"}, "livekit_backup_s3_secret_key"),
    ("backup-keep-last-zero", {**BACKUP, "livekit_backup_keep_last": 0}, "livekit_backup_keep_last"),
    ("backup-calendar-invalid", {**BACKUP, "livekit_backup_on_calendar": "every night"}, "livekit_backup_on_calendar"),
    ("backup-delay-invalid", {**BACKUP, "livekit_backup_randomized_delay": "a while"}, "livekit_backup_randomized_delay"),
    ("backup-relative-path", {**BACKUP, "livekit_backup_extra_paths": ["etc/livekit"]}, "livekit_backup_extra_paths"),
    ("backup-name-with-slash", {**BACKUP, "livekit_backup_name": "node/1"}, "livekit_backup_name"),
]
CASE_IDS = [c[0] for c in CASES]


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float
    secrets: list[str]


@pytest.fixture(scope="module")
def host() -> Node:
    nodes = load_nodes(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"] + "/hosts")
    assert len(nodes) == 1
    return nodes[0]


@pytest.fixture(scope="module")
def snapshot_before(host: Node) -> str:
    return host.sh(SNAPSHOT).stdout


def resolve(value, tmp: pathlib.Path, files: dict, secrets: list[str]):
    """The case's value with its placeholders replaced (files made on first use)."""
    if isinstance(value, dict):
        return {k: resolve(v, tmp, files, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, tmp, files, secrets) for v in value]
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    if value.startswith("@secret:"):
        secrets.append(value[8:])
        return value[8:]
    if value.startswith("@tls:"):
        if "tls" not in files:
            files["tls"] = tls_files(tmp)
        return files["tls"][value[5:]]
    if value == "@tampered":
        return tampered_artifacts(tmp)
    if value == "@recipient":
        return os.environ["LKT_AGE_RECIPIENT"]
    raise ValueError(value)


def run_case(extra: dict, tmp: pathlib.Path) -> Run:
    """site.yml with the case's settings. A run that gets past the checks play is stopped as soon as
    the next play starts: it has failed the case already, and must not go on changing the test host."""
    secrets: list[str] = []
    resolved = resolve(extra, tmp, {}, secrets)
    varsfile = tmp / "extra.json"
    varsfile.write_text(json.dumps(resolved))
    # JSON results and no colours: each message is one line, whatever its length.
    env = dict(os.environ, ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1")
    start = time.monotonic()
    proc = subprocess.Popen(playbook_command("site.yml", "-e", f"@{varsfile}"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env, start_new_session=True)

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    watchdog = threading.Timer(RUN_TIMEOUT, stop)
    watchdog.start()
    lines, plays = [], 0
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("PLAY ["):
                plays += 1
                if plays > 1:
                    lines.append("(stopped here by the test: site.yml got past its checks)\n")
                    stop()
                    break
    finally:
        watchdog.cancel()
        proc.stdout.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return Run(proc.returncode, "".join(lines), time.monotonic() - start, secrets)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, snapshot_before: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """site.yml with each selected case, JOBS at a time."""
    selected = {item.callspec.params["case_id"] for item in request.session.items
                if hasattr(item, "callspec") and "case_id" in item.callspec.params}
    cases = [c for c in CASES if c[0] in selected]
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(JOBS) as pool:
        futures = {cid: pool.submit(run_case, extra, tmp_path_factory.mktemp(cid)) for cid, extra, _expected in cases}
    results = {cid: future.result() for cid, future in futures.items()}
    print(f"\n{len(cases)} site.yml runs, {JOBS} at a time: {time.monotonic() - start:.0f} s "
          f"(each {min(r.seconds for r in results.values()):.1f}-{max(r.seconds for r in results.values()):.1f} s)")
    return results


def first_play_name() -> str:
    return yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())[0]["name"]


def error_part(output: str) -> str:
    """The output from the first failure on: where the user reads what went wrong."""
    starts = [i for i in (output.find("[ERROR]"), output.find("fatal: [")) if i >= 0]
    return output[min(starts):] if starts else ""


@pytest.mark.parametrize(("case_id", "expected"), [(c[0], c[2]) for c in CASES], ids=CASE_IDS)
def test_bad_setting_fails_before_any_change(runs: dict[str, Run], case_id: str, expected) -> None:
    run = runs[case_id]
    tail = run.output[-4000:]
    plays = re.findall(r"^PLAY \[(.*)\] \*", run.output, re.M)
    assert plays == [first_play_name()], f"site.yml got past its checks (plays started: {plays}):\n{tail}"
    assert run.returncode != 0, f"site.yml accepted the setting:\n{tail}"
    error = error_part(run.output)
    for word in (expected,) if isinstance(expected, str) else expected:
        assert word in error, f"the error does not say {word!r}:\n{error[-4000:] or tail}"
    for value in run.secrets:
        assert value not in run.output, "a secret of the case is in the output"


# playbooks/loadtest.yml: a room shape above the bounds is refused in its preflight, before the load
# generator is installed on the load host (the controller) or anything starts on the node.
LOADTEST_CASES = [
    ("shape-above-max-participants",
     {"livekit_loadtest_rooms": 50, "livekit_loadtest_publishers_per_room": 2, "livekit_loadtest_subscribers_per_room": 10},
     ("600 participants", "livekit_loadtest_max_participants")),
    ("max-participants-above-ceiling", {"livekit_loadtest_max_participants": 5000}, ("livekit_loadtest_max_participants", "2000")),
    ("run-longer-than-max-seconds", {"livekit_loadtest_duration": 3000}, ("livekit_loadtest_max_seconds", "3030 s")),
    ("unknown-resolution", {"livekit_loadtest_video_resolution": "4k"}, "livekit_loadtest_video_resolution"),
]


@pytest.mark.parametrize(("extra", "expected"), [(c[1], c[2]) for c in LOADTEST_CASES], ids=[c[0] for c in LOADTEST_CASES])
def test_loadtest_bad_shape_refused_before_anything_starts(host: Node, tmp_path: pathlib.Path, extra: dict, expected) -> None:
    home, reports = tmp_path / "load-host", tmp_path / "reports"
    varsfile = tmp_path / "extra.json"
    varsfile.write_text(json.dumps(dict(extra, livekit_loadtest_home=str(home), livekit_loadtest_report_dir=str(reports))))
    env = dict(os.environ, ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1")
    run = subprocess.run(playbook_command("loadtest.yml", "-e", f"@{varsfile}"), capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=RUN_TIMEOUT, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0, f"loadtest.yml accepted the shape:\n{output[-3000:]}"
    error = error_part(output)
    # Refused by the checks of the preflight entry point: its argument spec (a value outside a choice list)
    # or its check task.
    failed_task = output.split("fatal: [", 1)[0].rsplit("TASK [", 1)[-1]
    assert ("Check the node, the room shape and the bounds" in failed_task
            or "Validating arguments against arg spec 'preflight'" in failed_task), failed_task[-500:]
    for word in (expected,) if isinstance(expected, str) else expected:
        assert word in error, f"the error does not say {word!r}:\n{error[-3000:]}"
    assert not home.exists() and not reports.exists(), "loadtest.yml got past its checks on the load host"
    assert "livekit_loadtest_sampler" not in output and "Install" not in output.split("fatal: [", 1)[0]


def test_host_is_untouched_after_all_bad_runs(runs: dict[str, Run], host: Node, snapshot_before: str) -> None:
    assert host.sh(SNAPSHOT).stdout == snapshot_before
    assert "No such file" in host.sh("ls -d /etc/livekit 2>&1", check=False).stdout
