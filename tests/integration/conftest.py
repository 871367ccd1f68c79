"""Fixtures for integration tests against converged test hosts.

The tests run on the controller and talk to the hosts the way users and clients do: over the
test network (signalling, Twirp API, TURN/TLS, WebRTC media), plus a look inside each host
through podman for state that has no network face (file modes, Redis persistence).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import urllib.error
import urllib.request

import jwt  # PyJWT, a dependency of the livekit-api package
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
PARTICIPANT = REPO / "tests" / "participant" / "lk_participant.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hosts-dir", required=True, help="directory of <host>.json written by verify.yml")


@dataclass
class Node:
    """One converged test host."""

    name: str
    ip: str
    suite: str
    port: int
    rtc_tcp_port: int
    prometheus_port: int
    turn_domain: str
    turn_tls_port: int
    ca_cert: str

    @property
    def http(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.ip}:{self.port}"

    def sh(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command inside the host."""
        return subprocess.run(
            ["podman", "exec", self.name, "sh", "-c", command],
            capture_output=True, text=True, check=check, timeout=120,
        )


def load_nodes(hosts_dir: str) -> list[Node]:
    nodes = []
    for path in sorted(pathlib.Path(hosts_dir).glob("*.json")):
        data = json.loads(path.read_text())
        for key in ("port", "rtc_tcp_port", "prometheus_port", "turn_tls_port"):
            data[key] = int(data[key])
        nodes.append(Node(**data))
    return nodes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node" in metafunc.fixturenames:
        nodes = load_nodes(metafunc.config.getoption("--hosts-dir"))
        metafunc.parametrize("node", nodes, ids=[n.name for n in nodes], scope="module")


@pytest.fixture(scope="session")
def api_key() -> str:
    return os.environ["LKT_API_KEY"]


@pytest.fixture(scope="session")
def api_secret() -> str:
    return os.environ["LKT_API_SECRET"]


def make_token(key: str, secret: str, identity: str = "integration-test", ttl: int = 600, **video) -> str:
    """An access token as LiveKit's SDKs make them (HS256, iss = API key)."""
    now = int(time.time())
    claims = {"iss": key, "sub": identity, "nbf": now - 5, "exp": now + ttl, "video": video}
    return jwt.encode(claims, secret, algorithm="HS256")


