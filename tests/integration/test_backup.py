"""Backups to a real MinIO, restores and the rebuild drill, on a real LiveKit node with its Redis.

The tests run in order and share one story: lkt-bk-a holds known state, is backed up (playbook and
timer), survives broken backups and failed restores untouched, is restored in place, and is then
destroyed and rebuilt on the fresh host lkt-bk-b from its latest backup."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import secrets
import shlex
import signal
import subprocess
import tarfile
import time

import boto3
import pytest

from conftest import (Node, Participant, load_nodes, make_token, playbook_command, run_playbook, run_playbook_watched, twirp,
                      wait_until)

A, B, S3 = "lkt-bk-a", "lkt-bk-b", "lkt-s3"
BUCKET = "livekit-backups"
STATE = pathlib.Path(os.environ["LKT_STATE_DIR"])
IDENTITY = pathlib.Path(os.environ["LKT_AGE_IDENTITY_FILE"])
SIGNING_KEY = pathlib.Path(os.environ["LKT_BACKUP_SIGNING_KEY_FILE"])
NAMESPACE = "selfhosted.livekit-backup"
KNOWN = {f"lkt:known:{i}": secrets.token_hex(8) for i in range(50)}
SEEN: dict = {}  # what lkt-bk-a looked like when it was backed up, for the rebuild


@pytest.fixture(scope="module")
def hosts(request) -> dict[str, Node]:
    return {n.name: n for n in load_nodes(request.config.getoption("--hosts-dir"))}


@pytest.fixture(scope="module")
def s3(hosts):
    return boto3.client("s3", endpoint_url=f"http://{hosts[S3].ip}:9000", region_name="us-east-1",
                        aws_access_key_id=os.environ["LKT_S3_ACCESS_KEY"],
                        aws_secret_access_key=os.environ["LKT_S3_SECRET_KEY"])


# Local clients use Redis's unix socket (with TLS, Redis has no plaintext TCP listener at all).
REDIS_SOCKET = "/run/redis/redis-server.sock"


def redis(node: Node, *args: str) -> str:
    """redis-cli inside the host; the password goes through the environment, not argv."""
    return subprocess.run(["podman", "exec", "-e", "REDISCLI_AUTH", node.name, "redis-cli", "-s", REDIS_SOCKET,
                           "--no-raw", *args],
                          capture_output=True, text=True, check=True, timeout=60,
                          env=dict(os.environ, REDISCLI_AUTH=os.environ["LKT_REDIS_PASSWORD"])).stdout.strip()


def redis_values(node: Node, keys: list[str]) -> list[str | None]:
    out = subprocess.run(["podman", "exec", "-e", "REDISCLI_AUTH", node.name, "redis-cli", "-s", REDIS_SOCKET,
                          "--raw", "MGET", *keys],
                         capture_output=True, text=True, check=True, timeout=60,
                         env=dict(os.environ, REDISCLI_AUTH=os.environ["LKT_REDIS_PASSWORD"])).stdout
    return [line or None for line in out.split("\n")[:len(keys)]]


def get_json(s3, key: str) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def latest(s3, host: str = A) -> dict | None:
    return get_json(s3, f"livekit/{host}/latest.json")


def backups(s3, host: str = A) -> tuple[set[str], set[str]]:
    """(every backup id with an object, the ids that have a manifest)."""
    ids, good = set(), set()
    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"livekit/{host}/").get("Contents", []):
        parts = obj["Key"].split("/")
        if len(parts) == 4:
            ids.add(parts[2])
            if parts[3] == "manifest.json":
                good.add(parts[2])
    return ids, good


def sha(node: Node, path: str) -> str:
    return node.sh(f"sha256sum {path}").stdout.split()[0]


def pids(node: Node) -> tuple[str, str]:
    show = "systemctl show -p MainPID --value"
    return node.sh(f"{show} livekit-server").stdout.strip(), node.sh(f"{show} redis-server").stdout.strip()


def accepted(node: Node, key: str, secret: str) -> bool:
    status, body = twirp(node, "ListRooms", {}, make_token(key, secret, roomList=True))
    assert status in (200, 401), (status, body)
    return status == 200


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def live_state(node: Node) -> dict:
    return dict(pids=pids(node), keys_yaml=sha(node, "/etc/livekit/keys.yaml"),
                values=redis_values(node, sorted(KNOWN)), extra=redis_values(node, ["lkt:after", "lkt:live-only"]))


def verifies(body: bytes, signature: bytes, key: pathlib.Path) -> bool:
    """Whether ssh-keygen accepts ``signature`` of ``body`` by the public half of ``key``."""
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True).stdout
    with open(key.with_suffix(".allowed"), "w") as handle:
        handle.write(f'signer namespaces="{NAMESPACE}" {public}')
    sig = key.with_suffix(".sigtmp")
    sig.write_bytes(signature)
    return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(key.with_suffix(".allowed")), "-I", "signer",
                           "-n", NAMESPACE, "-s", str(sig)], input=body, capture_output=True, check=False).returncode == 0


# Stands in for age on the host during a restore: notes whether --identity names a file on disk
# (the identity written to a file) or reads a pipe, then runs the real age.
SPY_LOG = "/run/lkt-age-spy.log"
MODULE_TMP = "/run/livekit-restore-module"
SEEN_LOG = "/run/lkt-identity-seen.log"
# Every 50 ms: the files on disk-backed directories Ansible or the restore could use that hold an age
# identity (file names only; the identity never reaches a command line).
IDENTITY_WATCH = (f"while :; do echo watching >> {SEEN_LOG}; "
                  "grep -rlsF AGE-SECRET-KEY- /root /tmp /var/tmp /var/lib/livekit-restore /var/backups >> " + SEEN_LOG + "; "
                  "sleep 0.05; done")
AGE_SPY = f"""#!/bin/sh
prev=
for arg in "$@"; do
  if [ "$prev" = --identity ] || [ "$prev" = -i ]; then
    if [ -f "$arg" ]; then echo "identity-file $arg" >> {SPY_LOG}; else echo "identity-pipe $arg" >> {SPY_LOG}; fi
  fi
  prev=$arg
