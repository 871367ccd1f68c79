"""livekit_redis against a fake Redis on a unix socket: the snapshot waits for its own save, check
mode sends nothing, the password travels only inside the connection, and "loaded" waits out a
start and a data load."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.livekit.plugins.modules import livekit_redis
from conftest import FakeRedis

PASSWORD = "pw-" + "r" * 24


class StatefulRedis:
    """A RESP server that behaves like Redis 7 with requirepass for the commands the module uses.
    ``script`` is a list of persistence states INFO walks through after BGSAVE; ``load_polls`` is how
    many INFO calls answer loading:1 first."""

    def __init__(self, path, data_dir, same_second=False, load_polls=0, reply_scheduled=True):
        self.data_dir = data_dir
        self.saves, self.in_progress, self.polls_after_bgsave = 5, False, None
        self.last_save_time = 1_700_000_000
        self.same_second, self.load_polls, self.reply_scheduled = same_second, load_polls, reply_scheduled
        (data_dir / "dump.rdb").write_bytes(b"old snapshot")
        self.server = FakeRedis(socket.AF_UNIX, path, PASSWORD, answer=self._answer)
        self.commands = self.server.commands

    def _persistence(self):
        if self.load_polls > 0:
            self.load_polls -= 1
            return "loading:1\r\nloading_loaded_perc:40.00\r\nrdb_bgsave_in_progress:0"
        if self.polls_after_bgsave is not None:
            self.polls_after_bgsave += 1
            # First poll: the save is only scheduled (an AOF rewrite runs), nothing in progress yet -
            # a wait that only looks at rdb_bgsave_in_progress would stop here with the old file.
            if self.polls_after_bgsave == 2:
                self.in_progress = True
            elif self.polls_after_bgsave == 4:
                self.in_progress = False
                self.saves += 1
                (self.data_dir / "dump.rdb").write_bytes(b"fresh snapshot")
                if not self.same_second:
                    self.last_save_time += 1
                self.polls_after_bgsave = None
        return ("loading:0\r\nrdb_saves:%d\r\nrdb_bgsave_in_progress:%d\r\nrdb_last_save_time:%d\r\n"
                "rdb_last_bgsave_status:ok\r\naof_enabled:0\r\naof_rewrite_in_progress:0"
                % (self.saves, int(self.in_progress), self.last_save_time))

    def _answer(self, args):
        name = args[0].upper()
        if name == "INFO":
            section = args[1] if len(args) > 1 else ""
            text = {"persistence": self._persistence(), "server": "redis_version:7.0.15",
                    "keyspace": "db0:keys=3,expires=0,avg_ttl=0"}.get(section, "")
            return b"$%d\r\n%s\r\n" % (len(text), text.encode())
        if name == "BGSAVE":
            self.polls_after_bgsave = 0
            reply = "Background saving scheduled" if self.reply_scheduled else "Background saving started"
            return b"+%s\r\n" % reply.encode()
        if name == "DBSIZE":
            return b":3\r\n"
        if name == "CONFIG":
            return b"*2\r\n$10\r\ndbfilename\r\n$8\r\ndump.rdb\r\n"
        return b"-ERR unknown command\r\n"

    def close(self):
        self.server.close()


@pytest.fixture
def redis(tmp_path):
    servers = []

    def start(**kwargs):
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        server = StatefulRedis(str(tmp_path / "redis.sock"), data, **kwargs)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.close()


def run(args, capsys, check_mode=False):
    with patch_module_args(dict(args, _ansible_check_mode=check_mode)), pytest.raises(SystemExit) as exit_info:
        livekit_redis.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def snapshot_args(tmp_path, **extra):
    return dict(state="snapshot", socket=str(tmp_path / "redis.sock"), password=PASSWORD,
                data_dir=str(tmp_path / "data"), dest=str(tmp_path / "snap" / "20261123T031500Z"), **extra)


@pytest.mark.parametrize("same_second", [False, True])
def test_snapshot_waits_for_its_own_save_and_copies_it(redis, tmp_path, capsys, same_second):
    # same_second: the new save ends in the same second as the one before. Comparing LASTSAVE times
    # (the old redis-cli tasks) never sees it finish; the save counter does.
    server = redis(same_second=same_second)
    rc, out = run(snapshot_args(tmp_path, timeout=5), capsys)
    assert rc == 0 and out["changed"], out
    dest = tmp_path / "snap" / "20261123T031500Z"
    assert out["path"] == str(dest) and out["keys"] == 3 and out["rdb"] == "dump.rdb"
    assert (dest / "dump.rdb").read_bytes() == b"fresh snapshot"
    assert oct(dest.stat().st_mode & 0o777) == "0o700"
    # A scheduled save ("Background saving scheduled", during an AOF rewrite) is accepted and waited for.
    assert ["BGSAVE", "SCHEDULE"] in server.commands


def test_snapshot_in_check_mode_sends_nothing_and_copies_nothing(redis, tmp_path, capsys):
    server = redis()
    rc, out = run(snapshot_args(tmp_path), capsys, check_mode=True)
    assert rc == 0 and out["changed"] and out["path"].endswith("20261123T031500Z")
    assert server.commands == [] and not (tmp_path / "snap").exists()


def test_password_goes_only_over_the_socket_and_never_into_the_result(redis, tmp_path, capsys):
    server = redis()
    rc, out = run(snapshot_args(tmp_path, timeout=5), capsys)
    assert rc == 0
    assert PASSWORD not in json.dumps(out)
    assert all(args == ["AUTH", PASSWORD] for args in server.commands if PASSWORD in args)


def test_snapshot_needs_a_destination(tmp_path, capsys):
    rc, out = run(dict(state="snapshot", socket=str(tmp_path / "redis.sock")), capsys)
    assert rc == 1 and "dest" in out["msg"]


def test_loaded_waits_until_redis_has_loaded_its_data(redis, tmp_path, capsys):
    server = redis(load_polls=3)
    rc, out = run(dict(state="loaded", socket=str(tmp_path / "redis.sock"), password=PASSWORD, timeout=10), capsys)
    assert rc == 0 and not out["changed"] and out["dbsize"] == 3 and out["keys"] == 3
    assert ["DBSIZE"] in server.commands and server.load_polls == 0


def test_loaded_waits_for_the_socket_to_appear(tmp_path, capsys):
    # Redis was just started: its socket shows up a moment later.
    data = tmp_path / "data"
    data.mkdir()
    holder = {}
    timer = threading.Timer(1.0, lambda: holder.update(server=StatefulRedis(str(tmp_path / "redis.sock"), data)))
    timer.start()
    try:
        rc, out = run(dict(state="loaded", socket=str(tmp_path / "redis.sock"), password=PASSWORD, timeout=10), capsys)
    finally:
        timer.join()
        holder["server"].close()
    assert rc == 0 and out["dbsize"] == 3


def test_loaded_fails_at_once_on_a_wrong_password(redis, tmp_path, capsys):
    redis()
    rc, out = run(dict(state="loaded", socket=str(tmp_path / "redis.sock"), password="wrong-" + "x" * 20,
                       timeout=30), capsys)
    assert rc == 1 and "refused the password" in out["msg"] and "WRONGPASS" in out["msg"]
    assert "wrong-" not in out["msg"]


def test_loaded_names_the_socket_when_redis_never_answers(tmp_path, capsys):
    rc, out = run(dict(state="loaded", socket=str(tmp_path / "missing.sock"), password=PASSWORD, timeout=1), capsys)
    assert rc == 1 and "missing.sock" in out["msg"] and "within 1 s" in out["msg"]


def snapshot_named(tmp_path, name, **extra):
    return dict(snapshot_args(tmp_path, timeout=5, **extra), dest=str(tmp_path / "snap" / name))


def test_snapshots_beyond_keep_are_removed_oldest_first(redis, tmp_path, capsys):
    """Every major upgrade leaves a snapshot; with keep=3 the directory holds the newest three and
    never anything else of the operator's is touched."""
    redis()
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "operator-notes").mkdir()  # not a snapshot: neither marker nor timestamp name
    (snap / "README").write_text("keep me")
    names = ["20260101T000000Z", "before-2.0", "20260301T000000Z", "20260401T000000Z", "20260501T000000Z"]
    for number, name in enumerate(names):
        rc, out = run(snapshot_named(tmp_path, name, keep=3), capsys)
        assert rc == 0, out
        assert (snap / name / "dump.rdb").read_bytes() == b"fresh snapshot"
        marker = json.loads((snap / name / "snapshot.json").read_text())
        assert marker["keys"] == 3
        # Times in the markers are what orders them: make each one clearly later than the last.
        marker["taken_at"] = 1_700_000_000 + number
        (snap / name / "snapshot.json").write_text(json.dumps(marker))
    left = sorted(p.name for p in snap.iterdir())
    assert left == sorted(["20260301T000000Z", "20260401T000000Z", "20260501T000000Z", "operator-notes", "README"])
    assert out["pruned"] == [str(snap / "before-2.0")]  # the last run removed one; the run before, one more


