"""playbooks/provision_hetzner.yml and inventories/hcloud against a LOCAL STAND-IN for the Hetzner
Cloud API (tests/standin/hcloud_api.py), reached through the collection's api_endpoint option on
loopback. The stand-in follows Hetzner's published request and response shapes; it shows what the
playbook asks for and how it reacts, never that the real API agrees (docs/provisioning.md keeps the
manual check against a real project)."""

from __future__ import annotations

import concurrent.futures

import json
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "standin"))
import hcloud_api  # noqa: E402

TOKEN = "standin-token-not-a-secret"
PLAYBOOK = str(REPO / "playbooks" / "provision_hetzner.yml")
ANSIBLE = pathlib.Path(sys.executable).parent
WRITES = ("POST", "PUT", "DELETE")

# A cluster: two livekit nodes behind the proxy (one with a TURN address of its own), Redis on a
# third server reached over the private network, a Load Balancer, records in a Hetzner DNS zone.
CLUSTER = {
    "livekit_hcloud_servers": [
        {"name": "lk1.example.com", "groups": ["livekit"], "private_ip": "10.0.1.11", "turn_ip": True},
        {"name": "lk2.example.com", "groups": ["livekit"], "private_ip": "10.0.1.12"},
        {"name": "redis1.example.com", "groups": ["redis"], "private_ip": "10.0.1.20"},
    ],
    "livekit_hcloud_dns_zone": "example.com",
    "livekit_hcloud_load_balancer_enabled": True,
    "livekit_host_firewall_ssh_sources": ["198.51.100.0/24", "2001:db8:1::/48"],
    "livekit_host_firewall_extra_rules": [{"proto": "tcp", "port": "8443", "sources": ["203.0.113.7"],
                                           "comment": "extra"}],
    "livekit_exporters_prometheus_sources": ["10.0.1.30"],
    "livekit_server_turn_domain": "turn-{{ inventory_hostname_short }}.example.com",
    "redis_allowed_clients": "{{ groups['livekit'] | map('extract', hostvars, 'livekit_private_ip') | list }}",
}


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "provision test", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    """The shipped inventories/hcloud, as a user copies it."""
    target = tmp_path_factory.mktemp("inv") / "hcloud"
    shutil.copytree(REPO / "inventories" / "hcloud", target)
    return target


def start_standin():
    server, endpoint, cloud = hcloud_api.serve(TOKEN)
    return server, endpoint, cloud


def run(inventory, endpoint, extra, *args, check=False):
    env = dict(os.environ, HCLOUD_TOKEN=TOKEN, HCLOUD_ENDPOINT=endpoint,
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".cache" / "collections"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0", ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_CALLBACK_RESULT_FORMAT="yaml", PATH=str(ANSIBLE) + os.pathsep + os.environ["PATH"])
    # One file per run: the bad-input cases run side by side.
    varfile = pathlib.Path(inventory).parent / ("extra-%s.json" % secrets.token_hex(6))
    varfile.write_text(json.dumps(extra))
    cmd = [str(ANSIBLE / "ansible-playbook"), "-i", str(inventory), PLAYBOOK, "-e", "@" + str(varfile)]
    cmd += ["--check"] if check else []
    cmd += list(args)
    try:
        return subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600, check=False)
    finally:
        varfile.unlink()


def changed(proc):
    recap = re.search(r"^localhost\s*:.*changed=(\d+).*failed=(\d+)", proc.stdout, re.M)
    assert recap, proc.stdout[-3000:] + proc.stderr[-2000:]
    return int(recap.group(1)), int(recap.group(2))


def writes(cloud, since=0):
    return [entry for entry in cloud.log[since:] if entry["method"] in WRITES]


@pytest.fixture(scope="module")
def cluster(inventory, ssh_key):
    """A fresh stand-in project, provisioned once with the cluster plan."""
    server, endpoint, cloud = start_standin()
    extra = dict(CLUSTER, livekit_hcloud_ssh_public_key=ssh_key)
    first = run(inventory, endpoint, extra)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    yield {"endpoint": endpoint, "cloud": cloud, "extra": extra, "first": first}
    server.shutdown()


