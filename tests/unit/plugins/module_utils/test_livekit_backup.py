"""Backup logic that does not need a server: retention, the run lock, the archive round trip
through the real age binary, and putting a restore in place and back. Redis, MinIO and the
playbooks are exercised by the backup molecule scenario."""

from __future__ import annotations

import errno
import grp
import io
import json
import os
import pwd
import shutil
import tarfile
import subprocess
import threading

import pytest

from ansible_collections.selfhosted.livekit.plugins.module_utils import livekit_backup as lb
from conftest import FakeRedis

DAY = 86400
NOW = lb.id_time("20261123T031500Z")


def ids(*times):
    return [lb.utc_id(t) for t in times]


def test_ids_sort_by_time_and_parse_back():
    assert lb.utc_id(NOW) == "20261123T031500Z"
    assert lb.id_time(lb.utc_id(NOW - 5)) == NOW - 5
    assert lb.id_time("manifest.json") is None


def test_retention_keeps_last_daily_and_monthly():
    # One backup a day for 400 days.
    good = ids(*[NOW - d * DAY for d in range(400)])
    prune = lb.select_prune(set(good), good, good[0], keep_last=3, keep_daily=30, keep_monthly=12, now=NOW)
    kept = sorted(set(good) - set(prune), reverse=True)
    assert kept[:30] == good[:30]  # the last 30 days
    months = {k[:6] for k in kept}
    # The dailies reach back into October, so November and October are covered already.
    assert len(months) == 12 and len(kept) == 30 + 10


def test_retention_never_removes_the_newest_good_or_latest():
    good = ids(NOW - 3 * DAY, NOW - 2 * DAY, NOW - DAY)
    assert lb.select_prune(set(good), good, good[-1], keep_last=1, keep_daily=0, keep_monthly=0, now=NOW) \
        == sorted(good[:2])
    # "latest" pointing to an older backup (say, restored by hand) keeps that one too.
    assert good[0] not in lb.select_prune(set(good), good, good[0], keep_last=1, keep_daily=0, keep_monthly=0, now=NOW)
    # keep_last=0 is treated as 1: the newest good backup survives any setting.
    assert good[-1] not in lb.select_prune(set(good), good, None, keep_last=0, keep_daily=0, keep_monthly=0, now=NOW)


def test_incomplete_backups_go_only_when_old_and_superseded():
    old_good, incomplete, new_good = ids(NOW - 3 * DAY, NOW - 2 * DAY, NOW - DAY)
    all_ids = [new_good, incomplete, old_good]
    assert incomplete in lb.select_prune({old_good, new_good}, all_ids, new_good, 3, 30, 12, now=NOW)
    # A run still in progress (young, newer than every good backup) is left alone.
    running = lb.utc_id(NOW - 60)
    assert running not in lb.select_prune({old_good, new_good}, [running] + all_ids, new_good, 3, 30, 12, now=NOW)


def test_lock_lets_one_run_through_and_times_the_other_out(tmp_path):
    path = str(tmp_path / "backup.lock")
    with lb.Lock(path, 1):
        with pytest.raises(lb.Busy, match="another backup or restore holds"):
            with lb.Lock(path, 1):
                pass
    with lb.Lock(path, 1):  # free again once the first run ended
        pass


def test_lock_waits_for_a_run_that_finishes_in_time(tmp_path):
    path = str(tmp_path / "backup.lock")
    first = lb.Lock(path, 1).__enter__()
    threading.Timer(0.6, first.__exit__, (None, None, None)).start()
    with lb.Lock(path, 5):
        pass


@pytest.fixture
def identity(tmp_path):
    if not shutil.which("age-keygen"):
        pytest.skip("age is not installed (scripts/setup.sh installs it)")
    path = tmp_path / "id.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return path.read_text(), recipient


OWNER, GROUP = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def make_tree(root):
    (root / "etc" / "lk" / "tls").mkdir(parents=True)
    (root / "etc" / "lk" / "keys.yaml").write_text("APIkey: secret\n")
    (root / "etc" / "lk" / "tls" / "turn.key").write_text("KEY\n")
    (root / "redis").mkdir()
    (root / "redis" / "dump.rdb").write_bytes(os.urandom(4096))
    return root