done
echo "$1" >> {SPY_LOG}
exec /usr/bin/age "$@"
"""


def test_backup_is_encrypted_verified_and_secret_free(hosts, s3, api_key, api_secret):
    node = hosts[A]
    redis(node, "MSET", *[item for pair in KNOWN.items() for item in pair])
    SEEN.update(keys_yaml=sha(node, "/etc/livekit/keys.yaml"), turn_crt=sha(node, "/etc/livekit/tls/turn.crt"),
                livekit_yaml=sha(node, "/etc/livekit/livekit.yaml"))

    result = run_playbook_watched("backup.yml", "--limit", A, nodes=[node])
    assert result.returncode == 0, output(result)[-3000:]

    pointer = latest(s3)
    manifest = get_json(s3, pointer["manifest"])
    assert manifest["id"] == pointer["id"] and manifest["host"] == A
    assert manifest["livekit_version"] == os.environ["LKT_LIVEKIT_VERSION"]
    assert manifest["redis"]["keys"] >= len(KNOWN) and manifest["redis"]["aof"] == "appendonlydir"
    raw = s3.get_object(Bucket=BUCKET, Key=manifest["archive"]["key"])["Body"].read()
    assert hashlib.sha256(raw).hexdigest() == manifest["archive"]["sha256"] and len(raw) == manifest["archive"]["size"]
    assert raw.startswith(b"age-encryption.org/v1\n"), "the archive in the bucket is not age-encrypted"

    plain = subprocess.run(["age", "--decrypt", "--identity", str(IDENTITY)], input=raw, capture_output=True,
                           check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:gz") as tar:
        names = tar.getnames()
        inner = json.load(tar.extractfile("backup.json"))
    for wanted in ("redis/dump.rdb", "files/etc/livekit/keys.yaml", "files/etc/livekit/livekit.yaml",
                   "files/etc/livekit/tls/turn.crt", "files/etc/livekit/tls/turn.key",
                   "files/var/lib/livekit-deploy/deployment.json"):
        assert wanted in names, (wanted, names)
    assert any(name.startswith("redis/appendonlydir/") for name in names), names
    assert inner["id"] == manifest["id"]
    # The manifest is signed with the host's key: ssh-keygen verifies it with the public key.
    signature = s3.get_object(Bucket=BUCKET, Key=pointer["manifest"] + ".sig")["Body"].read()
    assert verifies(s3.get_object(Bucket=BUCKET, Key=pointer["manifest"])["Body"].read(), signature, SIGNING_KEY)
    assert node.sh("stat -c '%a %U' /etc/livekit-backup/signing_key").stdout.strip() == "400 root"

    secret_values = [api_secret, os.environ["LKT_REDIS_PASSWORD"], os.environ["LKT_S3_SECRET_KEY"],
                     IDENTITY.read_text().split("AGE-SECRET-KEY-")[1].split()[0]]
    leaked = [i for i, value in enumerate(secret_values) if value in output(result)]
    assert not leaked, f"secrets #{leaked} appear in the -vvv --diff output of backup.yml"
    assert not any(value.encode() in raw for value in secret_values), "a secret is readable in the encrypted archive"
    assert not any(value in " ".join(names) for value in secret_values), "a secret appears in the archive listing"
    assert node.sh("stat -c '%a %U' /etc/livekit-backup/config.json").stdout.strip() == "600 root"
    SEEN["first_backup"] = manifest["id"]


def test_timer_takes_the_same_backup_and_reports_success(hosts, s3):
    node = hosts[A]
    assert node.sh("systemctl is-enabled livekit-backup.timer").stdout.strip() == "enabled"
    assert node.sh("systemctl show -p Persistent --value livekit-backup.timer").stdout.strip() == "yes"
    before = latest(s3)["id"]
    time.sleep(1.1)  # ids have one-second resolution
    started = time.time()
    # Run it (a oneshot: systemctl returns when the run is over) while sampling every process's
    # command line on the host: no secret may appear in one.
    sampled = node.sh("systemctl start livekit-backup.service & run=$!; "
                      "while kill -0 $run 2>/dev/null; do ps -eo args; sleep 0.05; done; wait $run").stdout
    assert sampled.count("livekit_backup_cli.py") >= 2, "the sampler did not see the backup run"
    for value in (os.environ["LKT_REDIS_PASSWORD"], os.environ["LKT_S3_SECRET_KEY"], os.environ["LKT_S3_ACCESS_KEY"]):
        assert value not in sampled, "a secret appeared in a process's arguments during the backup"
    after = latest(s3)["id"]
    assert after != before and after in backups(s3)[1]
    status = json.loads(node.sh("cat /var/lib/livekit-backup/status.json").stdout)
    assert status["last_attempt_ok"] and status["last_id"] == after and status["last_success"] >= started - 1
    metrics = node.sh("cat /var/lib/prometheus/node-exporter/livekit_backup.prom").stdout
    assert f"livekit_backup_last_success_timestamp_seconds {int(status['last_success'])}" in metrics
    assert "livekit_backup_last_attempt_ok 1" in metrics


def test_second_run_gives_up_cleanly_while_one_holds_the_lock(hosts, s3):
    node = hosts[A]
    before = latest(s3)
    node.sh("systemd-run --unit lkt-hold-lock flock /run/lock/livekit-backup.lock sleep 60")
    try:
        wait_until(lambda: "flock" in node.sh("systemctl status lkt-hold-lock", check=False).stdout, 10)
        result = run_playbook("backup.yml", "--limit", A, "-e", "livekit_backup_lock_timeout=3")
    finally:
        node.sh("systemctl stop lkt-hold-lock", check=False)
    assert result.returncode != 0
    assert "another backup or restore holds /run/lock/livekit-backup.lock" in output(result), output(result)[-2000:]
    assert latest(s3) == before


def test_unreachable_storage_keeps_the_archive_and_latest(hosts, s3):
    node = hosts[A]
    before = latest(s3)
    result = run_playbook("backup.yml", "--limit", A, "-e", "livekit_backup_s3_endpoint_url=http://lkt-s3:9")
    assert result.returncode != 0
    text = output(result)
    assert "upload to s3://livekit-backups/livekit/lkt-bk-a/" in text, text[-2000:]
    kept = text.split("the encrypted archive is kept at ")[1].split()[0]
    assert node.sh(f"stat -c '%a %U' {kept}").stdout.strip() == "600 root"
    assert node.sh(f"head -c 22 {kept}").stdout == "age-encryption.org/v1\n"
    assert latest(s3) == before
    status = json.loads(node.sh("cat /var/lib/livekit-backup/status.json").stdout)
    assert status["last_attempt_ok"] is False and "kept at" in status["last_error"]
    assert "livekit_backup_last_attempt_ok 0" in node.sh("cat /var/lib/prometheus/node-exporter/livekit_backup.prom").stdout


def test_backup_killed_mid_upload_leaves_no_manifest_and_latest_alone(hosts, s3):
    node = hosts[A]
    before = latest(s3)
    spool_before = set(node.sh("ls /var/backups/livekit").stdout.split())
    subprocess.run(["podman", "pause", S3], check=True, timeout=60)
    try:
        node.sh("systemctl start --no-block livekit-backup.service")
        fresh = wait_until(lambda: set(node.sh("ls /var/backups/livekit").stdout.split()) - spool_before, 60)
        assert fresh, "the backup never wrote its archive"
        time.sleep(3)  # the archive is written; the upload is now hanging on the frozen storage
        assert node.sh("systemctl show -p ActiveState --value livekit-backup.service").stdout.strip() == "activating"
        node.sh("systemctl kill -s KILL livekit-backup.service")
    finally:
        subprocess.run(["podman", "unpause", S3], check=True, timeout=60)
    assert wait_until(lambda: node.sh("systemctl show -p ActiveState --value livekit-backup.service")
                      .stdout.strip() in ("failed", "inactive"), 30)
    node.sh("systemctl reset-failed livekit-backup.service", check=False)
    killed_id = next(iter(fresh)).removeprefix(f"{A}-").removesuffix(".tar.gz.age")
    assert latest(s3) == before
    assert killed_id not in backups(s3)[1], "a killed run left a manifest"
    SEEN["killed_id"] = killed_id


def test_large_archive_goes_up_in_checked_parts_and_comes_back(hosts, s3):
    node = hosts[A]
    node.sh("mkdir -p /var/lib/lkt-big && head -c 40M /dev/urandom > /var/lib/lkt-big/blob")
    blob = sha(node, "/var/lib/lkt-big/blob")
    result = run_playbook("backup.yml", "--limit", A, "-e", '{"livekit_backup_extra_paths": ["/var/lib/lkt-big"]}',
                          "-e", "livekit_backup_part_size=5")
    assert result.returncode == 0, output(result)[-3000:]
    manifest = get_json(s3, latest(s3)["manifest"])
    assert manifest["archive"]["parts"] == 9, manifest["archive"]  # 40 MiB of noise, 5 MiB parts
    head = s3.head_object(Bucket=BUCKET, Key=manifest["archive"]["key"])
    assert head["ETag"].strip('"').endswith("-9") and head["ContentLength"] == manifest["archive"]["size"]
    raw = s3.get_object(Bucket=BUCKET, Key=manifest["archive"]["key"])["Body"].read()
    assert hashlib.sha256(raw).hexdigest() == manifest["archive"]["sha256"]
    plain = subprocess.run(["age", "--decrypt", "--identity", str(IDENTITY)], input=raw, capture_output=True,
                           check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:gz") as tar:
        assert hashlib.sha256(tar.extractfile("files/var/lib/lkt-big/blob").read()).hexdigest() == blob


def test_retention_prunes_old_backups_but_never_the_newest_good_one(hosts, s3):
    good_before = backups(s3)[1]
    assert len(good_before) >= 2
    result = run_playbook("backup.yml", "--limit", A, "-e", "livekit_backup_keep_last=1",
                          "-e", "livekit_backup_keep_daily=0", "-e", "livekit_backup_keep_monthly=0")
    assert result.returncode == 0, output(result)[-3000:]
    pointer = latest(s3)
    ids, good = backups(s3)
    assert good == {pointer["id"]}, (good, pointer)
    assert not good & good_before
    assert get_json(s3, pointer["manifest"])["id"] == pointer["id"]


SNAPSHOT_PLAY = """- name: Snapshot Redis as upgrade.yml does before a major version step
  hosts: redis
  gather_facts: false
  become: true
  tasks:
    - name: Snapshot Redis
      ansible.builtin.include_role:
        name: selfhosted.livekit.redis
        tasks_from: snapshot