def http(url: str, data: bytes | None = None, headers: dict | None = None,
         timeout: float = 10) -> tuple[int, str]:
    """(status, body) of an HTTP request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def twirp(node: Node, method: str, body: dict, token: str) -> tuple[int, dict]:
    """Call RoomService/<method> with a Bearer token; returns (status, decoded JSON body)."""
    status, text = http(
        f"{node.http}/twirp/livekit.RoomService/{method}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        return status, json.loads(text) if text else {}
    except ValueError:  # errors from the auth middleware are plain text
        return status, {"text": text}


def participant(node: Node, *args: str, key: str, secret: str, timeout: float = 90,
                extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real-client test participant (LiveKit's Python real-time SDK) against a node."""
    env = dict(os.environ, LIVEKIT_API_KEY=key, LIVEKIT_API_SECRET=secret, **(extra_env or {}))
    return subprocess.run(
        [sys.executable, str(PARTICIPANT), *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )


def playbook_command(playbook: str, *args: str) -> list[str]:
    """ansible-playbook with one of the collection's playbooks and the scenario's inventory."""
    inventory = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
    return [str(pathlib.Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
            str(REPO / "playbooks" / playbook), *args]


def run_playbook(playbook: str, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run one of the collection's playbooks as a user would; stdout and stderr are captured."""
    # JSON results and no colours: a message is one line, whatever its length, so tests can match it.
    plain = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        playbook_command(playbook, *args), capture_output=True, text=True, timeout=timeout, check=False,
        cwd=REPO, env=dict(os.environ, **plain, **(env or {})),
    )


def private_hosts(path: pathlib.Path, ip: str, names: list[str]) -> list[str]:
    """A command prefix that runs a client with `names` resolving to `ip`, through its own
    /etc/hosts in a mount namespace (the controller's resolver is never touched)."""
    path.write_text(f"127.0.0.1 localhost\n{ip} {' '.join(names)}\n")
    return ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(path)]


def tcp_reachable(ip: str, port: int, timeout: float = 3) -> bool:
    """Whether a TCP connection to ip:port opens from the controller."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def security_exposure(node: Node, unit: str) -> tuple[float, str]:
    """`systemd-analyze security` of a unit on the host: (overall exposure, the worst lines)."""
    out = node.sh(f"systemd-analyze security --no-pager {unit}", check=False).stdout
    overall = [line for line in out.splitlines() if "Overall exposure level" in line]
    assert overall, f"systemd-analyze security printed no exposure for {unit}:\n{out}"
    score = float(overall[-1].split(":", 1)[1].split()[0])
    failing = []
    for line in out.splitlines():
        parts = line.split()
        if line.lstrip().startswith("\u2717") and parts and parts[-1].replace(".", "", 1).isdigit():
            failing.append((float(parts[-1]), line.strip()))
    worst = "\n".join(text for _weight, text in sorted(failing, reverse=True)[:12])
    return score, f"{overall[-1].strip()}\nworst settings:\n{worst}"


def unit_state(node: Node) -> str:
    return node.sh("systemctl show -p ActiveState --value livekit-server").stdout.strip()


class Participant:
    """A real client that joins, optionally publishes, and stays until told to hang up (<= ``seconds``)."""

    def __init__(self, node: Node, room: str, identity: str, key: str, secret: str, publish: bool = False,
                 url: str | None = None, wrap: list[str] | None = None, extra_env: dict | None = None,
                 relay_only: bool = False, report_every: float | None = None, seconds: int = 400):
        """url: another signalling URL than the node's ws:// (e.g. wss:// through the proxy); wrap: a
        command prefix (e.g. a private /etc/hosts); extra_env: e.g. SSL_CERT_FILE for a test CA;
        relay_only: ICE through TURN only; report_every: frame counts every this many seconds
        (``progress`` lines in hang_up()'s events)."""
        env = dict(os.environ, LIVEKIT_API_KEY=key, LIVEKIT_API_SECRET=secret, **(extra_env or {}))
        self.proc = subprocess.Popen(
            [*(wrap or []), sys.executable, str(PARTICIPANT), "--url", url or node.ws, "--room", room,
             "--timeout", str(seconds + 50), *(["--relay-only"] if relay_only else []),
             "stay", "--identity", identity, "--seconds", str(seconds),
             *(["--publish"] if publish else []),
             *(["--report-every", str(report_every)] if report_every else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        first = json.loads(self.proc.stdout.readline() or "{}")
        assert first.get("event") == "connected", first

    def connected(self) -> bool:
        return self.proc.poll() is None

    def hang_up(self) -> dict:
        """Leave cleanly; returns the events and the summary the client printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
        out = self.proc.communicate(timeout=60)[0]
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {"events": events, "summary": events[-1] if events else {}}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def people():
    started: list[Participant] = []
    yield started
    for person in started:
        person.kill()


@pytest.fixture(scope="module")
def cluster(request) -> dict[str, Node]:
    """The cluster scenario's hosts: nodes a and b, and the Redis host."""
    nodes = {n.name: n for n in load_nodes(request.config.getoption("--hosts-dir"))}
    return {"a": nodes["lkt-node-a"], "b": nodes["lkt-node-b"], "redis": nodes["lkt-redis"]}


def audit(node: Node) -> list[dict]:
    """The node's audit log (/var/lib/livekit-deploy/audit.jsonl), oldest event first."""
    return [json.loads(line) for line in node.sh("cat /var/lib/livekit-deploy/audit.jsonl").stdout.splitlines()]


def run_secrets() -> dict[str, str]:
    """Every secret of this test run (scripts/test.sh makes them), by name. Report names only."""
    found = {name: os.environ[name] for name in ("LKT_API_SECRET", "LKT_REDIS_PASSWORD", "LKT_S3_SECRET_KEY",
                                                 "LKT_PROBE_API_SECRET")
             if os.environ.get(name)}
    identity = os.environ.get("LKT_AGE_IDENTITY_FILE")
    if identity and os.path.exists(identity):
        for line in pathlib.Path(identity).read_text().splitlines():
            if line.startswith("AGE-SECRET-KEY-"):
                found["age identity"] = line.strip()
    signing = os.environ.get("LKT_BACKUP_SIGNING_KEY_FILE")
    if signing and os.path.exists(signing):
        found.update(signing_key_secrets(pathlib.Path(signing).read_text()))
    return found


def signing_key_secrets(key_text: str) -> dict[str, str]:
    """The line of an Ed25519 OpenSSH private key's body that holds its private seed (the fourth), by
    name: seeing it in an output or command line means the key leaked. The other lines hold the
    header, the public key (which may be shown) and the comment."""
    lines = [line.strip() for line in key_text.strip().splitlines()[1:-1]]
    return {"backup signing key": lines[3]} if len(lines) > 3 else {}


class ArgvSampler(threading.Thread):
    """Collects the command line of every process on the controller and on the hosts, every 0.3 s,
    until stopped (at most ``limit`` rounds)."""

    def __init__(self, nodes: list[Node], limit: int = 4000):
        super().__init__(daemon=True)
        self.nodes, self.limit, self.samples, self.stop = nodes, limit, [], threading.Event()

    def run(self) -> None:
        rounds = 0
        while not self.stop.is_set() and rounds < self.limit:
            rounds += 1
            commands = [["ps", "-eo", "args"]] + [["podman", "exec", n.name, "ps", "-eo", "args"] for n in self.nodes]
            for cmd in commands:
                self.samples.append(subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30).stdout)
            time.sleep(0.3)


def assert_no_secret(playbook: str, output: str, sampler: ArgvSampler, extra: dict | None = None) -> None:
    """No secret of the run in a playbook's output or in any command line sampled while it ran.
    Failures name the secret, never show it."""
    secrets = dict(run_secrets(), **(extra or {}))
    in_output = sorted(name for name, value in secrets.items() if value and value in output)
    in_argv = sorted(name for name, value in secrets.items()
                     if value and any(value in sample for sample in sampler.samples))
    assert not in_output, f"{', '.join(in_output)} reached the -vvv --diff output of {playbook}"
    assert not in_argv, f"{', '.join(in_argv)} reached a process command line during {playbook}"
    assert len(sampler.samples) > len(sampler.nodes), "the command lines were never sampled"


def run_playbook_watched(playbook: str, *args: str, nodes: list[Node], env: dict | None = None,
                         timeout: float = 900, extra_secrets: dict | None = None) -> subprocess.CompletedProcess:
    """run_playbook with -vvv --diff while every command line on the controller and ``nodes`` is
    sampled; fails if any secret of the run shows up in the output or a command line."""
    sampler = ArgvSampler(nodes)
    sampler.start()
    try:
        result = run_playbook(playbook, "-vvv", "--diff", *args, env=env, timeout=timeout)
    finally:
        sampler.stop.set()
        sampler.join(timeout=60)
    assert_no_secret(playbook, result.stdout + result.stderr, sampler, extra_secrets)
    return result


# ---- the cluster scenario: where LiveKit placed a room ------------------------------------------
# Redis on the cluster's Redis host speaks only TLS on the network; local clients use its socket.
CLUSTER_REDIS_SOCKET = "/run/redis/redis-server.sock"


def cluster_nodes(node: Node) -> list[dict]:
    """The cluster's node table as livekit-server list-nodes prints it on ``node``."""
    sys.path.insert(0, str(REPO / ".cache" / "collections"))
    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_metrics import parse_list_nodes  # pylint: disable=import-outside-toplevel
    out = node.sh("/opt/livekit/current/livekit-server list-nodes --config /etc/livekit/livekit.yaml 2>/dev/null").stdout
    return parse_list_nodes(out)


def node_state(node: Node) -> str | None:
    return next((n["state"] for n in cluster_nodes(node) if n["ip"] == node.ip), None)


def room_host(cluster: dict, room: str) -> str | None:
    """Name of the node LiveKit placed a room on (Redis room_node_map, node ids from list-nodes)."""
    node_id = subprocess.run(
        ["podman", "exec", "-e", "REDISCLI_AUTH", cluster["redis"].name, "redis-cli", "-s", CLUSTER_REDIS_SOCKET,
         "HGET", "room_node_map", room],
        capture_output=True, text=True, timeout=30, check=True,
        env=dict(os.environ, REDISCLI_AUTH=os.environ["LKT_REDIS_PASSWORD"]),
    ).stdout.strip()
    ips = {n["id"]: n["ip"] for n in cluster_nodes(cluster["a"])}
    return next((n.name for n in (cluster["a"], cluster["b"]) if ips.get(node_id) == n.ip), None)


def create_room(node: Node, room: str, key: str, secret: str) -> None:
    status, body = twirp(node, "CreateRoom", {"name": room, "empty_timeout": 600}, make_token(key, secret, roomCreate=True))
    assert status == 200, body


def place_room(cluster: dict, target: Node, prefix: str, key: str, secret: str) -> str:
    """A room hosted on `target` (LiveKit picks the node; retry names until it picks this one)."""
    tries = 0
    while tries < 30:
        tries += 1
        room = f"{prefix}-{uuid.uuid4().hex[:6]}"
        create_room(target, room, key, secret)
        if room_host(cluster, room) == target.name:
            return room
        twirp(target, "DeleteRoom", {"room": room}, make_token(key, secret, roomCreate=True))
    pytest.fail(f"LiveKit never placed a room on {target.name} in {tries} tries")


def read_vault_keys(vault_file, vault_pass) -> dict:
    """livekit_server_api_keys from the ansible-vault file rotate_keys.yml writes."""
    out = subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("ansible-vault")), "view", "--vault-password-file", str(vault_pass),
         str(vault_file)], capture_output=True, text=True, check=True, timeout=60).stdout
    return yaml.safe_load(out)["livekit_server_api_keys"]