def test_archive_round_trip_checks_every_member(tmp_path, identity):
    secret, recipient = identity
    src = make_tree(tmp_path / "src")
    archive = str(tmp_path / "a.age")
    files = lb.expand_paths([str(src / "etc" / "lk")])
    members = lb.build_archive(archive, [recipient], {"redis": str(src / "redis")}, files,
                               {"id": "x", "host": "h", "paths": [str(src / "etc" / "lk")]})
    assert {m["path"] for m in members} >= {"redis/dump.rdb", "files%s/etc/lk/keys.yaml" % src}
    assert open(archive, "rb").read(22) == b"age-encryption.org/v1\n"
    inner = lb.decrypt_archive(archive, secret, str(tmp_path / "out"))
    assert inner["id"] == "x"
    assert (tmp_path / "out" / ("files%s/etc/lk/tls/turn.key" % src)).read_text() == "KEY\n"
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".age-identity")]


def test_certbot_links_come_back_as_links_and_other_links_as_files(tmp_path, identity):
    """/etc/letsencrypt's live/<name>/*.pem are relative links into archive/<name>/: certbot renews only
    when they are links again after a restore. A link leaving the backed-up path is stored as its file."""
    secret, recipient = identity
    src = tmp_path / "src"
    le = src / "letsencrypt"
    (le / "archive" / "lk").mkdir(parents=True)
    (le / "live" / "lk").mkdir(parents=True)
    (le / "archive" / "lk" / "fullchain1.pem").write_text("CHAIN\n")
    os.symlink("../../archive/lk/fullchain1.pem", le / "live" / "lk" / "fullchain.pem")
    (src / "outside.txt").write_text("OUTSIDE\n")
    os.symlink(str(src / "outside.txt"), le / "live" / "lk" / "absolute")
    archive = str(tmp_path / "a.age")
    lb.build_archive(archive, [recipient], {}, lb.expand_paths([str(le)]), {"id": "x", "paths": [str(le)]})
    out = tmp_path / "out"
    lb.decrypt_archive(archive, secret, str(out), policy=lb.ExtractPolicy(paths=[str(le)], owners=[OWNER], groups=[GROUP]))
    live = out / ("files%s/live/lk" % le)
    assert os.readlink(live / "fullchain.pem") == "../../archive/lk/fullchain1.pem"
    assert (live / "fullchain.pem").read_text() == "CHAIN\n"
    assert not os.path.islink(live / "absolute") and (live / "absolute").read_text() == "OUTSIDE\n"


def test_wrong_identity_is_refused(tmp_path, identity):
    recipient = identity[1]
    src = make_tree(tmp_path / "src")
    archive = str(tmp_path / "a.age")
    lb.build_archive(archive, [recipient], {}, lb.expand_paths([str(src)]), {"id": "x"})
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    with pytest.raises(lb.BackupError, match="cannot decrypt"):
        lb.decrypt_archive(archive, other.read_text(), str(tmp_path / "out"))


def test_no_recipient_means_no_archive(tmp_path):
    with pytest.raises(lb.BackupError, match="unencrypted"):
        lb.build_archive(str(tmp_path / "a.age"), [], {}, [], {})


def test_apply_then_revert_restores_the_live_state(tmp_path):
    live = tmp_path / "live"
    (live / "etc").mkdir(parents=True)
    (live / "etc" / "keys.yaml").write_text("live\n")
    (live / "dump.rdb").write_text("live-rdb")
    fetched = tmp_path / "fetched"
    (fetched / "etc").mkdir(parents=True)
    (fetched / "etc" / "keys.yaml").write_text("restored\n")
    (fetched / "dump.rdb").write_text("restored-rdb")
    (fetched / "new-dir").mkdir()
    plan = [(str(fetched / "etc"), str(live / "etc")), (str(fetched / "dump.rdb"), str(live / "dump.rdb")),
            (str(fetched / "new-dir"), str(live / "new-dir"))]
    aside = str(tmp_path / "aside")
    lb.apply_restore(plan, aside)
    assert (live / "etc" / "keys.yaml").read_text() == "restored\n"
    assert (live / "new-dir").is_dir()
    with pytest.raises(lb.BackupError, match="neither committed nor reverted"):
        lb.apply_restore(plan, aside)
    lb.revert_restore(aside)
    assert (live / "etc" / "keys.yaml").read_text() == "live\n"
    assert (live / "dump.rdb").read_text() == "live-rdb"
    assert not (live / "new-dir").exists()
    assert lb.revert_restore(aside) == []  # safe to repeat