"""


def rdb_saves(node: Node) -> int:
    return int(re.search(r"rdb_saves:([0-9]+)", redis(node, "INFO", "persistence")).group(1))


def test_redis_snapshot_entry_point_waits_for_a_fresh_save_and_keeps_the_password_out(hosts, tmp_path):
    """redis tasks_from=snapshot on the real Redis: check mode saves and copies nothing; a real run makes
    Redis save again and copies that RDB and the AOF directory aside, 0700, with the password nowhere in
    the -vvv output (it goes to Redis over the socket only)."""
    node = hosts[A]
    play = tmp_path / "snapshot.yml"
    play.write_text(SNAPSHOT_PLAY)
    dest = "/var/backups/redis/entry-test"
    saves = rdb_saves(node)
    checked = run_playbook(str(play), "--limit", A, "-e", "redis_snapshot_name=entry-test", "--check")
    assert checked.returncode == 0, output(checked)[-3000:]
    assert rdb_saves(node) == saves and node.sh(f"test -e {dest}", check=False).returncode != 0
    result = run_playbook(str(play), "--limit", A, "-e", "redis_snapshot_name=entry-test", "-vvv")
    try:
        assert result.returncode == 0, output(result)[-3000:]
        assert os.environ["LKT_REDIS_PASSWORD"] not in output(result)
        assert rdb_saves(node) > saves
        assert node.sh(f"stat -c %a /var/backups/redis {dest}").stdout.split() == ["700", "700"]
        assert node.sh(f"head -c 5 {dest}/dump.rdb").stdout == "REDIS"
        # snapshot.json marks the directory as the redis role's, so retention only ever removes its own.
        assert node.sh(f"ls {dest}").stdout.split() == ["appendonlydir", "dump.rdb", "snapshot.json"]
    finally:
        node.sh(f"rm -rf {dest}", check=False)


def test_restore_refuses_broken_backups_and_leaves_live_data_alone(hosts, s3, tmp_path):
    node = hosts[A]
    before = live_state(node)
    pointer = latest(s3)
    manifest = get_json(s3, pointer["manifest"])
    key = manifest["archive"]["key"]
    original = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    manifest_key = pointer["manifest"]
    manifest_body = s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    wrong = tmp_path / "wrong-identity.yml"
    subprocess.run(["age-keygen", "-o", str(tmp_path / "wrong.txt")], check=True, capture_output=True)
    wrong.write_text(json.dumps({"livekit_backup_restore_identity": (tmp_path / "wrong.txt").read_text()}))
    wrong.chmod(0o600)
    try:
        # 1. The archive changed after upload: its checksum no longer matches the manifest.
        s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(flipped))
        result = run_playbook("restore.yml", "--limit", A)
        assert result.returncode != 0 and "does not match its manifest" in output(result), output(result)[-2000:]
        assert live_state(node) == before

        # 2. Same corruption with a manifest that agrees: the manifest's signature no longer verifies.
        forged = dict(manifest, archive=dict(manifest["archive"], sha256=hashlib.sha256(flipped).hexdigest()))
        s3.put_object(Bucket=BUCKET, Key=manifest_key, Body=json.dumps(forged).encode())
        result = run_playbook("restore.yml", "--limit", A)
        assert result.returncode != 0 and "does not verify" in output(result), output(result)[-2000:]
        assert live_state(node) == before
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=original)
        s3.put_object(Bucket=BUCKET, Key=manifest_key, Body=manifest_body)

    # A --check run verifies the backup (download, checksum, decryption) and changes nothing.
    result = run_playbook("restore.yml", "--limit", A, "--check")
    assert result.returncode == 0, output(result)[-3000:]
    assert live_state(node) == before

    # 3. An identity the backup was not encrypted for.
    result = run_playbook("restore.yml", "--limit", A, "-e", f"@{wrong}")
    assert result.returncode != 0 and "cannot decrypt" in output(result), output(result)[-2000:]
    assert live_state(node) == before
    assert node.sh("test -e /var/lib/livekit-restore/aside", check=False).returncode != 0
    assert node.sh("test -e /var/lib/livekit-restore/fetched", check=False).returncode != 0, \
        "a refused backup left decrypted files behind"


def test_restore_in_place_brings_back_the_backed_up_state(hosts, api_key, api_secret):
    node = hosts[A]
    redis(node, "SET", "lkt:after", "written-after-the-backup")
    redis(node, "DEL", "lkt:known:0")
    old_pids = pids(node)
    # A look at every age the restore runs: is its --identity a file on the host's disk?
    node.sh(f"printf '%s' {shlex.quote(AGE_SPY)} > /usr/local/bin/age && chmod 755 /usr/local/bin/age && rm -f {SPY_LOG}")
    # And at every file on the disk while the restore runs: none may hold an age identity (the
    # podman connection cannot pipeline, so Ansible writes each module with its arguments to the
    # host first). What a killed restore left in the module directory goes at the next one.
    node.sh(f"mkdir -p {MODULE_TMP}/ansible-tmp-killed && echo AGE-SECRET-KEY-1LEFTOVER > {MODULE_TMP}/ansible-tmp-killed/x "
            f"&& rm -f {SEEN_LOG} && systemd-run --unit lkt-identity-watch sh -c {shlex.quote(IDENTITY_WATCH)}")
    try:
        result = run_playbook_watched("restore.yml", "--limit", A, nodes=[node])
        spied = node.sh(f"cat {SPY_LOG}", check=False).stdout
    finally:
        node.sh("rm -f /usr/local/bin/age; systemctl stop lkt-identity-watch", check=False)
    assert result.returncode == 0, output(result)[-3000:]
    assert "--decrypt" in spied, "the restore never ran age"
    assert "identity-file" not in spied, f"the age identity was written to a file on the host: {spied}"
    watched = node.sh(f"cat {SEEN_LOG}").stdout.splitlines()
    assert "watching" in watched, "the watcher never ran"
    assert sorted({line for line in watched if line != "watching"}) == [], "an age identity was on the host's disk"
    assert node.sh(f"ls -A {MODULE_TMP} 2>/dev/null || true").stdout.strip() == "", "the module directory was left behind"
    assert redis_values(node, sorted(KNOWN)) == [KNOWN[k] for k in sorted(KNOWN)]
    assert redis_values(node, ["lkt:after"]) == [None]
    new_pids = pids(node)
    assert new_pids[0] != old_pids[0] and new_pids[1] != old_pids[1], "services were not restarted on the restored data"
    assert accepted(node, api_key, api_secret)
    assert node.sh("ls -A /var/lib/livekit-restore").stdout.strip() == "", "the restore left files behind"
    assert "rpo_seconds" in result.stdout


def test_failed_restore_puts_the_live_data_back(hosts, api_key, api_secret):
    node = hosts[A]
    redis(node, "SET", "lkt:live-only", "keep-me")
    # The restored server must report this version to pass verification; it cannot, so the
    # restore fails after the data was swapped and the services restarted.
    result = run_playbook("restore.yml", "--limit", A, "-e", "livekit_server_version=9.9.9")
    assert result.returncode != 0
    assert "The live data was put back" in output(result), output(result)[-3000:]
    assert redis_values(node, ["lkt:live-only"]) == ["keep-me"]
    assert node.sh("systemctl is-active livekit-server redis-server").stdout.split() == ["active", "active"]
    assert wait_until(lambda: accepted(node, api_key, api_secret), 30)
    assert node.sh("ls -A /var/lib/livekit-restore").stdout.strip() == "", "the failed restore left files behind"


def test_latest_json_moved_back_by_a_host_key_does_not_roll_the_host_back(hosts, s3):
    """latest.json is not signed and every host's S3 key can write it. Pointed back at an older
    genuine backup, a restore of "latest" still takes the newest backup whose signature verifies,
    and says that latest.json disagreed."""
    node = hosts[A]
    ids = []
    for generation in ("older", "newest"):
        redis(node, "SET", "lkt:generation", generation)
        time.sleep(1.1)  # ids have one-second resolution
        result = run_playbook("backup.yml", "--limit", A)
        assert result.returncode == 0, output(result)[-3000:]
        ids.append(latest(s3)["id"])
    pointer = s3.get_object(Bucket=BUCKET, Key=f"livekit/{A}/latest.json")["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=f"livekit/{A}/latest.json", Body=json.dumps({"id": ids[0]}).encode())
    redis(node, "SET", "lkt:generation", "live")
    result = run_playbook("restore.yml", "--limit", A)
    assert result.returncode == 0, output(result)[-3000:]
    assert redis_values(node, ["lkt:generation"]) == ["newest"]
    said = " ".join(output(result).split())  # warnings are wrapped to the terminal's width
    assert f"names backup {ids[0]}, but the newest backup whose signature verifies is {ids[1]}" in said, said[-3000:]
    # Put the pointer right again for the tests that follow.
    s3.put_object(Bucket=BUCKET, Key=f"livekit/{A}/latest.json", Body=pointer)
    redis(node, "DEL", "lkt:generation")


def member(name: str, data: bytes | None = b"", mode: int = 0o640, kind: bytes = tarfile.REGTYPE, link: str = "",
           owner: str = "root") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, link, int(time.time())
    info.uname = info.gname = owner
    info.size = len(data) if kind == tarfile.REGTYPE and data is not None else 0
    return info, data if kind == tarfile.REGTYPE else None


def publish(s3, backup_id: str, members: list, sign_with: pathlib.Path | None) -> bytes:
    """Publish a backup of lkt-bk-a as anyone holding the bucket's S3 keys could: a tar.gz of ``members``,
    age-encrypted for the real recipient, a manifest with the right size and SHA-256, and a signature by
    ``sign_with`` (or none). Returns the manifest's bytes."""
    files = [(info, data) for info, data in members if info.isfile()]
    inner = {"format": 1, "id": backup_id, "host": A, "paths": ["/etc/livekit", "/etc/cron.d"], "redis": None,
             "members": [{"path": i.name, "size": i.size, "sha256": hashlib.sha256(d).hexdigest()} for i, d in files]}
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        body = json.dumps(inner).encode()
        info, dummy = member("backup.json", body, 0o600)
        tar.addfile(info, io.BytesIO(body))
    sealed = subprocess.run(["age", "-r", os.environ["LKT_AGE_RECIPIENT"]], input=plain.getvalue(), capture_output=True,
                            check=True, timeout=60).stdout
    key = f"livekit/{A}/{backup_id}/archive.tar.gz.age"
    s3.put_object(Bucket=BUCKET, Key=key, Body=sealed)
    manifest = {"format": 1, "id": backup_id, "host": A, "created": "2020-01-01T00:00:00Z", "created_ts": 1577836800,
                "livekit_version": os.environ["LKT_LIVEKIT_VERSION"], "redis": None, "paths": inner["paths"],
                "recipients": [os.environ["LKT_AGE_RECIPIENT"]], "members": [m["path"] for m in inner["members"]],
                "archive": {"key": key, "size": len(sealed), "sha256": hashlib.sha256(sealed).hexdigest()}}
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    s3.put_object(Bucket=BUCKET, Key=f"livekit/{A}/{backup_id}/manifest.json", Body=body)
    if sign_with:
        signature = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(sign_with), "-n", NAMESPACE], input=body,
                                   capture_output=True, check=True, timeout=60).stdout
        s3.put_object(Bucket=BUCKET, Key=f"livekit/{A}/{backup_id}/manifest.json.sig", Body=signature)
    return body