def test_keep_counts_snapshots_from_before_the_marker(redis, tmp_path, capsys):
    """Snapshots taken by an older version (timestamp names, no snapshot.json) count and go first."""
    redis()
    snap = tmp_path / "snap"
    for name in ("20250101T000000Z", "20250201T000000Z", "20250301T000000Z"):
        (snap / name).mkdir(parents=True)
        (snap / name / "dump.rdb").write_bytes(b"old")
    rc, out = run(snapshot_named(tmp_path, "20260101T000000Z", keep=2), capsys)
    assert rc == 0, out
    assert sorted(p.name for p in snap.iterdir()) == ["20250301T000000Z", "20260101T000000Z"]
    assert sorted(out["pruned"]) == [str(snap / "20250101T000000Z"), str(snap / "20250201T000000Z")]


def test_keep_in_check_mode_reports_and_removes_nothing(redis, tmp_path, capsys):
    server = redis()
    snap = tmp_path / "snap"
    for name in ("20250101T000000Z", "20250201T000000Z"):
        (snap / name).mkdir(parents=True)
    rc, out = run(snapshot_named(tmp_path, "20260101T000000Z", keep=2), capsys, check_mode=True)
    assert rc == 0 and out["pruned"] == [str(snap / "20250101T000000Z")]
    assert sorted(p.name for p in snap.iterdir()) == ["20250101T000000Z", "20250201T000000Z"]
    assert server.commands == []
