"""Faults injected into backups on the real node lkt-bk-a (molecule/backup; runs before test_backup.py).

Each fault runs the real livekit-backup.service (the unit the timer starts, in its sandbox), pointed
where the fault is, and must end with nothing lost and a message that says what happened: 'latest'
keeps pointing at a good backup, no manifest appears for a backup that did not finish, Redis keeps its
data, and the node-exporter metric says the attempt failed. The storage faults go through
tests/integration/s3_faults.py, a fault-injecting stand-in in front of the real MinIO (named as such:
it decides what the client sees, MinIO still stores what gets through). Every fault and its outcome is
listed in docs/reliability.md. S3 objects the faults leave are removed at the end, so test_backup.py
starts from the state the converge left.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import subprocess
import time

import boto3
import pytest

from conftest import Node, load_nodes, security_exposure

A, S3 = "lkt-bk-a", "lkt-s3"
BUCKET = "livekit-backups"
PROXY_PORT = 9100
CONTROL = "/run/s3-faults.json"
PROXY_LOG = "/run/s3-faults.log"
CONFIG = "/etc/livekit-backup/config.json"
FAULT_CONFIG = "/etc/livekit-backup/faults.json"
DROPIN = "/run/systemd/system/livekit-backup.service.d/faults.conf"
CLI = "/usr/bin/python3 /usr/local/lib/selfhosted-livekit/livekit_backup_cli.py"
METRIC = "/var/lib/prometheus/node-exporter/livekit_backup.prom"
REDIS_SOCKET = "/run/redis/redis-server.sock"
MARKED = {f"lkt:fault:{i}": secrets.token_hex(8) for i in range(20)}


@pytest.fixture(scope="module")
def nodes(request: pytest.FixtureRequest) -> dict[str, Node]:
    return {n.name: n for n in load_nodes(request.config.getoption("--hosts-dir"))}


@pytest.fixture(scope="module")
def bucket(nodes: dict[str, Node]):
    """The bucket, as MinIO itself has it; objects the faults add are removed afterwards."""
    client = boto3.client("s3", endpoint_url=f"http://{nodes[S3].ip}:9000", region_name="us-east-1",
                          aws_access_key_id=os.environ["LKT_S3_ACCESS_KEY"],
                          aws_secret_access_key=os.environ["LKT_S3_SECRET_KEY"])
    before = set(keys(client))
    latest_before = client.get_object(Bucket=BUCKET, Key=f"livekit/{A}/latest.json")["Body"].read() \
        if f"livekit/{A}/latest.json" in before else None
    yield client
    for key in set(keys(client)) - before:
        client.delete_object(Bucket=BUCKET, Key=key)
    if latest_before is not None:
        client.put_object(Bucket=BUCKET, Key=f"livekit/{A}/latest.json", Body=latest_before)


@pytest.fixture(scope="module")
def host_a(nodes: dict[str, Node], bucket) -> Node:
    """lkt-bk-a with marked Redis keys, the fault stand-in running on lkt-s3, and the unit's drop-in
    directory; everything is put back afterwards."""
    host, s3 = nodes[A], nodes[S3]
    redis(host, "MSET", *[part for pair in MARKED.items() for part in pair])
    script = (pathlib.Path(__file__).parent / "s3_faults.py").read_text()
    subprocess.run(["podman", "exec", "-i", s3.name, "sh", "-c", "cat > /run/s3_faults.py"], input=script, text=True,
                   check=True, timeout=30)
    s3.sh(f"echo '{{\"mode\": \"pass\"}}' > {CONTROL}; : > {PROXY_LOG}")
    s3.sh(f"systemd-run --unit lkt-s3-faults --collect python3 /run/s3_faults.py --listen {PROXY_PORT} "
          f"--upstream 127.0.0.1:9000 --control {CONTROL} --log {PROXY_LOG} --lifetime 1800")
    host.sh(f"mkdir -p {os.path.dirname(DROPIN)}")
    yield host
    host.sh(f"rm -f {DROPIN} {FAULT_CONFIG}; systemctl daemon-reload")
    s3.sh("systemctl stop lkt-s3-faults", check=False)
    assert redis_values(host, list(MARKED)) == list(MARKED.values()), "a fault lost Redis data"


def keys(client) -> list[str]:
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"livekit/{A}/"):
        found += [obj["Key"] for obj in page.get("Contents", [])]
    return found


def latest(client) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=f"livekit/{A}/latest.json")["Body"].read())


def manifests(client) -> set[str]:
    return {key.split("/")[2] for key in keys(client) if key.endswith("/manifest.json")}


def redis(node: Node, *args: str) -> str:
    """redis-cli on the host; the password goes through the environment, not argv."""
    return subprocess.run(["podman", "exec", "-e", "REDISCLI_AUTH", node.name, "redis-cli", "-s", REDIS_SOCKET, *args],
                          capture_output=True, text=True, check=True, timeout=60,
                          env=dict(os.environ, REDISCLI_AUTH=os.environ["LKT_REDIS_PASSWORD"])).stdout.strip()


def redis_values(node: Node, names: list[str]) -> list[str]:
    return redis(node, "--raw", "MGET", *names).split("\n")[:len(names)]


def metric(node: Node, name: str) -> float:
    for line in node.sh(f"cat {METRIC}").stdout.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in {METRIC}")


def set_fault(s3: Node, **control) -> None:
    s3.sh(f"echo '{json.dumps(control)}' > {CONTROL}")


def run_unit(node: Node, endpoint: str | None = None, wrapper: str = "", timeout: float = 600) -> tuple[bool, str, float]:
    """Start livekit-backup.service as the timer would and wait for it. ``endpoint`` replaces the S3
    endpoint (the fault stand-in), ``wrapper`` goes in front of the command (faketime). Returns
    (succeeded, what it said in the journal, seconds)."""
    if endpoint or wrapper:
        node.sh(f"python3 -c 'import json,sys; c=json.load(open(\"{CONFIG}\")); "
                f"c[\"s3\"][\"endpoint_url\"]=sys.argv[1] or c[\"s3\"][\"endpoint_url\"]; "
                f"json.dump(c, open(\"{FAULT_CONFIG}\", \"w\"))' '{endpoint or ''}'; chmod 600 {FAULT_CONFIG}")
        node.sh(f"printf '[Service]\\nExecStart=\\nExecStart={wrapper}{CLI} {FAULT_CONFIG}\\n' > {DROPIN}")
    else:
        node.sh(f"rm -f {DROPIN}")
    node.sh("systemctl daemon-reload")
    started = time.monotonic()
    node.sh(f"timeout {int(timeout)} systemctl start livekit-backup.service", check=False)
    seconds = time.monotonic() - started
    invocation = node.sh("systemctl show -p InvocationID --value livekit-backup.service").stdout.strip()
    said = node.sh(f"journalctl -o cat --no-pager _SYSTEMD_INVOCATION_ID={invocation}").stdout
    result = node.sh("systemctl show -p Result --value livekit-backup.service").stdout.strip()
    return result == "success", said, seconds


def assert_nothing_moved(client, before_latest: dict, before_manifests: set[str], node: Node, said: str) -> None:
    assert latest(client) == before_latest, "'latest' moved after a failed backup"
    assert manifests(client) == before_manifests, "a backup that did not finish has a manifest"
    assert metric(node, "livekit_backup_last_attempt_ok") == 0
    assert "'latest' still points to the previous backup" in said or "nothing was" in said, said


def test_storage_answering_500_fails_clearly_and_moves_nothing(host_a: Node, nodes: dict[str, Node], bucket) -> None:
    ok, said, _seconds = run_unit(host_a)
    assert ok, said
    good_latest, good = latest(bucket), manifests(bucket)
    last_success = metric(host_a, "livekit_backup_last_success_timestamp_seconds")
    set_fault(nodes[S3], mode="error", count=-1)
    ok, said, seconds = run_unit(host_a, endpoint=f"http://{S3}:{PROXY_PORT}")
    set_fault(nodes[S3], mode="pass")
    assert not ok
    assert "InternalError" in said and "the encrypted archive is kept at" in said, said
    assert_nothing_moved(bucket, good_latest, good, host_a, said)
    assert metric(host_a, "livekit_backup_last_success_timestamp_seconds") == last_success
    print(f"\nS3 answering 500 to everything: failed after {seconds:.1f} s: {said.strip().splitlines()[-1][:300]}")


def test_storage_failing_a_few_times_is_retried(host_a: Node, nodes: dict[str, Node], bucket) -> None:
    before = manifests(bucket)
    nodes[S3].sh(f": > {PROXY_LOG}")
    set_fault(nodes[S3], mode="error", count=2)
    ok, said, seconds = run_unit(host_a, endpoint=f"http://{S3}:{PROXY_PORT}")
    set_fault(nodes[S3], mode="pass")
    errors = [json.loads(line) for line in nodes[S3].sh(f"cat {PROXY_LOG}").stdout.splitlines()]
    assert [e["mode"] for e in errors].count("error") == 2, errors
    assert ok, said
    new = manifests(bucket) - before
    assert len(new) == 1 and latest(bucket)["id"] in new
    assert metric(host_a, "livekit_backup_last_attempt_ok") == 1
    print(f"\nS3 answering 500 twice: retried, backed up in {seconds:.1f} s")


def test_slow_storage_still_gives_a_complete_backup(host_a: Node, nodes: dict[str, Node], bucket) -> None:
    before = manifests(bucket)
    set_fault(nodes[S3], mode="slow", delay=4)
    ok, said, seconds = run_unit(host_a, endpoint=f"http://{S3}:{PROXY_PORT}")
    set_fault(nodes[S3], mode="pass")
    assert ok, said
    assert len(manifests(bucket) - before) == 1
    print(f"\nS3 waiting 4 s before each answer: backed up in {seconds:.1f} s")


def test_full_spool_fails_clearly_and_uploads_nothing(host_a: Node, bucket) -> None:
    good_latest, good, count = latest(bucket), manifests(bucket), len(keys(bucket))
    spool = "/var/backups/livekit"
    host_a.sh(f"mount -t tmpfs -o size=64k,mode=0700 lkt-full-spool {spool} && "
              f"(dd if=/dev/zero of={spool}/filler bs=4k 2>/dev/null || true)")
    try:
        ok, said, _seconds = run_unit(host_a)
    finally:
        host_a.sh(f"umount {spool}")
    assert not ok
    assert "No space left on device" in said, said
    assert_nothing_moved(bucket, good_latest, good, host_a, said)
    assert len(keys(bucket)) == count, "a backup that could not be written still uploaded something"
    print(f"\nbackup spool full: {said.strip().splitlines()[-1][:300]}")
    ok, said, _seconds = run_unit(host_a)
    assert ok, f"the backup after the disk was freed failed: {said}"


def test_full_redis_dir_fails_clearly_and_redis_keeps_its_data(host_a: Node, bucket) -> None:
    """Redis's directory on a small filesystem that fills up: Redis cannot write its snapshot, the
    backup says so and uploads nothing; once there is room, Redis has every key and backs up."""
    good_latest, good = latest(bucket), manifests(bucket)
    host_a.sh("systemctl stop redis-server && rm -rf /run/lkt-redis-real && cp -a /var/lib/redis /run/lkt-redis-real")
    size_kb = int(host_a.sh("du -sk /var/lib/redis | cut -f1").stdout.split()[0]) + 4096
    host_a.sh(f"mount -t tmpfs -o size={size_kb}k,mode=0750 lkt-full-redis /var/lib/redis && "
              "cp -a /run/lkt-redis-real/. /var/lib/redis/ && chown redis:redis /var/lib/redis && "
              "systemctl start redis-server")
    try:
        host_a.sh("dd if=/dev/zero of=/var/lib/redis/filler bs=64k 2>/dev/null || true")
        ok, said, _seconds = run_unit(host_a)
        assert not ok
        assert "snapshot" in said.lower() and "redis" in said.lower(), said
        assert_nothing_moved(bucket, good_latest, good, host_a, said)
        assert redis_values(host_a, list(MARKED)) == list(MARKED.values())
        print(f"\nRedis directory full: {said.strip().splitlines()[-1][:300]}")
    finally:
        host_a.sh("rm -f /var/lib/redis/filler && systemctl stop redis-server && rm -rf /run/lkt-redis-after && "
                  "cp -a /var/lib/redis /run/lkt-redis-after && umount /var/lib/redis && "
                  "find /var/lib/redis -mindepth 1 -delete && cp -a /run/lkt-redis-after/. /var/lib/redis/ && "
                  "chown redis:redis /var/lib/redis && rm -rf /run/lkt-redis-after /run/lkt-redis-real && "
                  "systemctl start redis-server")
    assert redis_values(host_a, list(MARKED)) == list(MARKED.values())
    ok, said, _seconds = run_unit(host_a)
    assert ok, f"the backup after Redis had room again failed: {said}"


def test_a_clock_hours_off_is_refused_by_storage_and_moves_nothing(host_a: Node, bucket) -> None:
    host_a.sh("command -v faketime >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
              "--no-install-recommends faketime >/dev/null")
    good_latest, good = latest(bucket), manifests(bucket)
    ok, said, _seconds = run_unit(host_a, wrapper="/usr/bin/faketime -f +3h ")
    assert not ok, "a backup signed with a clock 3 h ahead was accepted"
    assert "RequestTimeTooSkewed" in said or "skew" in said.lower(), said
    assert_nothing_moved(bucket, good_latest, good, host_a, said)
    print(f"\nclock 3 h ahead: {said.strip().splitlines()[-1][:300]}")


def test_redis_restarting_mid_backup_never_gives_an_incomplete_good_backup(host_a: Node, bucket) -> None:
    before = manifests(bucket)
    host_a.sh(f"rm -f {DROPIN} && systemctl daemon-reload")  # the timer's own command, not a fault's
    dbsize = int(redis(host_a, "DBSIZE"))
    outcomes = []
    for _attempt in range(3):
        host_a.sh("systemctl start --no-block livekit-backup.service")
        time.sleep(0.3)
        host_a.sh("systemctl restart redis-server")
        host_a.sh("timeout 300 sh -c 'while systemctl is-active -q livekit-backup.service; do sleep 0.5; done'", check=False)
        invocation = host_a.sh("systemctl show -p InvocationID --value livekit-backup.service").stdout.strip()
        said = host_a.sh(f"journalctl -o cat --no-pager _SYSTEMD_INVOCATION_ID={invocation}").stdout
        outcomes.append((host_a.sh("systemctl show -p Result --value livekit-backup.service").stdout.strip(), said))
    assert redis_values(host_a, list(MARKED)) == list(MARKED.values())
    for result, said in outcomes:
        assert result == "success" or "redis" in said.lower(), said
    for backup_id in manifests(bucket) - before:
        manifest = json.loads(bucket.get_object(Bucket=BUCKET, Key=f"livekit/{A}/{backup_id}/manifest.json")["Body"].read())
        assert manifest["redis"]["keys"] >= dbsize, f"backup {backup_id} is marked good without all of Redis's keys"
    print(f"\nRedis restarted mid-backup: {[outcome[0] for outcome in outcomes]}")


def test_the_backup_unit_runs_sandboxed(host_a: Node) -> None:
    """The faults above ran livekit-backup.service in its sandbox; this is its exposure (9.0 before)."""
    score, report = security_exposure(host_a, "livekit-backup.service")
    assert score <= 2.0, report
    print(f"\nlivekit-backup.service: {report.splitlines()[0]}")