def forget(s3, backup_id: str) -> None:
    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"livekit/{A}/{backup_id}/").get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])


def refused_untouched(node: Node, backup_id: str, before: dict, *needles: str) -> None:
    """restore.yml of ``backup_id`` fails naming the backup and every needle, and nothing on the host changed."""
    result = run_playbook("restore.yml", "--limit", A, "-e", f"livekit_backup_restore_id={backup_id}")
    text = output(result)
    assert result.returncode != 0, f"backup {backup_id} was restored: {text[-2000:]}"
    assert f"backup {backup_id} of livekit/{A}" in text or f"backup {backup_id} of {A}" in text, text[-2000:]
    for needle in needles:
        assert needle in text, (needle, text[-2000:])
    assert live_state(node) == before
    assert node.sh("test -e /etc/cron.d/lkt-evil || test -e /etc/livekit/lkt-suid", check=False).returncode != 0
    assert node.sh("ls -A /var/lib/livekit-restore", check=False).stdout.strip() in ("", "aside"), \
        "a refused backup left files behind"
    assert node.sh("test -e /var/lib/livekit-backup/restore-in-progress.json", check=False).returncode != 0, \
        "a refused restore left the host marked as being restored"


def test_restore_refuses_forged_backups_before_downloading_anything(hosts, s3, tmp_path):
    """Anyone with the S3 keys can publish a backup that age decrypts fine; only the host's signing key
    makes one a restore trusts. The forged key file would replace the node's API keys."""
    node = hosts[A]
    before = live_state(node)
    evil = [member("files/etc/livekit", None, 0o750, tarfile.DIRTYPE),
            member("files/etc/livekit/keys.yaml", b"APIattacker: attacker-secret-attacker-secret-1234\n")]
    other_key = tmp_path / "other-signing-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    cases = {"20200101T000001Z": (other_key, "does not verify with the host's public key"),
             "20200101T000002Z": (None, "is not signed")}
    try:
        for backup_id, (key, why) in cases.items():
            publish(s3, backup_id, evil, key)
            refused_untouched(node, backup_id, before, why)
        # A manifest the host really signed, changed afterwards (here: pointing at the forged archive).
        real = get_json(s3, latest(s3)["manifest"])
        real_sig = s3.get_object(Bucket=BUCKET, Key=latest(s3)["manifest"] + ".sig")["Body"].read()
        publish(s3, "20200101T000003Z", evil, SIGNING_KEY)
        forged = get_json(s3, f"livekit/{A}/20200101T000003Z/manifest.json")
        tampered = dict(real, id="20200101T000003Z", archive=forged["archive"])
        s3.put_object(Bucket=BUCKET, Key=f"livekit/{A}/20200101T000003Z/manifest.json",
                      Body=json.dumps(tampered, indent=1, sort_keys=True).encode())
        s3.put_object(Bucket=BUCKET, Key=f"livekit/{A}/20200101T000003Z/manifest.json.sig", Body=real_sig)
        refused_untouched(node, "20200101T000003Z", before, "does not verify with the host's public key")
    finally:
        for backup_id in list(cases) + ["20200101T000003Z"]:
            forget(s3, backup_id)


