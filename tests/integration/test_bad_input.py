"""Bad settings stop site.yml before any host changes, with an error that names the variable."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, Node, load_nodes

SNAPSHOT = (
    "dpkg-query -W | sha256sum; getent passwd livekit || true; "
    "ls -d /etc/livekit /opt/livekit /var/lib/livekit /etc/nftables.d /etc/redis /etc/nginx /etc/letsencrypt 2>&1 || true; "
    "sha256sum /etc/nftables.conf; ls /etc/sysctl.d /etc/systemd/system; nft list ruleset | sha256sum"
)


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
             names: tuple[str, ...] = ()) -> bytes:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=days[0]))
                   .not_valid_after(now + datetime.timedelta(days=days[1]))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                            critical=False)
        return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, other_ca_key, redis_key = key(), key(), key()
    save("ca.crt", cert("test CA", ca_key, "test CA", ca_key, (-1, 30), ca=True))
    save("redis.key", pem_key(redis_key))
    save("redis.crt", cert("redis", redis_key, "test CA", ca_key, (-1, 30)))
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


# (case id, extra vars, text the error must contain)
CASES = [
    ("udp-range-reversed", {"livekit_server_rtc_port_range_start": 60000, "livekit_server_rtc_port_range_end": 50000},
     "livekit_server_rtc_port_range_start"),
    ("short-api-secret", {"livekit_server_api_keys": {"APIshort": "only-twenty-chars-xx"}}, "livekit_server_api_keys"),
    ("turn-tls-without-domain", {"livekit_server_turn_domain": ""}, "livekit_server_turn_domain"),
    ("turn-tls-without-cert", {"livekit_server_tls_source": "files"}, "livekit_server_tls_cert_file"),
    ("redis-open-without-password", {"redis_bind": ["0.0.0.0"], "redis_password": ""}, "redis_password"),
    ("remote-redis-without-password",
     {"livekit_server_redis_address": "10.0.0.5:6379", "livekit_server_redis_password": ""},
     "livekit_server_redis_password"),
    ("redis-on-the-network-in-plaintext", {"redis_bind": ["127.0.0.1", "10.0.0.5"]}, "redis_tls_plaintext_ok"),
    ("remote-redis-in-plaintext", {"livekit_server_redis_address": "10.0.0.5:6379"},
     "livekit_server_redis_plaintext_ok"),
    ("redis-tls-without-files", {"redis_tls_enabled": True, "redis_tls_cert_file": "/nonexistent/redis.crt"},
     "redis_tls_cert_file"),
    ("redis-tls-key-of-another-certificate", redis_tls(key="other.key"), "is not the key of redis_tls_cert_file"),
    ("redis-tls-expired-certificate", redis_tls(cert="expired.crt"), "expired.crt) expired on"),
    ("redis-tls-certificate-from-another-ca", redis_tls(cert="foreign.crt"), "was not issued by redis_tls_ca_file"),
    ("livekit-redis-tls-ca-missing",
     {"livekit_server_redis_tls": True, "livekit_server_redis_tls_ca_file": "/nonexistent/ca.crt"},
     "livekit_server_redis_tls_ca_file"),
    ("unknown-version", {"livekit_server_version": "latest"}, "livekit_server_version"),
    ("tcp-port-collision", {"livekit_server_prometheus_port": 7880}, "livekit_server_prometheus_port"),
    ("turn-udp-inside-media-range", {"livekit_server_turn_udp_port": 50050}, "livekit_server_turn_udp_port"),
    ("turn-tls-port-clients-never-use", {"livekit_server_turn_tls_port": 5349}, "livekit_server_turn_tls_port"),
    ("port-not-a-number", {"livekit_server_port": "seventy"}, "livekit_server_port"),
    ("unknown-restart-policy", {"livekit_server_restart_policy": "sometimes"}, "livekit_server_restart_policy"),
    ("artifact-checksum-mismatch", {"livekit_server_local_artifact_dir": "@tampered"}, "Refusing to install it"),
    # TLS (livekit_proxy role and the TURN certificate).
    ("proxy-without-domain", {"livekit_proxy_enabled": True}, "livekit_proxy_domain"),
    ("proxy-wildcard-cors", {**PROXY, "livekit_proxy_cors_origins": ["*"]}, "livekit_proxy_cors_origins"),
    ("proxy-cert-key-mismatch", {**PROXY_FILES, "livekit_proxy_key_file": "@tls:other.key"}, "does not belong to the certificate"),
    ("proxy-cert-expired", {**PROXY_FILES, "livekit_proxy_cert_file": "@tls:proxy-expired.crt"}, "is not valid now"),
    ("proxy-cert-wrong-names", {**PROXY_FILES, "livekit_proxy_cert_file": "@tls:proxy-othername.crt"}, "does not name"),
    ("turn-cert-expired", {"livekit_server_tls_source": "files", "livekit_server_tls_cert_file": "@tls:proxy-expired.crt",
                           "livekit_server_tls_key_file": "@tls:redis.key"}, "livekit_server_tls_cert_file"),
]


@pytest.fixture(scope="module")
def host() -> Node:
    nodes = load_nodes(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"] + "/hosts")
    assert len(nodes) == 1
    return nodes[0]


@pytest.fixture(scope="module")
def snapshot_before(host: Node) -> str:
    return host.sh(SNAPSHOT).stdout


def run_site(extra: dict, tmp: pathlib.Path) -> subprocess.CompletedProcess:
    varsfile = tmp / "extra.json"
    varsfile.write_text(json.dumps(extra))
    inventory = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
    return subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
         str(REPO / "playbooks" / "site.yml"), "-e", f"@{varsfile}"],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_setting_fails_before_any_change(
    host: Node, snapshot_before: str, tmp_path: pathlib.Path, extra: dict, expected: str
) -> None:
    tls = tls_files(tmp_path) if any(str(v).startswith("@tls:") for v in extra.values()) else {}
    extra = {k: (tampered_artifacts(tmp_path) if v == "@tampered" else tls[v[5:]] if str(v).startswith("@tls:") else v)
             for k, v in extra.items()}
    run = run_site(extra, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert expected in output, output[-3000:]
    assert host.sh(SNAPSHOT).stdout == snapshot_before


def test_host_is_untouched_after_all_bad_runs(host: Node, snapshot_before: str) -> None:
    assert host.sh(SNAPSHOT).stdout == snapshot_before
    assert "No such file" in host.sh("ls -d /etc/livekit 2>&1", check=False).stdout