def test_check_mode_on_an_empty_project_reports_the_changes_and_creates_nothing(inventory, ssh_key):
    server, endpoint, cloud = start_standin()
    try:
        proc = run(inventory, endpoint, dict(CLUSTER, livekit_hcloud_ssh_public_key=ssh_key), check=True)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        count, dummy = changed(proc)
        assert count > 0, "check mode on an empty project must report what it would create"
        assert "Would create lk1.example.com, lk2.example.com, redis1.example.com" in proc.stdout
        assert writes(cloud) == [], "check mode wrote to the API: %s" % writes(cloud)
        assert all(not cloud.data[kind] for kind in ("servers", "firewalls", "networks", "floating_ips", "ssh_keys"))
    finally:
        server.shutdown()


def test_create_builds_the_servers_with_labels_network_turn_address_and_records(cluster):
    cloud = cluster["cloud"]
    servers = {s["name"]: s for s in cloud.data["servers"].values()}
    assert sorted(servers) == ["lk1.example.com", "lk2.example.com", "redis1.example.com"]
    for server in servers.values():
        assert server["labels"]["managed-by"] == "selfhosted.livekit"
        assert server["labels"]["livekit-deployment"] == "livekit"
        assert server["image"]["name"] == "debian-12" and server["server_type"]["name"] == "ccx23"
        assert server["placement_group"]["type"] == "spread"
        assert len(server["public_net"]["firewalls"]) == 1
        assert server["user_data"].startswith("#cloud-config")
    assert servers["lk1.example.com"]["labels"]["livekit-group-livekit"] == "true"
    assert servers["redis1.example.com"]["labels"]["livekit-group-redis"] == "true"
    assert {s: servers[s]["private_net"][0]["ip"] for s in servers} == {
        "lk1.example.com": "10.0.1.11", "lk2.example.com": "10.0.1.12", "redis1.example.com": "10.0.1.20"}
    # TURN direct mode: a Floating IP on lk1, brought up by cloud-init, its PTR the TURN name.
    (turn_ip,) = cloud.data["floating_ips"].values()
    assert turn_ip["server"] == servers["lk1.example.com"]["id"]
    assert turn_ip["dns_ptr"] == [{"ip": turn_ip["ip"], "dns_ptr": "turn-lk1.example.com"}]
    assert "ip address replace %s/32 dev eth0" % turn_ip["ip"] in servers["lk1.example.com"]["user_data"]
    assert turn_ip["ip"] not in servers["lk2.example.com"]["user_data"]
    # Reverse DNS of the primary addresses.
    lk2 = servers["lk2.example.com"]["public_net"]
    assert lk2["ipv4"]["dns_ptr"] == "lk2.example.com"
    assert lk2["ipv6"]["dns_ptr"] == [{"ip": lk2["ipv6"]["ip"].split("/")[0] + "1", "dns_ptr": "lk2.example.com"}]
    # Records: signalling at the Load Balancer, each node's TURN name at its TURN address.
    (lb,) = cloud.data["load_balancers"].values()
    assert lb["services"][0]["listen_port"] == 443 and lb["services"][0]["protocol"] == "tcp"
    assert lb["targets"][0]["label_selector"]["selector"].endswith("livekit-group-livekit=true")
    records = {(r["name"], r["type"]): [x["value"] for x in r["records"]] for r in cloud.rrsets.values()}
    assert records[("livekit", "A")] == [lb["public_net"]["ipv4"]["ip"]]
    assert records[("turn-lk1", "A")] == [turn_ip["ip"]]
    assert records[("turn-lk2", "A")] == [lk2["ipv4"]["ip"]]
    assert ("turn-lk1", "AAAA") not in records


def test_a_second_run_changes_nothing_and_check_mode_changes_nothing(cluster, inventory):
    cloud = cluster["cloud"]
    before = len(cloud.log)
    second = run(inventory, cluster["endpoint"], cluster["extra"])
    assert changed(second) == (0, 0), second.stdout[-5000:]
    check = run(inventory, cluster["endpoint"], cluster["extra"], check=True)
    assert changed(check) == (0, 0), check.stdout[-5000:]
    assert writes(cloud, before) == []