def test_restore_refuses_links_setuid_foreign_owners_and_paths_outside_the_targets(hosts, s3):
    """Signed with the host's own key (a compromised host can sign its own backups): the archive's
    members are still checked, and what it may write comes from the inventory, not the archive."""
    node = hosts[A]
    before = live_state(node)
    base = [member("files/etc/livekit", None, 0o750, tarfile.DIRTYPE)]
    cases = {
        "20200102T000001Z": ([member("files/etc/livekit/keys.yaml", None, 0o777, tarfile.SYMTYPE, "/etc/shadow")],
                             "files/etc/livekit/keys.yaml is a link"),
        "20200102T000002Z": ([member("files/etc/livekit/lkt-suid", b"#!/bin/sh\nid\n", 0o4755)],
                             "files/etc/livekit/lkt-suid has the setuid or setgid bit"),
        "20200102T000003Z": ([member("files/etc/cron.d", None, 0o755, tarfile.DIRTYPE),
                              member("files/etc/cron.d/lkt-evil", b"* * * * * root id\n", 0o644)],
                             "files/etc/cron.d is outside the restore targets"),
        "20200102T000004Z": ([member("files/etc/livekit/lkt-owned", b"x", 0o644, owner="nobody")],
                             "files/etc/livekit/lkt-owned belongs to nobody:nobody"),
    }
    try:
        for backup_id, (members, why) in cases.items():
            publish(s3, backup_id, base + members, SIGNING_KEY)
            refused_untouched(node, backup_id, before, why)
    finally:
        for backup_id in cases:
            forget(s3, backup_id)


