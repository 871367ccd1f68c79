"""Redis over the network speaks only TLS: what an operator sees from the LiveKit nodes.

The cluster scenario's Redis host has a certificate from a test CA (molecule/cluster/prepare.yml)
with its IP address and name; the nodes trust that CA (/etc/livekit/tls/redis-ca.crt) and check the
IP address. Passwords go to redis-cli through REDISCLI_AUTH, never on its command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import REPO, Node, wait_until

sys.path.insert(0, str(REPO / ".cache" / "collections"))
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_metrics import parse_list_nodes  # noqa: E402

SOCKET = "/run/redis/redis-server.sock"
NODE_CA = "/etc/livekit/tls/redis-ca.crt"
CONFIG = "/etc/livekit/livekit.yaml"


def redis_cli(node: Node, *args: str, password: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """redis-cli inside a host; the password (when given) travels in the environment."""
    env = dict(os.environ, REDISCLI_AUTH=os.environ["LKT_REDIS_PASSWORD"]) if password else dict(os.environ)
    env_args = ["-e", "REDISCLI_AUTH"] if password else []
    return subprocess.run(["podman", "exec", *env_args, node.name, "redis-cli", *args],
                          capture_output=True, text=True, timeout=timeout, check=False, env=env)


def local(cluster: dict, *args: str, raw: bool = False) -> str:
    """A command through the Redis host's own socket."""
    result = redis_cli(cluster["redis"], "-s", SOCKET, "--raw" if raw else "--no-raw", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def list_nodes(node: Node, config: str = CONFIG) -> subprocess.CompletedProcess:
    return node.sh(f"timeout 60 /opt/livekit/current/livekit-server list-nodes --config {config} 2>&1", check=False)


def serving(node: Node) -> dict[str, str]:
    """ip -> state of every node registered in Redis, as seen from `node`."""
    return {n["ip"]: n["state"] for n in parse_list_nodes(list_nodes(node).stdout)}


def both_serving(cluster: dict) -> bool:
    want = {cluster["a"].ip: "SERVING", cluster["b"].ip: "SERVING"}
    return all(serving(cluster[name]) == want for name in ("a", "b"))


def test_redis_listens_only_with_tls(cluster):
    assert local(cluster, "CONFIG", "GET", "port", raw=True).splitlines() == ["port", "0"]
    assert local(cluster, "CONFIG", "GET", "tls-port", raw=True).splitlines() == ["tls-port", "6379"]
    # One listener on 6379 (the TLS one), none on any other TCP port; the socket is root/redis only.
    listeners = cluster["redis"].sh("ss -Hltnp | grep redis-server").stdout.splitlines()
    assert listeners and all(line.split()[3].endswith(":6379") for line in listeners), listeners
    mode = cluster["redis"].sh(f"stat -c '%a %U' {SOCKET}").stdout.split()
    assert mode == ["700", "redis"], mode
    assert cluster["redis"].sh("stat -c '%a %U' /etc/redis/tls/redis.key").stdout.split() == ["600", "redis"]


def test_node_reaches_redis_over_tls_with_the_ca(cluster):
    redis_ip = cluster["redis"].ip
    for name in ("a", "b"):
        result = redis_cli(cluster[name], "--tls", "--cacert", NODE_CA, "-h", redis_ip, "-p", "6379", "PING")
        assert result.returncode == 0 and result.stdout.strip() == "PONG", (result.stdout, result.stderr)


def test_plaintext_is_refused(cluster):
    result = redis_cli(cluster["a"], "-h", cluster["redis"].ip, "-p", "6379", "PING")
    assert "PONG" not in result.stdout, result.stdout
    assert result.returncode != 0 or "Error" in result.stdout + result.stderr, (result.stdout, result.stderr)


def test_client_that_does_not_trust_the_ca_is_refused(cluster):
    # The system trust store (what a client gets without --cacert) does not hold the internal CA.
    result = redis_cli(cluster["a"], "--tls", "-h", cluster["redis"].ip, "-p", "6379", "PING")
    assert "PONG" not in result.stdout, result.stdout
    assert "certificate verify failed" in (result.stdout + result.stderr).lower(), (result.stdout, result.stderr)


def test_livekit_checks_the_redis_server_name(cluster):
    """A name the certificate does not carry is refused: the nodes verify who they talk to."""
    node = cluster["a"]
    node.sh(f"sed 's/server_name: .*/server_name: wrong.example/' {CONFIG} > /root/wrong-name.yaml "
            "&& chmod 600 /root/wrong-name.yaml")
    try:
        assert "server_name: wrong.example" in node.sh("cat /root/wrong-name.yaml").stdout
        out = list_nodes(node, "/root/wrong-name.yaml").stdout
        assert "SERVING" not in out, out
        assert "certificate" in out and "wrong.example" in out, out[-2000:]
    finally:
        node.sh("rm -f /root/wrong-name.yaml", check=False)


def test_both_nodes_are_registered_through_tls(cluster):
    config = cluster["a"].sh(f"cat {CONFIG}").stdout
    assert "tls:" in config and f"ca_cert_file: {NODE_CA}" in config and f"server_name: {cluster['redis'].ip}" in config
    assert wait_until(lambda: both_serving(cluster), timeout=60), (serving(cluster["a"]), serving(cluster["b"]))
    # Redis sees both nodes as clients (on the TLS port: there is no other).
    clients = local(cluster, "CLIENT", "LIST")
    for name in ("a", "b"):
        assert f"addr={cluster[name].ip}:" in clients, clients


def test_node_records_survive_a_redis_restart(cluster):
    before = set(local(cluster, "HKEYS", "nodes", raw=True).split())
    assert len(before) >= 2, before
    cluster["redis"].sh("systemctl restart redis-server")
    time.sleep(1)
    assert wait_until(lambda: redis_cli(cluster["redis"], "-s", SOCKET, "PING").stdout.strip() == "PONG", timeout=30)
    after = set(local(cluster, "HKEYS", "nodes", raw=True).split())
    assert before <= after, (before, after)
    # The nodes reconnect over TLS on their own and keep reporting.
    assert wait_until(lambda: both_serving(cluster), timeout=60), (serving(cluster["a"]), serving(cluster["b"]))