def parse_nft(line):
    """(proto, port, family, sources) of an nft line the livekit_firewall module writes."""
    match = re.match(r'add rule inet livekit_filter input (?:(ip6?) saddr \{ ([^}]*) \} )?(tcp|udp) dport (\S+) accept', line)
    assert match, line
    family, sources, proto, port = match.groups()
    return proto, port, family or "any", frozenset(s.strip() for s in (sources or "").split(",") if s.strip())


def parse_cloud(rule):
    out = set()
    v4 = frozenset(s for s in rule["source_ips"] if ":" not in s)
    v6 = frozenset(s for s in rule["source_ips"] if ":" in s)
    if v4 == {"0.0.0.0/0"} and v6 == {"::/0"}:
        return {(rule["protocol"], rule["port"], "any", frozenset())}
    if v4:
        out.add((rule["protocol"], rule["port"], "ip", v4))
    if v6:
        out.add((rule["protocol"], rule["port"], "ip6", v6))
    return out


def host_nft_lines(inventory, endpoint, extra, tmp_path):
    """What the livekit_firewall module renders for each host, from the same inventory: each role's
    rule set as site.yml would load it, through the module itself (check mode, scratch directory)."""
    out = tmp_path / "host-rules.json"
    extra = dict(extra, lkt_rules_out=str(out), lkt_rules_dir=str(tmp_path / "nft"))
    playbook = pathlib.Path(__file__).with_name("host_rules.yml")
    env = dict(os.environ, HCLOUD_TOKEN=TOKEN, HCLOUD_ENDPOINT=endpoint,
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".cache" / "collections"), ANSIBLE_NOCOLOR="1")
    varfile = tmp_path / "extra.json"
    varfile.write_text(json.dumps(extra))
    proc = subprocess.run([str(ANSIBLE / "ansible-playbook"), "-i", str(inventory), str(playbook), "-e", "@" + str(varfile)],
                          env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_each_cloud_firewall_accepts_exactly_what_its_host_firewall_accepts(cluster, inventory, tmp_path):
    cloud = cluster["cloud"]
    hosts = host_nft_lines(inventory, cluster["endpoint"], cluster["extra"], tmp_path)
    assert sorted(hosts) == ["lk1.example.com", "lk2.example.com", "redis1.example.com"]
    firewalls = {f["name"]: f for f in cloud.data["firewalls"].values()}
    for host, lines in hosts.items():
        assert lines, host
        wanted = {parse_nft(line) for line in lines}
        rules = firewalls["livekit-" + host]["rules"]
        got = set()
        for rule in rules:
            if rule["protocol"] == "icmp":
                continue
            got |= parse_cloud(rule)
        assert got == wanted, "%s: cloud %s != host %s" % (host, sorted(got - wanted), sorted(wanted - got))
        # The host's base chain accepts ICMP; so does the cloud firewall, from anywhere.
        assert [r["source_ips"] for r in rules if r["protocol"] == "icmp"] == [["0.0.0.0/0", "::/0"]]
    # What this plan opens, spelled out once: SSH from the office only (both families), 80/443 and
    # media on the nodes, Redis from the nodes only.
    lk1 = {parse_nft(line) for line in hosts["lk1.example.com"]}
    assert ("tcp", "22", "ip", frozenset({"198.51.100.0/24"})) in lk1
    assert ("tcp", "22", "ip6", frozenset({"2001:db8:1::/48"})) in lk1
    assert ("tcp", "443", "any", frozenset()) in lk1 and ("udp", "50000-60000", "any", frozenset()) in lk1
    redis = {parse_nft(line) for line in hosts["redis1.example.com"]}
    assert ("tcp", "6379", "ip", frozenset({"10.0.1.11/32", "10.0.1.12/32"})) in redis
    assert not any(port == "443" for dummy, port, dummy2, dummy3 in redis)


def test_a_changed_source_moves_host_and_cloud_firewall_together(cluster, inventory, tmp_path):
    extra = dict(cluster["extra"], livekit_host_firewall_ssh_sources=["192.0.2.0/24"])
    proc = run(inventory, cluster["endpoint"], extra)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert changed(proc)[0] == 1, "only the firewalls' task changes"
    hosts = host_nft_lines(inventory, cluster["endpoint"], extra, tmp_path)
    for firewall in cluster["cloud"].data["firewalls"].values():
        ssh = [r for r in firewall["rules"] if r["port"] == "22"]
        assert [r["source_ips"] for r in ssh] == [["192.0.2.0/24"]], firewall["name"]
    for host, lines in hosts.items():
        assert ("tcp", "22", "ip", frozenset({"192.0.2.0/24"})) in {parse_nft(line) for line in lines}, host
    back = run(inventory, cluster["endpoint"], cluster["extra"])
    assert back.returncode == 0


def test_the_hcloud_inventory_builds_the_groups_from_the_labels(cluster, inventory):
    hcloud_api_seed(cluster["endpoint"], "someone-elses.example.com", {"livekit-group-livekit": "true"})
    env = dict(os.environ, HCLOUD_TOKEN=TOKEN, HCLOUD_ENDPOINT=cluster["endpoint"],
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".cache" / "collections"))
    proc = subprocess.run([str(ANSIBLE / "ansible-inventory"), "-i", str(inventory), "--list"], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted(data["livekit"]["hosts"]) == ["lk1.example.com", "lk2.example.com"]
    assert data["redis"]["hosts"] == ["redis1.example.com"]
    assert "hosts" not in data.get("monitoring", {})
    hostvars = data["_meta"]["hostvars"]
    assert "someone-elses.example.com" not in hostvars, "a server of another deployment joined the inventory"
    lk1 = next(s for s in cluster["cloud"].data["servers"].values() if s["name"] == "lk1.example.com")
    assert plain(hostvars["lk1.example.com"]["ansible_host"]) == lk1["public_net"]["ipv4"]["ip"]
    assert plain(hostvars["lk1.example.com"]["ansible_user"]) == "root"


def plain(value):
    """ansible-inventory marks API values unsafe ({"__ansible_unsafe": ...}) in its JSON."""
    return value.get("__ansible_unsafe") if isinstance(value, dict) else value


def hcloud_api_seed(endpoint, name, labels=None):
    base = endpoint.rsplit("/v1", 1)[0]
    request = urllib.request.Request(base + "/__standin/seed", data=json.dumps({"name": name, "labels": labels or {}}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["server"]


def test_teardown_refuses_a_planned_server_it_did_not_create(inventory, ssh_key):
    server, endpoint, cloud = start_standin()
    try:
        hcloud_api_seed(endpoint, "lk2.example.com")  # someone else's server with a planned name
        proc = run(inventory, endpoint, dict(CLUSTER, livekit_hcloud_ssh_public_key=ssh_key), "-e", "livekit_hcloud_state=absent")
        assert proc.returncode != 0
        assert "Nothing was deleted: lk2.example.com exist but lack the labels" in proc.stdout
        assert writes(cloud) == []
        assert [s["name"] for s in cloud.data["servers"].values()] == ["lk2.example.com"]
    finally:
        server.shutdown()


def test_teardown_deletes_what_the_deployment_created_and_nothing_else(inventory, ssh_key, tmp_path):
    server, endpoint, cloud = start_standin()
    try:
        extra = dict(CLUSTER, livekit_hcloud_ssh_public_key=ssh_key)
        assert run(inventory, endpoint, extra).returncode == 0
        other = hcloud_api_seed(endpoint, "unrelated.example.com",
                                {"managed-by": "selfhosted.livekit", "livekit-deployment": "another"})
        check = run(inventory, endpoint, extra, "-e", "livekit_hcloud_state=absent", check=True)
        assert check.returncode == 0 and changed(check)[0] > 0
        assert cloud.data["servers"] and cloud.data["firewalls"], "check mode deleted something"
        proc = run(inventory, endpoint, extra, "-e", "livekit_hcloud_state=absent")
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert [s["id"] for s in cloud.data["servers"].values()] == [other["id"]]
        for kind in ("firewalls", "networks", "placement_groups", "floating_ips", "load_balancers", "ssh_keys"):
            assert not cloud.data[kind], "%s left behind: %s" % (kind, list(cloud.data[kind].values()))
        assert not cloud.rrsets
        again = run(inventory, endpoint, extra, "-e", "livekit_hcloud_state=absent")
        assert changed(again) == (0, 0)
    finally:
        server.shutdown()


BAD_INPUT = [
    ("unknown server type", {"livekit_hcloud_server_type": "ccx99"},
     ['Server type "ccx99" (livekit_hcloud_server_type', "choose one"]),
    ("server type not a type name", {"livekit_hcloud_server_type": "big"},
     ['server type "big" (livekit_hcloud_server_type or the entry\'s server_type) is not a Hetzner Cloud server type']),
    ("location not in the allowed format", {"livekit_hcloud_location": "Falkenstein"},
     ['location "Falkenstein" (livekit_hcloud_location', "fsn1"]),
    ("unknown location", {"livekit_hcloud_location": "xyz1"}, ['Location "xyz1" (livekit_hcloud_location']),
    ("ssh source not a CIDR", {"livekit_host_firewall_ssh_sources": ["office"]},
     ["'office' is not an IP address or CIDR network", "livekit_host_firewall_ssh_sources"]),
    ("prometheus source not a CIDR", {"livekit_server_prometheus_sources": ["10.0.0.0/33"]},
     ["10.0.0.0/33", "livekit_server_prometheus_sources"]),
    ("image not Debian", {"livekit_hcloud_image": "ubuntu-24.04"}, ['image "ubuntu-24.04" (livekit_hcloud_image', "debian-12"]),
    ("private ip outside the subnet", {"livekit_hcloud_servers": [
        {"name": "lk1.example.com", "groups": ["livekit"], "private_ip": "10.9.0.5"},
        {"name": "redis1.example.com", "groups": ["redis"], "private_ip": "10.0.1.20"}]},
     ["private_ip 10.9.0.5 is not an address in livekit_hcloud_network_subnet 10.0.1.0/24"]),
    ("unknown group", {"livekit_hcloud_servers": [{"name": "lk1.example.com", "groups": ["livekit", "turn"]}]},
     ["groups must list one or more of livekit, redis, monitoring"]),
    ("duplicate names", {"livekit_hcloud_servers": [{"name": "lk1.example.com", "groups": ["livekit"]},
                                                    {"name": "lk1.example.com", "groups": ["redis"]}]},
     ["livekit_hcloud_servers must list the servers to create, each with a unique name"]),
    ("turn_ip as a string", {"livekit_hcloud_servers": [{"name": "lk1.example.com", "groups": ["livekit"], "turn_ip": "yes"}]},
     ["turn_ip must be true or false"]),
    ("private key instead of the public one", {"livekit_hcloud_ssh_public_key": "~/.ssh/id_ed25519"},
     ["livekit_hcloud_ssh_public_key must be one public key line"]),
    ("deployment name with capitals", {"livekit_hcloud_deployment": "LiveKit"}, ['livekit_hcloud_deployment "LiveKit"']),
]


def refusal_problem(inventory, ssh_key, label, override, messages):
    """None when the playbook refused this bad input with its messages before any API write, else what went wrong."""
    server, endpoint, cloud = start_standin()
    try:
        extra = dict(CLUSTER, livekit_hcloud_ssh_public_key=ssh_key)
        extra.update(override)
        proc = run(inventory, endpoint, extra)
        if proc.returncode == 0:
            return "%s was accepted" % label
        text = " ".join(proc.stdout.split())
        for message in messages:
            if " ".join(message.split()) not in text:
                return "%s: %r not in the output:\n%s" % (label, message, proc.stdout[-3000:])
        if writes(cloud):
            return "%s: the API was written to before the refusal: %s" % (label, writes(cloud))
        return None
    finally:
        server.shutdown()


def test_bad_input_is_refused_before_anything_is_created(inventory, ssh_key):
    # Each case is its own playbook run against its own stand-in; they run side by side (the runs spend
    # most of their time starting Ansible), and every case is reported.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        problems = list(pool.map(lambda case: refusal_problem(inventory, ssh_key, *case), BAD_INPUT))
    assert [p for p in problems if p] == []