def module_pid(node: Node) -> str:
    """The process holding the backup lock (the restore module during the swap)."""
    return node.sh("for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep -q livekit-backup.lock "
                   "&& echo ${p#/proc/}; done", check=False).stdout.split()[0:1]


def test_restore_killed_mid_swap_keeps_backups_out_and_is_put_back(hosts, s3, api_key, api_secret):
    """SIGKILL of ansible-playbook and of the restore module on the host while the live data is half
    swapped: no backup uploads the half-restored state, a second restore is refused, and the recovery
    run puts the live data back exactly."""
    node = hosts[A]
    redis(node, "SET", "lkt:mid-swap", "live-value")
    before = live_state(node)
    keys_before = {path: sha(node, path) for path in ("/etc/livekit/livekit.yaml", "/etc/livekit/tls/turn.key")}
    proc = subprocess.Popen(
        playbook_command("restore.yml", "--limit", A, "-e", "livekit_backup_restore_step_delay=3"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=pathlib.Path(__file__).resolve().parents[2])
    try:
        # The first live copy renamed aside (next to its target) and the swap not finished.
        swapping = wait_until(lambda: "applying" in node.sh(
            "cat /var/lib/livekit-restore/aside/journal.json 2>/dev/null; ls -a /etc /var/lib/redis", check=False).stdout
            and ".livekit.livekit-restore-old" in node.sh("ls -a /etc", check=False).stdout, 240, 0.2)
        assert swapping, "the restore never reached the swap"
        pid = module_pid(node)
        proc.send_signal(signal.SIGKILL)
        if pid:
            node.sh(f"kill -KILL {pid[0]}", check=False)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    time.sleep(1)
    assert "applying" in node.sh("cat /var/lib/livekit-restore/aside/journal.json").stdout, "the swap was not cut off"

    # The timer's backup skips (not a failure) and uploads nothing.
    latest_before, ids_before = latest(s3), backups(s3)[0]
    node.sh("systemctl start livekit-backup.service")
    assert node.sh("systemctl show -p Result --value livekit-backup.service").stdout.strip() == "success"
    assert latest(s3) == latest_before and backups(s3)[0] == ids_before, "a backup ran during the restore"
    status = json.loads(node.sh("cat /var/lib/livekit-backup/status.json").stdout)
    assert "is in progress or was interrupted" in status["last_skip_reason"]

    # A second restore is refused, and says how to get out.
    again = run_playbook("restore.yml", "--limit", A)
    assert again.returncode != 0 and "is in progress or was interrupted" in output(again), output(again)[-2000:]
    assert "livekit_backup_restore_recover=true" in output(again)

    recovered = run_playbook("restore.yml", "--limit", A, "-e", "livekit_backup_restore_recover=true")
    assert recovered.returncode == 0, output(recovered)[-3000:]
    after = live_state(node)
    assert after["keys_yaml"] == before["keys_yaml"] and after["values"] == before["values"]
    assert redis_values(node, ["lkt:mid-swap"]) == ["live-value"]
    assert {path: sha(node, path) for path in keys_before} == keys_before
    assert node.sh("ls -a /etc /var/lib /var/lib/redis | grep -c livekit-restore-", check=False).stdout.strip() == "0"
    assert node.sh("systemctl is-active livekit-server redis-server").stdout.split() == ["active", "active"]
    assert wait_until(lambda: accepted(node, api_key, api_secret), 30)
    assert node.sh("test -e /var/lib/livekit-backup/restore-in-progress.json", check=False).returncode != 0
    redis(node, "DEL", "lkt:mid-swap")


def test_redis_kill_9_loses_at_most_a_second_of_acknowledged_writes(hosts):
    """The role's AOF (appendfsync everysec) on a real Redis: write as fast as one client can,
    kill -9 redis-server, let systemd restart it, compare. bench/redis_aof_loss.sh repeats this."""
    node = hosts[A]
    payload = (pathlib.Path(__file__).resolve().parents[2] / "bench" / "redis_aof_loss.py").read_text()
    out = subprocess.run(["podman", "exec", "-i", node.name, "python3", "-", "1"], input=payload,
                         capture_output=True, text=True, check=True, timeout=180).stdout
    trial = json.loads(out)[0]
    print(f"\nredis kill -9: {trial}")
    assert trial["recovered"] <= trial["acknowledged"]
    assert trial["lost_writes"] <= trial["writes_per_second"], trial  # at most ~1 s of writes
    assert node.sh("systemctl is-active redis-server").stdout.strip() == "active"


def test_rebuild_drill_restores_a_destroyed_host_on_a_fresh_one(hosts, s3, api_key, api_secret, tmp_path):
    redis(hosts[A], "DEL", "lkt:live-only")
    result = run_playbook("backup.yml", "--limit", A)
    assert result.returncode == 0, output(result)[-3000:]
    backed_up = latest(s3)
    subprocess.run(["podman", "rm", "--force", "--time", "5", A], check=True, capture_output=True, timeout=120)

    extra = tmp_path / "drill-inventory.yml"
    extra.write_text(json.dumps({"livekit": {"hosts": {B: None}}, "redis": {"hosts": {B: None}}}))
    reports = STATE / "drill-reports"
    result = run_playbook_watched("rebuild_drill.yml", "-i", str(extra), "--limit", f"{B},localhost",
                                  "-e", f"livekit_backup_restore_source_host={A}",
                                  "-e", f"livekit_drill_report_dir={reports}", nodes=[hosts[B]], timeout=1200)
    assert result.returncode == 0, output(result)[-4000:]

    node = hosts[B]
    assert redis_values(node, sorted(KNOWN)) == [KNOWN[k] for k in sorted(KNOWN)]
    assert sha(node, "/etc/livekit/keys.yaml") == SEEN["keys_yaml"]
    assert sha(node, "/etc/livekit/tls/turn.crt") == SEEN["turn_crt"]
    assert accepted(node, api_key, api_secret)
    person = Participant(node, "after-the-drill", "drill-check", api_key, api_secret)
    assert person.connected()
    person.hang_up()

    report = json.loads(next(reports.glob("drill-*.json")).read_text())
    assert next(reports.glob("drill-*.md")).read_text().startswith("# LiveKit rebuild drill")
    assert report["hosts"][0]["backup"] == backed_up["id"] and report["hosts"][0]["backup_of"] == A
    assert 0 < report["steps"]["site_yml_seconds"] < report["rto_seconds"]
    assert report["rpo_seconds"] > 0
    print(f"\nrebuild drill: RTO {report['rto_seconds']} s (site.yml {report['steps']['site_yml_seconds']} s, "
          f"restore {report['steps']['restore_seconds']} s), RPO {report['rpo_seconds']} s")