def test_revert_refuses_nothing_when_a_restored_copy_is_missing(tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    (live / "a").write_text("live-a")
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    (fetched / "a").write_text("new-a")
    plan = [(str(fetched / "a"), str(live / "a")), (str(tmp_path / "missing"), str(live / "b"))]
    with pytest.raises(lb.BackupError, match="missing"):
        lb.apply_restore(plan, str(tmp_path / "aside"))
    # Nothing moved when a restored copy is missing up front.
    assert (live / "a").read_text() == "live-a" and sorted(os.listdir(live)) == ["a"]


class Crash(BaseException):
    """The process dies here (SIGKILL, power loss): nothing after this point runs."""


def tree(root):
    """Every path under ``root`` with its content (files) and mode: what a user would compare."""
    seen = {}
    for base, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            seen[rel] = (open(path, "rb").read() if os.path.isfile(path) else None, os.lstat(path).st_mode)
    return seen


def restore_fixture(tmp_path):
    """Live data, and restored copies in a work directory that counts as another filesystem."""
    live = tmp_path / "live"
    (live / "etc" / "tls").mkdir(parents=True)
    (live / "etc" / "keys.yaml").write_text("live keys\n")
    (live / "etc" / "tls" / "turn.key").write_text("live key\n")
    (live / "etc" / "tls" / "turn.crt").write_text("live crt\n")
    (live / "redis").mkdir()
    (live / "redis" / "dump.rdb").write_bytes(b"live rdb" * 100)
    work = tmp_path / "work"
    fetched = work / "fetched"
    (fetched / "etc" / "tls").mkdir(parents=True)
    (fetched / "etc" / "keys.yaml").write_text("restored keys\n")
    (fetched / "etc" / "tls" / "turn.key").write_text("restored key\n")
    (fetched / "dump.rdb").write_bytes(b"restored rdb")
    (fetched / "new").mkdir()
    (fetched / "new" / "file").write_text("new")
    plan = [(str(fetched / "etc"), str(live / "etc")), (str(fetched / "dump.rdb"), str(live / "redis" / "dump.rdb")),
            (str(fetched / "new"), str(live / "new"))]
    return live, work, plan


@pytest.mark.parametrize("crash_after", range(0, 16))
def test_a_crash_at_any_point_of_the_swap_is_reverted_exactly(tmp_path, monkeypatch, crash_after):
    """The work directory is on another filesystem than the live data (rename gives EXDEV across), and
    the process dies after ``crash_after`` renames or file copies. Reverting from what is on disk must
    give back exactly the live data: every file, its content and mode, and nothing else."""
    live, work, plan = restore_fixture(tmp_path)
    before = tree(live)
    real_rename, real_copyfile, real_copy2 = os.rename, shutil.copyfile, shutil.copy2
    done = {"n": 0}

    def tick():
        done["n"] += 1
        if done["n"] > crash_after:
            raise Crash()

    def rename(src, dst, *args, **kwargs):
        if str(src).startswith(str(work)) != str(dst).startswith(str(work)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        tick()
        return real_rename(src, dst, *args, **kwargs)

    def copyfile(src, dst, *args, **kwargs):
        tick()
        return real_copyfile(src, dst, *args, **kwargs)

    def copy2(src, dst, *args, **kwargs):
        tick()
        return real_copy2(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    monkeypatch.setattr(shutil, "copy2", copy2)
    try:
        lb.apply_restore(plan, str(work / "aside"))
        crashed = False
    except Crash:
        crashed = True
    monkeypatch.undo()
    lb.revert_restore(str(work / "aside"))
    assert tree(live) == before, "after a crash at step %d the revert did not give back the live data" % crash_after
    if not crashed:
        assert crash_after >= 10  # the whole swap fits in the range tried


def test_a_swap_never_copies_or_deletes_live_data(tmp_path, monkeypatch):
    """Live data only ever moves by rename inside its own directory."""
    live, work, plan = restore_fixture(tmp_path)
    real_rename = os.rename
    moved = []

    def rename(src, dst, *args, **kwargs):
        moved.append((str(src), str(dst)))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    lb.apply_restore(plan, str(work / "aside"))
    monkeypatch.undo()
    for src, dst in moved:
        if src.startswith(str(live)):  # a live path, or a staged copy next to one
            assert os.path.dirname(src) == os.path.dirname(dst), (src, dst)
    assert (live / ".etc.livekit-restore-old" / "keys.yaml").read_text() == "live keys\n"
    assert lb.commit_restore(str(work / "aside"))
    assert sorted(os.listdir(live)) == ["etc", "new", "redis"] and os.listdir(live / "redis") == ["dump.rdb"]


def test_commit_refuses_a_swap_that_did_not_finish(tmp_path):
    live, work, plan = restore_fixture(tmp_path)
    aside = work / "aside"
    aside.mkdir(parents=True)
    (aside / lb.JOURNAL).write_text(json.dumps({"state": "applying", "steps": []}))
    with pytest.raises(lb.BackupError, match="revert it, do not commit it"):
        lb.commit_restore(str(aside))


def test_a_restore_in_progress_refuses_a_second_one_and_makes_backups_skip(tmp_path):
    marker, lock = str(tmp_path / "state" / "restore.json"), str(tmp_path / "lock")
    lb.begin_restore(marker, lock, 1, dict(source="node-1", backup="latest"))
    with pytest.raises(lb.Busy, match="a restore of backup latest of node-1 started at .* is in progress"):
        lb.begin_restore(marker, lock, 1, dict(source="node-1", backup="latest"))
    key = tmp_path / "signing"
    key.write_text("not used")
    cfg = dict(host="node-1", paths=[], recipients=["age1x"], bucket="b", prefix="p", s3={}, part_size=5 << 20,
               spool_dir=str(tmp_path / "spool"), lock_file=lock, lock_timeout=1, keep_last=1, keep_daily=0,
               keep_monthly=0, signing_key=str(key), restore_marker=marker)
    status = str(tmp_path / "status.json")
    ok, result = lb.run_and_record(cfg, status)
    assert not ok and result["skipped"] and "no backup was taken" in result["msg"]
    recorded = json.load(open(status))
    assert "last_attempt_ok" not in recorded and recorded["last_skip_reason"] == result["msg"]
    assert not os.path.exists(tmp_path / "spool"), "a backup started during a restore wrote an archive"
    assert lb.end_restore(marker) and lb.restore_marker(marker) is None


def test_commit_drops_the_aside_copies(tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    (live / "a").write_text("live")
    fetched = tmp_path / "f"
    fetched.mkdir()
    (fetched / "a").write_text("restored")
    aside = str(tmp_path / "aside")
    lb.apply_restore([(str(fetched / "a"), str(live / "a"))], aside)
    assert lb.commit_restore(aside) is True
    assert not os.path.exists(aside) and (live / "a").read_text() == "restored"
    assert lb.commit_restore(aside) is False


def test_status_file_and_textfile_record_the_last_success(tmp_path):
    status, textfile = str(tmp_path / "s.json"), str(tmp_path / "m.prom")
    lb.write_status(status, textfile, {"id": "a", "archive_size": 10, "duration": 1.5}, True, 1000)
    lb.write_status(status, textfile, {"msg": "boom"}, False, 2000)
    recorded = json.load(open(status))
    assert recorded["last_success"] == 1000 and recorded["last_attempt"] == 2000 and not recorded["last_attempt_ok"]
    text = open(textfile).read()
    assert "livekit_backup_last_success_timestamp_seconds 1000" in text and "livekit_backup_last_attempt_ok 0" in text


def test_a_skip_is_not_a_failure_even_before_any_real_run(tmp_path):
    """LivekitBackupFailed reads livekit_backup_last_attempt_ok: a run that only found the lock busy
    (another backup, a restore) must never set it to 0, not even as a host's very first run."""
    status, textfile = str(tmp_path / "s.json"), str(tmp_path / "m.prom")
    lb.write_status(status, textfile, {"msg": "another backup or restore holds the lock", "skipped": True}, False, 500)
    assert "livekit_backup_last_attempt_ok 1" in open(textfile).read()
    assert "last_attempt_ok" not in json.load(open(status))
    lb.write_status(status, textfile, {"msg": "boom"}, False, 1000)
    lb.write_status(status, textfile, {"msg": "busy", "skipped": True}, False, 1500)
    assert "livekit_backup_last_attempt_ok 0" in open(textfile).read()


def test_redis_client_talks_through_the_unix_socket(tmp_path):
    import socket
    path = str(tmp_path / "redis.sock")
    server = FakeRedis(socket.AF_UNIX, path, "pw-" + "x" * 20)
    try:
        # host/port point nowhere: only the socket can answer.
        client = lb.Redis("192.0.2.1", 1, "pw-" + "x" * 20, timeout=2, unix_socket=path)
        assert client.info("server") == {"redis_version": "7.0.15"}
        assert server.commands == [["AUTH", "pw-" + "x" * 20], ["INFO", "server"]]
        with pytest.raises(lb.BackupError, match="Redis refused: NOAUTH"):
            lb.Redis(unix_socket=path, password="", timeout=2).command("INFO")
    finally:
        server.close()


def test_redis_client_names_a_missing_socket(tmp_path):
    with pytest.raises(lb.BackupError, match="cannot connect to Redis at .*missing.sock"):
        lb.Redis(unix_socket=str(tmp_path / "missing.sock"), timeout=2).command("PING")


def test_redis_client_uses_tcp_without_a_socket():
    import socket
    server = FakeRedis(socket.AF_INET, ("127.0.0.1", 0), "secret")
    try:
        client = lb.Redis("127.0.0.1", server.address[1], "secret", timeout=2, unix_socket="")
        assert client.info()["redis_version"] == "7.0.15"
    finally:
        server.close()


def test_run_backup_passes_the_socket_to_the_redis_client(monkeypatch, tmp_path):
    seen = {}

    class Stop(Exception):
        pass

    def fake_snapshot(redis, *args):
        seen.update(socket=redis.unix_socket, host=redis.host, port=redis.port)
        raise Stop()

    monkeypatch.setattr(lb, "redis_snapshot", fake_snapshot)
    cfg = dict(redis={"host": "127.0.0.1", "socket": "/run/redis/redis-server.sock", "port": 6379, "password": "p",
                      "dir": "/x"},
               spool_dir=str(tmp_path / "spool"), lock_file=str(tmp_path / "lock"), recipients=["age1x"],
               host="node", paths=[], bucket="b", prefix="livekit", s3={}, part_size=16 * 1048576, lock_timeout=5,
               keep_last=3, keep_daily=30, keep_monthly=12, signing_key=__file__)
    with pytest.raises(Stop):
        lb.run_backup(cfg, store=object())
    assert seen == {"socket": "/run/redis/redis-server.sock", "host": "127.0.0.1", "port": 6379}


def test_run_backup_without_a_setting_names_it_and_does_nothing(tmp_path):
    cfg = dict(spool_dir=str(tmp_path / "spool"), lock_file=str(tmp_path / "lock"), recipients=["age1x"])
    with pytest.raises(lb.BackupError, match="has no host, paths, bucket") as err:
        lb.run_backup(cfg, store=object())
    assert "keep_monthly" in str(err.value)
    assert not (tmp_path / "spool").exists() and not (tmp_path / "lock").exists()


# ---- what a restore accepts from an archive ----------------------------------------------------


def sealed_tar(tmp_path, recipient, members):
    """An age-encrypted tar.gz of (TarInfo, bytes or None), with a backup.json listing the files."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        body = json.dumps({"id": "x", "host": "h", "members": []}).encode()
        info = tarfile.TarInfo(lb.INNER_MANIFEST)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    path = tmp_path / "a.age"
    path.write_bytes(subprocess.run(["age", "-r", recipient], input=plain.getvalue(), capture_output=True,
                                    check=True).stdout)
    return str(path)


def entry(name, data=b"x", mode=0o644, kind=tarfile.REGTYPE, link="", owner="root"):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uname, info.gname = kind, mode, link, owner, owner
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


POLICY = dict(paths=["/etc/livekit"], redis=True, owners=["root"], groups=["root"])


@pytest.mark.parametrize("members, refusal", [
    ([entry("files/etc/livekit/keys.yaml", kind=tarfile.SYMTYPE, link="/etc/shadow")], "is a link"),
    ([entry("files/etc/livekit/k", kind=tarfile.LNKTYPE, link="files/etc/livekit/x")], "is a link"),
    ([entry("files/etc/livekit/k", kind=tarfile.SYMTYPE, link="../shadow")], "is a link"),
    ([entry("files/etc/livekit/k", kind=tarfile.SYMTYPE, link="../../../../root/.ssh")], "is a link"),
    ([entry("files/etc/livekit/dev", kind=tarfile.CHRTYPE)], "device, FIFO or other special file"),
    ([entry("files/etc/livekit/run", mode=0o4755)], "setuid or setgid"),
    ([entry("files/etc/livekit/run", mode=0o2755)], "setuid or setgid"),
    ([entry("/etc/livekit/keys.yaml")], "absolute path or '..'"),
    ([entry("files/etc/livekit/../../../etc/passwd")], "absolute path or '..'"),
    ([entry("files/etc/cron.d/evil")], "outside the restore targets"),
    ([entry("redis/../../etc/x")], "absolute path or '..'"),
    ([entry("redis/evil.so")], "outside the restore targets"),
    ([entry("files/etc/livekit/owned", owner="nobody")], "belongs to nobody:nobody"),
])
def test_unsafe_archive_members_are_refused_before_they_are_written(tmp_path, identity, members, refusal):
    secret, recipient = identity
    archive = sealed_tar(tmp_path, recipient, members)
    out = tmp_path / "out"
    with pytest.raises(lb.BackupError, match=refusal):
        lb.decrypt_archive(archive, secret, str(out), policy=lb.ExtractPolicy(**POLICY))
    written = [os.path.join(base, name) for base, dirs, names in os.walk(out) for name in names]
    assert written == [], written
    assert not os.path.exists("/etc/cron.d/evil")


def test_the_identity_reaches_age_through_a_pipe_not_a_file(tmp_path, identity, monkeypatch):
    secret, recipient = identity
    archive = sealed_tar(tmp_path, recipient, [entry("files/etc/livekit/a")])
    seen = []
    real_popen = subprocess.Popen

    def popen(args, *rest, **kwargs):
        position = args.index("--identity") + 1
        seen.append((args[position], os.path.isfile(args[position])))
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    lb.decrypt_archive(archive, secret, str(tmp_path / "out"), policy=lb.ExtractPolicy(**POLICY))
    assert seen == [("-", False)]
    assert (tmp_path / "out" / "files" / "etc" / "livekit" / "a").read_bytes() == b"x"


# ---- signatures ---------------------------------------------------------------------------------


@pytest.fixture
def signing_key(tmp_path):
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed")
    path = tmp_path / "signing"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path), (tmp_path / "signing.pub").read_text().strip()


class FakeStore:
    def __init__(self, objects, base="livekit/node-1"):
        self.objects, self.base = objects, base

    def key(self, *parts):
        return "/".join((self.base,) + parts)

    def get_bytes(self, key):
        return self.objects.get(key)

    def get_json(self, key):
        return json.loads(self.objects[key]) if key in self.objects else None

    def backup_ids(self):
        ids, good = set(), set()
        for key in self.objects:
            rest = key[len(self.base) + 1:]
            if "/" in rest:
                ids.add(rest.split("/")[0])
                if rest.endswith("/" + lb.MANIFEST_NAME):
                    good.add(rest.split("/")[0])
        return sorted(ids, reverse=True), good


def add_backup(store, backup_id, key_file):
    """A complete backup of node-1 signed with key_file (manifest and signature; the archive is not needed)."""
    body = json.dumps({"id": backup_id, "host": "node-1",
                       "archive": {"key": "livekit/node-1/%s/archive.tar.gz.age" % backup_id}}).encode()
    store.objects["livekit/node-1/%s/manifest.json" % backup_id] = body
    store.objects["livekit/node-1/%s/manifest.json.sig" % backup_id] = lb.sign_manifest(body, key_file)


def signed_store(key_file, manifest=None, sign=True):
    manifest = manifest or {"id": "20261123T031500Z", "host": "node-1",
                            "archive": {"key": "livekit/node-1/20261123T031500Z/archive.tar.gz.age"}}
    body = json.dumps(manifest).encode()
    objects = {"livekit/node-1/latest.json": json.dumps({"id": "20261123T031500Z"}).encode(),
               "livekit/node-1/20261123T031500Z/manifest.json": body}
    if sign:
        objects["livekit/node-1/20261123T031500Z/manifest.json.sig"] = lb.sign_manifest(body, key_file)
    return FakeStore(objects)


def test_a_backup_signed_by_its_host_is_found(signing_key):
    key_file, public = signing_key
    assert lb.find_backup(signed_store(key_file), "latest", public)["id"] == "20261123T031500Z"


def test_unsigned_forged_and_changed_manifests_are_refused(signing_key, tmp_path):
    key_file, public = signing_key
    with pytest.raises(lb.BackupError, match="backup 20261123T031500Z of livekit/node-1 is not signed"):
        lb.find_backup(signed_store(key_file, sign=False), "latest", public)
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(lb.BackupError, match="does not verify with the host's public key"):
        lb.find_backup(signed_store(str(other)), "latest", public)
    store = signed_store(key_file)
    key = "livekit/node-1/20261123T031500Z/manifest.json"
    store.objects[key] = store.objects[key].replace(b"archive.tar.gz.age", b"evil.tar.gz.age")
    with pytest.raises(lb.BackupError, match="does not verify"):
        lb.find_backup(store, "latest", public)
    # A genuine manifest of another host (or id), copied under this one's name.
    with pytest.raises(lb.BackupError, match="says it is backup 20261123T031500Z of node-2"):
        lb.find_backup(signed_store(key_file, {"id": "20261123T031500Z", "host": "node-2", "archive": {}}),
                       "latest", public)


def test_latest_is_the_newest_verified_backup_whatever_latest_json_says(signing_key, tmp_path):
    """latest.json is not signed: a host's S3 key could point it back at an old genuine backup (a
    rollback of the keys and rooms restored), or at nothing. "latest" is chosen from signed manifests."""
    key_file, public = signing_key
    store = signed_store(key_file)  # 20261123T031500Z, latest.json names it
    add_backup(store, "20261124T031500Z", key_file)
    add_backup(store, "20261120T031500Z", key_file)
    warnings = []
    assert lb.find_backup(store, "latest", public, warn=warnings.append)["id"] == "20261124T031500Z"
    assert "names backup 20261123T031500Z, but the newest backup whose signature verifies is 20261124T031500Z" \
        in warnings[0]
    # A newer backup signed by another key (or unsigned) is skipped, said so, and never restored.
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    add_backup(store, "20261125T031500Z", str(other))
    store.objects["livekit/node-1/latest.json"] = json.dumps({"id": "20261125T031500Z"}).encode()
    warnings = []
    assert lb.find_backup(store, "latest", public, warn=warnings.append)["id"] == "20261124T031500Z"
    assert "20261125T031500Z" in warnings[0] and "does not verify" in warnings[0]
    # An incomplete newer backup (no manifest yet) is not a candidate; without latest.json it still works.
    store.objects["livekit/node-1/20261126T031500Z/archive.tar.gz.age"] = b"partial"
    del store.objects["livekit/node-1/latest.json"]
    assert lb.find_backup(store, "latest", public)["id"] == "20261124T031500Z"


def test_no_verified_backup_names_the_reasons(signing_key, tmp_path):
    key_file, public = signing_key
    with pytest.raises(lb.BackupError, match="no backup of livekit/node-1 verifies .* is not signed"):
        lb.find_backup(signed_store(key_file, sign=False), "latest", public)
    with pytest.raises(lb.BackupError, match="there is no complete backup of livekit/node-1 yet"):
        lb.find_backup(FakeStore({}), "latest", public)


def test_a_restore_keeps_the_live_file_this_host_made_and_reverts_cleanly(tmp_path):
    """livekit.yaml names this host's addresses (site.yml made it from the inventory); a backup from
    another host names that host's. The swap keeps the live one and restores everything else."""
    live = tmp_path / "etc" / "livekit"
    live.mkdir(parents=True)
    (live / "livekit.yaml").write_text("turn: 10.0.0.251\n")
    (live / "keys.yaml").write_text("APInew: live\n")
    restored = tmp_path / "unpacked" / "livekit"
    restored.mkdir(parents=True)
    (restored / "livekit.yaml").write_text("turn: 10.0.0.250\n")
    (restored / "keys.yaml").write_text("APIold: backed-up\n")
    journal = tmp_path / "journal"
    lb.apply_restore([(str(restored), str(live))], str(journal), keep_live=[str(live / "livekit.yaml")])
    assert (live / "livekit.yaml").read_text() == "turn: 10.0.0.251\n"
    assert (live / "keys.yaml").read_text() == "APIold: backed-up\n"
    lb.revert_restore(str(journal))
    assert (live / "keys.yaml").read_text() == "APInew: live\n"
    assert (live / "livekit.yaml").read_text() == "turn: 10.0.0.251\n"
