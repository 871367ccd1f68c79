# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups of a LiveKit host to S3-compatible storage, and fetching them back.

One implementation, two entry points: the Ansible modules (livekit_backup, livekit_backup_info,
livekit_restore) import it, and the role installs this same file on the host for the systemd
timer's ``livekit-backup.service``. So it imports only the standard library, boto3 (which the
role installs from Debian) and livekit_files.py (installed next to it), never Ansible itself.

Layout in the bucket, per host::

    <prefix>/<host>/<id>/archive.tar.gz.age   the age-encrypted tar.gz
    <prefix>/<host>/<id>/manifest.json        written only after the archive is verified
    <prefix>/<host>/latest.json               moved only after the manifest is verified

A backup without a manifest is not a backup: listing, restore and retention ignore it, and
retention removes it once a newer good backup exists.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import errno
import fcntl
import gzip
import hashlib
import io
import json
import os
import pwd
import grp
import re
import shutil
import stat
import socket
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

try:
    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import atomic_write, read_json
except ImportError:  # on the host, for the timer: installed next to livekit_files.py by the role
    from livekit_files import atomic_write, read_json  # pylint: disable=import-error

try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError
    HAS_BOTO3 = True
except ImportError:  # the modules report this through missing_required_lib
    HAS_BOTO3 = False
    BotoCoreError = ClientError = Exception

FORMAT = 1
ARCHIVE_NAME = "archive.tar.gz.age"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
# ssh-keygen -Y sign/verify namespace: a signature made for anything else never verifies as a backup's.
SIGNATURE_NAMESPACE = "selfhosted.livekit-backup"
SIGNER = "backup-signer"
LATEST_NAME = "latest.json"
INNER_MANIFEST = "backup.json"
# The Redis files a restore replaces in Redis's data directory (the redis role's names).
REDIS_NAMES = ("dump.rdb", "appendonlydir")
MIN_PART_SIZE = 5 * 1024 * 1024
READ_SIZE = 1024 * 1024
# Redis's RDB is compressed already; a light gzip level keeps the CPU cost low for the same size.
GZIP_LEVEL = 1
UPLOAD_WORKERS = 4


class BackupError(Exception):
    """A backup or restore step failed; the message says which and what was left behind."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def utc_id(ts):
    """Backup id for a UNIX time: 20261123T020000Z (sorts by time)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))


def id_time(backup_id):
    """UNIX time of a backup id, or None when it is not one."""
    try:
        return calendar.timegm(time.strptime(backup_id, "%Y%m%dT%H%M%SZ"))
    except (TypeError, ValueError):
        return None


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(READ_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


class Lock:
    """An exclusive flock on ``path``; waits up to ``timeout`` seconds for another run to finish."""

    def __init__(self, path, timeout, clock=time.monotonic, sleep=time.sleep):
        self.path, self.timeout, self.clock, self.sleep = path, timeout, clock, sleep
        self.handle = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.handle = open(self.path, "a")
        deadline = self.clock() + self.timeout
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if self.clock() >= deadline:
                self.handle.close()
                raise Busy(
                    "another backup or restore holds %s and did not finish within %d s; nothing was done "
                    "(raise lock_timeout to wait longer)" % (self.path, self.timeout))
            self.sleep(0.5)

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


# ---------------------------------------------------------------------------------------------
# Redis


class Redis:
    """A minimal RESP client: enough for AUTH, BGSAVE, INFO, DBSIZE and CONFIG GET. The password travels
    only inside the connection, never in a process's arguments. With ``unix_socket`` it talks to
    Redis through that socket (the redis role's default: Redis with TLS has no plaintext TCP
    listener), otherwise over TCP to ``host``:``port``."""

    def __init__(self, host="127.0.0.1", port=6379, password="", timeout=10, unix_socket=None):
        self.host, self.port, self.password, self.timeout = host, port, password, timeout
        self.unix_socket = unix_socket or None

    def _connect(self):
        if not self.unix_socket:
            return socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_socket)
        except OSError as err:
            sock.close()
            raise BackupError("cannot connect to Redis at %s: %s" % (self.unix_socket, err))
        return sock

    def command(self, *args):
        with self._connect() as sock:
            reader = sock.makefile("rb")
            if self.password:
                sock.sendall(self._encode("AUTH", self.password))
                self._read(reader)
            sock.sendall(self._encode(*args))
            return self._read(reader)

    @staticmethod
    def _encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def _read(self, reader):
        line = reader.readline()
        if not line:
            raise BackupError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BackupError("Redis refused: %s" % rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = reader.read(size + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            return [self._read(reader) for dummy in range(int(rest))]
        raise BackupError("unexpected Redis reply %r" % line[:40])

    def info(self, section=None):
        text = self.command("INFO", section) if section else self.command("INFO")
        info = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                info[key] = value
        return info


def keyspace_keys(info):
    """Total keys over all databases from INFO keyspace (db0:keys=3,expires=0,...)."""
    total = 0
    for key, value in info.items():
        if key.startswith("db"):
            for part in value.split(","):
                if part.startswith("keys="):
                    total += int(part[5:])
    return total


def redis_snapshot(redis, data_dir, dest, timeout=600, clock=time.monotonic, sleep=time.sleep):
    """Take a fresh RDB with BGSAVE, waiting until that save (not an earlier one) has finished,
    then copy it and the AOF directory to ``dest``. Returns facts for the manifest."""
    before = redis.info("persistence")
    saves_before = int(before.get("rdb_saves", -1))
    last_before = int(before.get("rdb_last_save_time", 0))
    if saves_before < 0:
        # Redis < 7 has no save counter: make sure our save gets a later timestamp.
        while time.time() < last_before + 1.05:
            sleep(0.2)
    reply = redis.command("BGSAVE", "SCHEDULE")
    if "Background saving" not in reply:
        raise BackupError("Redis did not start a snapshot: %s" % reply)
    deadline = clock() + timeout
    while True:
        info = redis.info("persistence")
        done = info.get("rdb_bgsave_in_progress") == "0" and (
            int(info.get("rdb_saves", -1)) > saves_before if saves_before >= 0
            else int(info.get("rdb_last_save_time", 0)) > last_before)
        if done:
            break
        if clock() >= deadline:
            raise BackupError("Redis's snapshot did not finish within %d s" % timeout)
        sleep(0.1)
    if info.get("rdb_last_bgsave_status") != "ok":
        raise BackupError("Redis reported a failed snapshot (rdb_last_bgsave_status=%s); check its "
                          "log and free space in %s" % (info.get("rdb_last_bgsave_status"), data_dir))
    server = redis.info("server")
    keyspace = redis.info("keyspace")
    rdb_name = "dump.rdb"
    try:
        rdb_name = redis.command("CONFIG", "GET", "dbfilename")[1] or rdb_name
    except (BackupError, IndexError, TypeError):
        pass  # CONFIG may be renamed away; the default name then applies
    os.makedirs(dest, 0o700, exist_ok=True)
    # Redis replaces the RDB by rename, so the file we open is one whole snapshot.
    shutil.copy2(os.path.join(data_dir, rdb_name), os.path.join(dest, rdb_name))
    aof = _copy_aof(redis, data_dir, dest, clock, sleep, deadline)
    return dict(
        redis_version=server.get("redis_version"),
        rdb=rdb_name,
        aof=aof,
        keys=keyspace_keys(keyspace),
        rdb_saved_at=int(info.get("rdb_last_save_time", 0)),
    )


# A snapshot directory made by redis_snapshot carries this file (what was saved, and when), which
# is how prune_snapshots tells its own snapshots from anything else in the same directory.
SNAPSHOT_MARKER = "snapshot.json"
# Snapshots taken before the marker existed: the default name, a UTC timestamp.
_LEGACY_SNAPSHOT_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}Z$")


def write_snapshot_marker(dest, facts, now=None):
    """Record in ``dest`` that it is a snapshot, with its facts and the time it was taken."""
    record = dict(facts, taken_at=round(time.time() if now is None else now, 3))
    path = os.path.join(dest, SNAPSHOT_MARKER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, sort_keys=True)
        handle.write("\n")


def snapshots_in(parent):
    """The snapshot directories directly under ``parent``, newest first: those with a marker (by the
    time in it) and, from before the marker existed, those with a default snapshot name (by the
    directory's modification time). Links, files and other directories are never counted."""
    found = []
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        taken = None
        try:
            with open(os.path.join(entry.path, SNAPSHOT_MARKER)) as handle:
                taken = float(json.load(handle)["taken_at"])
        except (OSError, ValueError, KeyError, TypeError):
            if _LEGACY_SNAPSHOT_NAME.match(entry.name):
                taken = entry.stat(follow_symlinks=False).st_mtime
        if taken is not None:
            found.append((taken, entry.name, entry.path))
    return [path for _taken, _name, path in sorted(found, reverse=True)]


def prune_snapshots(parent, keep, current=None, check_mode=False):
    """Remove all but the newest ``keep`` snapshots under ``parent`` (``keep`` < 1 keeps them all);
    ``current``, the snapshot just taken, is always kept. Returns the paths removed (or, in check
    mode, that would be)."""
    if keep < 1:
        return []
    snapshots = [path for path in snapshots_in(parent) if path != current]
    room = keep - 1 if current is not None else keep
    doomed = snapshots[max(room, 0):]
    if not check_mode:
        for path in doomed:
            shutil.rmtree(path)
    return doomed


# Replies that no amount of waiting changes: the password is wrong, missing or not expected.
_AUTH_REFUSALS = ("WRONGPASS", "NOAUTH", "invalid password", "without any password configured")


def redis_wait_loaded(redis, timeout=60, clock=time.monotonic, sleep=time.sleep):
    """Wait until Redis accepts connections and has loaded its data set (``loading:0``), e.g.
    right after systemd started it. Returns ``dbsize`` (keys in db 0) and ``keys`` (all dbs).
    A refused password fails at once; anything else (no socket yet, LOADING) is retried until
    ``timeout`` seconds have passed."""
    deadline = clock() + timeout
    while True:
        try:
            info = redis.info("persistence")
            if info.get("loading") == "0":
                return dict(dbsize=int(redis.command("DBSIZE")), keys=keyspace_keys(redis.info("keyspace")))
            last = "still loading its data (%s%% done)" % info.get("loading_loaded_perc", "?")
        except (BackupError, OSError) as err:
            if any(marker in str(err) for marker in _AUTH_REFUSALS):
                raise BackupError("Redis refused the password (%s): give the password Redis's requirepass "
                                  "is set to" % err)
            last = str(err)
        if clock() >= deadline:
            raise BackupError("Redis did not answer with its data loaded within %d s: %s" % (timeout, last))
        sleep(0.5)


def _copy_aof(redis, data_dir, dest, clock, sleep, deadline):
    """Copy the AOF directory named by its manifest, retrying while a rewrite swaps files."""
    info = redis.info("persistence")
    if info.get("aof_enabled") != "1":
        return None
    try:
        dirname = redis.command("CONFIG", "GET", "appenddirname")[1]
    except (BackupError, IndexError, TypeError):
        dirname = "appendonlydir"
    source = os.path.join(data_dir, dirname)
    if not os.path.isdir(source):
        return None
    while True:
        info = redis.info("persistence")
        if info.get("aof_rewrite_in_progress") == "0":
            manifest_files = [name for name in os.listdir(source) if name.endswith(".manifest")]
            before = {name: _read_bytes(os.path.join(source, name)) for name in manifest_files}
            target = os.path.join(dest, dirname)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.makedirs(target, 0o700)
            for name in sorted(os.listdir(source)):
                shutil.copy2(os.path.join(source, name), os.path.join(target, name))
            after = {name: _read_bytes(os.path.join(source, name)) for name in manifest_files}
            if before == after and redis.info("persistence").get("aof_rewrite_in_progress") == "0":
                return dirname
        if clock() >= deadline:
            raise BackupError("the AOF kept being rewritten; could not copy it consistently")
        sleep(0.2)


def _read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


# ---------------------------------------------------------------------------------------------
# Archive and encryption


def build_archive(out_path, recipients, staging_dirs, files, inner_manifest, age="age"):
    """Stream a tar.gz of ``staging_dirs`` (name -> directory, stored under that name) and of
    ``files`` (absolute paths, stored under files/<path>) through ``age`` into ``out_path``.

    Returns the list of archive members (path, size, sha256) that went in."""
    if not recipients:
        raise BackupError("no age recipient: the archive would be unencrypted")
    args = [age, "--encrypt", "--output", out_path]
    for recipient in recipients:
        args += ["--recipient", recipient]
    members = []
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        gz = gzip.GzipFile(fileobj=proc.stdin, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
        with tarfile.open(fileobj=gz, mode="w|") as tar:
            for name, directory in sorted(staging_dirs.items()):
                for root, dirs, names in os.walk(directory):
                    dirs.sort()
                    for entry in sorted(names):
                        path = os.path.join(root, entry)
                        arcname = os.path.join(name, os.path.relpath(path, directory))
                        members.append(_add(tar, path, arcname))
            archived = set(files)
            for path in files:
                if (os.path.isdir(path) and not os.path.islink(path)) or _kept_link(path, archived):
                    tar.add(path, "files" + path, recursive=False)  # keeps its mode, owner and link
                else:
                    members.append(_add(tar, path, "files" + path))
            body = json.dumps(dict(inner_manifest, members=members), indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(INNER_MANIFEST)
            info.size, info.mtime, info.mode = len(body), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(body))
        gz.close()
        proc.stdin.close()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        raise BackupError("age could not encrypt the archive: %s" % err)
    return members


class _Hashing:
    """A file reader that hashes what passes through it (one read of each file, not two)."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size=-1):
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _add(tar, path, arcname):
    with open(path, "rb") as handle:
        info = tar.gettarinfo(arcname=arcname, fileobj=handle)
        reader = _Hashing(handle)
        tar.addfile(info, reader)
    return dict(path=arcname, size=info.size, sha256=reader.digest.hexdigest())


def link_inside(path, linkname, top):
    """Whether a symbolic link at ``path`` to ``linkname`` is relative and stays inside ``top``
    (as certbot's live/<name>/*.pem -> ../../archive/<name>/*.pem links do)."""
    if not linkname or os.path.isabs(linkname) or "\x00" in linkname:
        return False
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), linkname))
    top = os.path.normpath(top)
    return resolved.startswith(top.rstrip("/") + "/")


def _kept_link(path, archived):
    """Whether ``path`` is a relative link to something archived with it (stored as the link)."""
    if not os.path.islink(path):
        return False
    linkname = os.readlink(path)
    return not os.path.isabs(linkname) and os.path.normpath(os.path.join(os.path.dirname(path), linkname)) in archived


def expand_paths(paths):
    """Directories, regular files and symbolic links under ``paths``, parents first; missing paths
    are skipped. A link is kept as a link when it is relative and stays inside its backed-up path
    (certbot's live/ links); any other link is followed and its file stored, as before."""
    found = []
    for path in paths:
        path = os.path.abspath(path)
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                found.append(root)
                for name in sorted(names + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
                    entry = os.path.join(root, name)
                    if os.path.islink(entry) and link_inside(entry, os.readlink(entry), path):
                        found.append(entry)
                    elif os.path.isfile(entry):
                        found.append(entry)
    return found


def decrypt_archive(archive, identity, dest, age="age", policy=None):
    """Decrypt ``archive`` with the age ``identity`` (the key's text) and unpack it into ``dest``,
    checking every member first (check_member, with ``policy``). Checks every member against the
    archive's own manifest. Returns that manifest.

    The identity reaches age through a pipe (its standard input), never a file or an argument."""
    os.makedirs(dest, 0o700, exist_ok=True)
    proc = subprocess.Popen([age, "--decrypt", "--identity", "-", archive],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        try:
            proc.stdin.write((identity.strip() + "\n").encode())
            proc.stdin.close()
        except OSError:
            pass  # age gave up before reading it; its message says why
        _extract(proc.stdout, dest, policy)
    except BackupError:
        proc.kill()
        proc.wait()
        raise
    except (tarfile.TarError, EOFError, OSError) as err:
        proc.kill()
        proc.wait()
        reason = proc.stderr.read().decode(errors="replace").strip()
        raise BackupError("cannot decrypt or unpack the archive: %s" % (reason or err))
    reason = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        raise BackupError("cannot decrypt the archive: %s" % reason)
    manifest_path = os.path.join(dest, INNER_MANIFEST)
    if not os.path.isfile(manifest_path):
        raise BackupError("the archive has no %s; it is not a backup of this collection" % INNER_MANIFEST)
    with open(manifest_path) as handle:
        inner = json.load(handle)
    for member in inner.get("members", []):
        path = os.path.join(dest, member["path"])
        if not os.path.isfile(path) or sha256_file(path) != member["sha256"]:
            raise BackupError("archive member %s does not match its checksum" % member["path"])
    return inner


class ExtractPolicy:
    """What a restore accepts from an archive, from the inventory of the host restored to:
    ``paths`` (files/<path>... members), the Redis file names (redis/<name>... members, only with
    ``redis``), and the user and group names files may belong to."""

    def __init__(self, paths, redis=False, redis_names=REDIS_NAMES, owners=("root",), groups=("root",)):
        self.targets = restore_targets(paths)
        self.redis, self.redis_names = redis, tuple(redis_names)
        self.owners, self.groups = set(owners), set(groups)

    def allows_path(self, name):
        if name == INNER_MANIFEST:
            return True
        if name.startswith("files/"):
            path = "/" + name[len("files/"):]
            return any(path == t or path.startswith(t.rstrip("/") + "/") for t in self.targets)
        if self.redis and name.startswith("redis/"):
            first = name[len("redis/"):].split("/", 1)[0]
            return first in self.redis_names
        return self.redis and name == "redis"


def check_member(member, policy=None):
    """Refuse an archive member that is not a plain file or directory inside the restore: links,
    devices, FIFOs, setuid/setgid bits, absolute paths and '..', and (with ``policy``) paths outside
    the targets and owners not named in the inventory. Raises BackupError naming the member."""
    name = member.name
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts or "\x00" in name:
        raise BackupError("archive member %r has an absolute path or '..'" % name)
    if member.islnk():
        raise BackupError("archive member %s is a link (a hard link, to %s)" % (name, member.linkname))
    if member.issym():
        top = name.split("/", 1)[0]
        if policy is not None and name.startswith("files/"):
            top = next(("files" + t for t in policy.targets if ("/" + name[len("files/"):]).startswith(t.rstrip("/") + "/")),
                       None)
        if top is None or not link_inside(name, member.linkname, top):
            raise BackupError("archive member %s is a link to %s, outside what it belongs to" % (name, member.linkname))
    elif not (member.isfile() or member.isdir()):
        raise BackupError("archive member %s is a device, FIFO or other special file" % name)
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise BackupError("archive member %s has the setuid or setgid bit (mode %o)" % (name, member.mode))
    if policy is None:
        return
    if not policy.allows_path(name.rstrip("/")):
        raise BackupError("archive member %s is outside the restore targets (%s)"
                          % (name, ", ".join(policy.targets + (["Redis data"] if policy.redis else [])) or "none"))
    if name == INNER_MANIFEST:
        return  # the archive's own list of members: read by the restore, never put on the host
    if member.uname not in policy.owners or member.gname not in policy.groups:
        raise BackupError("archive member %s belongs to %s:%s, not to a user (%s) and group (%s) the inventory allows"
                          % (name, member.uname or member.uid, member.gname or member.gid,
                             ", ".join(sorted(policy.owners)), ", ".join(sorted(policy.groups))))


def _extract(stream, dest, policy=None):
    """Unpack a tar.gz stream into ``dest``, every member checked before it is written. Owners are
    set by name, only from the names the policy allows (never the archive's numeric ids); without a
    policy everything belongs to the user unpacking. tarfile's ``data`` filter, where this Python
    has it, checks again."""
    root = os.path.realpath(dest)
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for member in tar:
            check_member(member, policy)
            target = os.path.realpath(os.path.join(root, member.name))
            if not (target == root or target.startswith(root + os.sep)):
                raise BackupError("archive member %s points outside the restore directory" % member.name)
            try:
                tar.extract(member, root, set_attrs=False, **extra)
            except tarfile.TarError as err:
                raise BackupError("archive member %s refused: %s" % (member.name, err))
            if not member.issym():
                os.chmod(target, member.mode & 0o777)
            if policy is not None and member.name != INNER_MANIFEST:
                try:
                    uid, gid = pwd.getpwnam(member.uname).pw_uid, grp.getgrnam(member.gname).gr_gid
                except KeyError:
                    raise BackupError("archive member %s belongs to %s:%s, which this host does not have"
                                      % (member.name, member.uname, member.gname))
                os.lchown(target, uid, gid)


# ---------------------------------------------------------------------------------------------
# Signatures: each host signs its manifests with its own Ed25519 key (ssh-keygen -Y sign); a
# restore verifies them with that host's public key from the inventory before it downloads or
# decrypts anything.


def sign_manifest(body, key_file, ssh_keygen="ssh-keygen"):
    """The SSH signature (armored text, bytes) of ``body`` made with the private key in ``key_file``."""
    if not os.path.isfile(key_file):
        raise BackupError("there is no signing key at %s: the livekit_backup role installs it from "
                          "livekit_backup_signing_key; nothing was uploaded" % key_file)
    proc = subprocess.run([ssh_keygen, "-Y", "sign", "-f", key_file, "-n", SIGNATURE_NAMESPACE], input=body,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0 or b"BEGIN SSH SIGNATURE" not in proc.stdout:
        raise BackupError("ssh-keygen could not sign the manifest with %s: %s"
                          % (key_file, proc.stderr.decode(errors="replace").strip()))
    return proc.stdout


def public_key_problem(public_key):
    """Why ``public_key`` is not an OpenSSH Ed25519 public key line, or None."""
    fields = (public_key or "").split()
    if len(fields) < 2 or fields[0] != "ssh-ed25519":
        return "it is not an OpenSSH Ed25519 public key (ssh-ed25519 AAAA...)"
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (ValueError, TypeError):
        return "its key is not base64"
    if blob[:15] != b"\x00\x00\x00\x0bssh-ed25519" or len(blob) != 51:
        return "its key is not an Ed25519 key"
    return None


def verify_manifest(body, signature, public_key, what, ssh_keygen="ssh-keygen"):
    """Raise BackupError (naming ``what``) unless ``signature`` is a valid signature of ``body``
    by ``public_key`` in the backup namespace."""
    if signature is None:
        raise BackupError("%s is not signed (no %s next to its manifest); refusing it" % (what, SIGNATURE_NAME))
    problem = public_key_problem(public_key)
    if problem:
        raise BackupError("cannot check the signature of %s: the public key given is not usable (%s)" % (what, problem))
    scratch = tempfile.mkdtemp(prefix="livekit-verify-")
    try:
        allowed = os.path.join(scratch, "allowed_signers")
        with open(allowed, "w") as handle:
            handle.write('%s namespaces="%s" %s\n' % (SIGNER, SIGNATURE_NAMESPACE, " ".join(public_key.split()[:2])))
        sig = os.path.join(scratch, "manifest.sig")
        with open(sig, "wb") as handle:
            handle.write(signature)
        proc = subprocess.run([ssh_keygen, "-Y", "verify", "-f", allowed, "-I", SIGNER, "-n", SIGNATURE_NAMESPACE,
                               "-s", sig], input=body, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        reason = (proc.stderr + proc.stdout).decode(errors="replace").strip().splitlines()
        raise BackupError("the signature of %s does not verify with the host's public key from the inventory (%s); "
                          "it was not made by that host's signing key, or the manifest was changed: refusing it"
                          % (what, reason[-1] if reason else "ssh-keygen exit %d" % proc.returncode))


# ---------------------------------------------------------------------------------------------
# S3


def s3_client(endpoint_url=None, region=None, access_key=None, secret_key=None,
              connect_timeout=10, read_timeout=60, retries=3, verify=True):
    if not HAS_BOTO3:
        raise BackupError("boto3 is not installed on this host (Debian: python3-boto3)")
    config = BotoConfig(connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries=dict(max_attempts=retries, mode="standard"),
                        s3=dict(addressing_style="path"), signature_version="s3v4")
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or "us-east-1",
                        aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
                        config=config, verify=verify)


def describe_s3_error(err):
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return "%s: %s" % (error.get("Code", "error"), error.get("Message", str(err)))
    return str(err)


class Store:
    """One host's backups in a bucket."""

    def __init__(self, client, bucket, prefix, host):
        self.client, self.bucket = client, bucket
        self.base = "/".join(part.strip("/") for part in (prefix, host) if part.strip("/"))

    def key(self, *parts):
        return "/".join((self.base,) + parts)

    def put_json(self, key, doc, extra=None):
        return self.put_body(key, json.dumps(doc, indent=1, sort_keys=True).encode(), extra)

    def put_body(self, key, body, extra=None):
        """Write ``body`` to ``key`` and read it back; returns its SHA-256."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json" if key.endswith(".json") else "text/plain",
                               ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),
                               **(extra or {}))
        back = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        if hashlib.sha256(back).hexdigest() != digest:
            raise BackupError("s3://%s/%s reads back different from what was written" % (self.bucket, key))
        return digest

    def get_json(self, key):
        body = self.get_bytes(key)
        return None if body is None else json.loads(body)

    def get_bytes(self, key):
        """The object's bytes, or None when there is no such object."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def upload(self, path, key, part_size, extra=None):
        """Upload ``path`` with per-part MD5 and SHA-256 checks (multipart above one part), then
        check the stored object's size and ETag against what was sent. Returns upload facts."""
        size = os.path.getsize(path)
        extra = dict(extra or {})
        if size <= part_size:
            with open(path, "rb") as handle:
                body = handle.read()
            md5 = hashlib.md5(body).digest()
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                   ContentMD5=base64.b64encode(md5).decode(),
                                   ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
                                   **extra)
            expected_etag, parts = md5.hex(), 1
        else:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)["UploadId"]

            def send(number, offset):
                # Each worker reads its own part, so at most UPLOAD_WORKERS parts are in memory.
                body = os.pread(fd, min(part_size, size - offset), offset)
                md5 = hashlib.md5(body).digest()
                reply = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                    ContentMD5=base64.b64encode(md5).decode())
                return md5, dict(PartNumber=number, ETag=reply["ETag"])

            fd = os.open(path, os.O_RDONLY)
            try:
                with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
                    sent = [future.result() for future in
                            [pool.submit(send, number, offset)
                             for number, offset in enumerate(range(0, size, part_size), 1)]]
                md5s = [item[0] for item in sent]
                self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                      MultipartUpload=dict(Parts=[item[1] for item in sent]))
            except BaseException:
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except (BotoCoreError, ClientError):
                    pass  # retention aborts stale uploads later
                raise
            finally:
                os.close(fd)
            expected_etag = "%s-%d" % (hashlib.md5(b"".join(md5s)).hexdigest(), len(md5s))
            parts = len(md5s)
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        etag = head.get("ETag", "").strip('"')
        if head.get("ContentLength") != size:
            raise BackupError("s3://%s/%s holds %s bytes, %d were sent" % (self.bucket, key, head.get("ContentLength"), size))
        # With SSE-KMS the ETag is not an MD5; the per-part checksums then stand alone.
        kms = head.get("ServerSideEncryption") == "aws:kms"
        if not kms and etag != expected_etag:
            raise BackupError("s3://%s/%s has ETag %s, expected %s" % (self.bucket, key, etag, expected_etag))
        return dict(size=size, etag=etag, parts=parts, part_size=part_size)

    def download(self, key, path):
        digest = hashlib.sha256()
        size = 0
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        with open(path, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            for block in iter(lambda: body.read(READ_SIZE), b""):
                digest.update(block)
                size += len(block)
                handle.write(block)
        return dict(size=size, sha256=digest.hexdigest())

    def backup_ids(self):
        """Ids that have an object under them, newest first, and which of those have a manifest."""
        ids, good = set(), set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base + "/"):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(self.base) + 1:]
                if "/" not in rest:
                    continue
                backup_id, name = rest.split("/", 1)
                if id_time(backup_id) is None:
                    continue
                ids.add(backup_id)
                if name == MANIFEST_NAME:
                    good.add(backup_id)
        return sorted(ids, reverse=True), good

    def delete_backup(self, backup_id):
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(backup_id) + "/"):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        # Manifest first: a half-deleted backup must never look good.
        keys.sort(key=lambda k: not k.endswith("/" + MANIFEST_NAME))
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return keys

    def abort_stale_uploads(self, older_than, now):
        aborted = []
        reply = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.base + "/")
        for upload in reply.get("Uploads", []):
            started = upload["Initiated"]
            if isinstance(started, datetime.datetime):
                started = calendar.timegm(started.utctimetuple())
            if now - started > older_than:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(upload["Key"])
        return aborted


# ---------------------------------------------------------------------------------------------
# Retention


# Seconds after which a backup that never got its manifest is treated as abandoned.
INCOMPLETE_GRACE = 86400


def select_prune(good_ids, all_ids, latest_id, keep_last, keep_daily, keep_monthly, now=None,
                 incomplete_grace=INCOMPLETE_GRACE):
    """Which backups to delete. Keeps the ``keep_last`` newest good backups, the newest good
    backup of each of the ``keep_daily`` most recent days and ``keep_monthly`` most recent months
    that have one, and always the newest good backup and the one "latest" points to. Incomplete
    backups (no manifest) go once they are older than ``incomplete_grace`` seconds and a newer good
    backup exists; a run in progress is never touched."""
    now = time.time() if now is None else now
    good = sorted(good_ids, reverse=True)
    keep = set(good[:max(keep_last, 1)])
    if latest_id:
        keep.add(latest_id)
    for length, count in ((8, keep_daily), (6, keep_monthly)):
        seen = []
        for backup_id in good:
            bucket = backup_id[:length]
            if bucket not in seen:
                seen.append(bucket)
                if len(seen) > count:
                    break
                keep.add(backup_id)
    prune = [backup_id for backup_id in good if backup_id not in keep]
    newest_good = good[0] if good else None
    for backup_id in all_ids:
        if backup_id in good_ids or backup_id == latest_id:
            continue
        started = id_time(backup_id)
        if newest_good and backup_id < newest_good and started is not None and now - started > incomplete_grace:
            prune.append(backup_id)
    return sorted(prune)


# ---------------------------------------------------------------------------------------------
# The backup run


def write_status(status_file, textfile, result, success, now):
    """Record this run for monitoring: a JSON status file and, optionally, a node-exporter
    textfile with the last success time."""
    status = read_json(status_file)
    if result.get("skipped"):
        status.update(last_skipped=now, last_skip_reason=result.get("msg"))
    else:
        status.update(last_attempt=now, last_attempt_ok=success)
    if success:
        status.update(last_success=now, last_id=result.get("id"), last_size=result.get("archive_size"),
                      last_duration=result.get("duration"))
    elif not result.get("skipped"):
        status["last_error"] = result.get("msg")
    atomic_write(status_file, json.dumps(status, indent=1, sort_keys=True).encode(), 0o644)
    if textfile:
        lines = [
            "# HELP livekit_backup_last_success_timestamp_seconds When the last verified backup finished.",
            "# TYPE livekit_backup_last_success_timestamp_seconds gauge",
            "livekit_backup_last_success_timestamp_seconds %d" % status.get("last_success", 0),
            "# HELP livekit_backup_last_attempt_ok Whether the last backup run succeeded (1) or failed (0).",
            "# TYPE livekit_backup_last_attempt_ok gauge",
            # A skip is not an attempt: before any real run there is no failure to report.
            "livekit_backup_last_attempt_ok %d" % (1 if status.get("last_attempt_ok", success or result.get("skipped"))
                                                   else 0),
            "# HELP livekit_backup_last_size_bytes Size of the last verified encrypted archive.",
            "# TYPE livekit_backup_last_size_bytes gauge",
            "livekit_backup_last_size_bytes %d" % (status.get("last_size") or 0),
            "# HELP livekit_backup_last_duration_seconds How long the last verified backup took.",
            "# TYPE livekit_backup_last_duration_seconds gauge",
            "livekit_backup_last_duration_seconds %.3f" % (status.get("last_duration") or 0),
        ]
        atomic_write(textfile, ("\n".join(lines) + "\n").encode(), 0o644)
    return status


def run_backup(cfg, store=None, now=None, clock=time.monotonic):
    """One backup, end to end. ``cfg`` is the dict the module and the CLI share (REQUIRED keys, and
    any of DEFAULTS). Raises BackupError with what was left behind; returns the result otherwise."""
    cfg = dict(DEFAULTS, **{k: v for k, v in cfg.items() if v is not None})
    missing = [key for key in REQUIRED if key not in cfg]
    if missing:
        raise BackupError("the backup configuration has no %s; nothing was done (the livekit_backup role writes "
                          "every setting to its config file: rerun site.yml or the role)" % ", ".join(missing))
    if not os.path.isfile(cfg["signing_key"]):
        raise BackupError("there is no signing key at %s: the livekit_backup role installs it from "
                          "livekit_backup_signing_key (rerun site.yml); nothing was done" % cfg["signing_key"])
    started = clock()
    now = time.time() if now is None else now
    backup_id = utc_id(now)
    result = dict(id=backup_id, host=cfg["host"])
    with Lock(cfg["lock_file"], cfg["lock_timeout"]):
        pending = restore_marker(cfg.get("restore_marker"))
        if pending is not None:
            raise Busy("%s is in progress or was interrupted (%s): no backup was taken, so a half-restored "
                       "state is never uploaded as the newest backup. Finish or revert the restore (see "
                       "docs/backup-restore.md)" % (describe_restore(pending), cfg["restore_marker"]))
        spool = cfg["spool_dir"]
        os.makedirs(spool, 0o700, exist_ok=True)
        os.chmod(spool, 0o700)
        work = tempfile.mkdtemp(prefix="run-%s-" % backup_id, dir=spool)
        archive = os.path.join(spool, "%s-%s.tar.gz.age" % (cfg["host"], backup_id))
        untouched = "nothing was uploaded and 'latest' still points to the previous backup"
        try:
            staging = {}
            redis_facts = None
            if cfg["redis"]:
                redis_cfg = cfg["redis"]
                redis = Redis(redis_cfg["host"], int(redis_cfg["port"]),
                              redis_cfg.get("password") or "", unix_socket=redis_cfg.get("socket"))
                try:
                    redis_facts = redis_snapshot(redis, redis_cfg["dir"],
                                                 os.path.join(work, "redis"), cfg["redis_timeout"])
                except (BackupError, OSError) as err:
                    raise BackupError("taking Redis's snapshot failed (%s); %s" % (err, untouched))
                staging["redis"] = os.path.join(work, "redis")
            files = expand_paths(cfg["paths"])
            inner = dict(format=FORMAT, id=backup_id, host=cfg["host"], created=iso(now),
                         created_ts=int(now), paths=cfg["paths"], redis=redis_facts,
                         livekit_version=cfg.get("livekit_version"))
            try:
                members = build_archive(archive, cfg["recipients"], staging, files, inner, cfg["age"])
            except (BackupError, OSError) as err:
                _remove(archive)
                raise BackupError("packing the encrypted archive in %s failed (%s); %s" % (spool, err, untouched))
            result.update(archive=archive, archive_size=os.path.getsize(archive),
                          archive_sha256=sha256_file(archive), members=len(members),
                          redis=redis_facts, packed_seconds=round(clock() - started, 3))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        manifest = dict(format=FORMAT, id=backup_id, host=cfg["host"], created=iso(now), created_ts=int(now),
                        livekit_version=cfg.get("livekit_version"), redis=redis_facts,
                        recipients=cfg["recipients"], paths=cfg["paths"],
                        members=[m["path"] for m in members],
                        archive=dict(key=None, size=result["archive_size"], sha256=result["archive_sha256"]))
        try:
            store = store or Store(s3_client(**cfg["s3"]), cfg["bucket"], cfg["prefix"], cfg["host"])
            upload_started = clock()
            archive_key = store.key(backup_id, ARCHIVE_NAME)
            extra = {}
            if cfg.get("sse"):
                extra["ServerSideEncryption"] = cfg["sse"]
                if cfg.get("sse_kms_key_id"):
                    extra["SSEKMSKeyId"] = cfg["sse_kms_key_id"]
            uploaded = store.upload(archive, archive_key, cfg["part_size"], extra)
            result["upload_seconds"] = round(clock() - upload_started, 3)
            manifest["archive"].update(key=archive_key, etag=uploaded["etag"], parts=uploaded["parts"])
            manifest_key = store.key(backup_id, MANIFEST_NAME)
            body = json.dumps(manifest, indent=1, sort_keys=True).encode()
            # The signature goes up first: a manifest is never there without it.
            store.put_body(store.key(backup_id, SIGNATURE_NAME),
                           sign_manifest(body, cfg["signing_key"], cfg.get("ssh_keygen") or "ssh-keygen"), extra)
            manifest_sha = store.put_body(manifest_key, body, extra)
            latest = dict(id=backup_id, manifest=manifest_key, manifest_sha256=manifest_sha,
                          created=manifest["created"], created_ts=manifest["created_ts"])
            store.put_json(store.key(LATEST_NAME), latest, extra)
        except (BotoCoreError, ClientError, OSError) as err:
            raise BackupError("upload to s3://%s/%s failed (%s); the encrypted archive is kept at %s "
                              "and 'latest' still points to the previous backup"
                              % (cfg["bucket"], store.key(backup_id) if store else cfg["prefix"],
                                 describe_s3_error(err), archive))
        except BackupError as err:
            raise BackupError("%s; the encrypted archive is kept at %s and 'latest' still points to the "
                              "previous backup" % (err, archive))
        result.update(manifest_key=manifest_key, archive_key=archive_key, latest=latest,
                      parts=uploaded["parts"], etag=uploaded["etag"])
        if not cfg["keep_local"]:
            os.unlink(archive)
            result["archive"] = None
        prune_local(spool, cfg["host"], keep=cfg["local_keep"], current=archive)
        try:
            result["pruned"] = prune(store, backup_id, cfg, now)
        except (BotoCoreError, ClientError) as err:
            result["pruned"] = []
            result["prune_error"] = describe_s3_error(err)
    result["duration"] = round(clock() - started, 3)
    return result


def run_and_record(cfg, status_file, textfile=None):
    """run_backup, then record the outcome for monitoring. Returns (ok, result); on failure the
    result's msg says what failed and what was left behind. A run skipped on purpose (another run
    holds the lock, a restore is in progress) has ``skipped`` set and is recorded as a skip, not a
    failure."""
    try:
        result = run_backup(cfg)
        ok = True
    except Busy as err:
        result, ok = dict(msg=str(err), id=None, skipped=True), False
    except (BackupError, OSError) as err:
        result, ok = dict(msg=str(err), id=None), False
    write_status(status_file, textfile, result, ok, time.time())
    return ok, result


def prune(store, latest_id, cfg, now):
    all_ids, good = store.backup_ids()
    doomed = select_prune(good, all_ids, latest_id, cfg["keep_last"], cfg["keep_daily"],
                          cfg["keep_monthly"], now, cfg["incomplete_grace"])
    for backup_id in doomed:
        store.delete_backup(backup_id)
    store.abort_stale_uploads(cfg["incomplete_grace"], now)
    return doomed


def prune_local(spool, host, keep, current):
    """Keep only the newest ``keep`` archives that failed to upload (plus the current one)."""
    mine = sorted((name for name in os.listdir(spool)
                   if name.startswith(host + "-") and name.endswith(".tar.gz.age")), reverse=True)
    for name in mine[keep:]:
        path = os.path.join(spool, name)
        if path != current:
            os.unlink(path)


# The settings a caller must give run_backup. Their defaults are declared once per interface: the
# livekit_backup module's options (plugins/modules/livekit_backup.py) and, for the timer's config
# file, the livekit_backup role's defaults/main.yml. They are not repeated here.
REQUIRED = ("host", "paths", "recipients", "bucket", "prefix", "s3", "part_size", "spool_dir", "lock_file",
            "lock_timeout", "keep_last", "keep_daily", "keep_monthly", "signing_key")

# Settings of this library alone (neither the module nor the role exposes them), and the optional
# settings whose absence (or null) means "none".
DEFAULTS = dict(
    redis=None,
    redis_timeout=600,
    age="age",
    sse=None,
    sse_kms_key_id=None,
    keep_local=False,
    local_keep=2,
    incomplete_grace=INCOMPLETE_GRACE,
    livekit_version=None,
    restore_marker=None,
    ssh_keygen="ssh-keygen",
)


# ---------------------------------------------------------------------------------------------
# Reading backups back


def find_backup(store, backup_id="latest", public_key=None, ssh_keygen="ssh-keygen", warn=None):
    """The manifest of ``backup_id``, its signature verified with ``public_key`` (the host's, from
    the inventory) before anything else is read. The manifest must name the host and id it is filed
    under. "latest" is the newest backup whose manifest verifies: latest.json is not signed, so it
    is never trusted to choose (a host's S3 key could point it at an older backup). Newer backups
    whose manifests do not verify are skipped and reported through ``warn``."""
    if backup_id not in (None, "", "latest"):
        return _verified_manifest(store, backup_id, public_key, ssh_keygen)
    ids, complete = store.backup_ids()
    refused = []
    for candidate in (i for i in ids if i in complete):
        try:
            manifest = _verified_manifest(store, candidate, public_key, ssh_keygen)
        except BackupError as err:
            refused.append(str(err))
            continue
        if refused and warn:
            warn("newer backups of %s were skipped: %s" % (store.base, "; ".join(refused)))
        pointer = store.get_json(store.key(LATEST_NAME)) or {}
        if warn and pointer.get("id") not in (None, candidate) and not refused:
            warn("%s names backup %s, but the newest backup whose signature verifies is %s; using %s"
                 % (store.key(LATEST_NAME), pointer.get("id"), candidate, candidate))
        return manifest
    if refused:
        raise BackupError("no backup of %s verifies with the host's public key: %s" % (store.base, "; ".join(refused)))
    raise BackupError("there is no complete backup of %s yet (nothing with a manifest under %s/)"
                      % (store.base, store.base))


def _verified_manifest(store, backup_id, public_key, ssh_keygen):
    what = "backup %s of %s" % (backup_id, store.base)
    body = store.get_bytes(store.key(backup_id, MANIFEST_NAME))
    if body is None:
        raise BackupError("%s has no manifest: it never completed, or does not exist" % what)
    verify_manifest(body, store.get_bytes(store.key(backup_id, SIGNATURE_NAME)), public_key, what, ssh_keygen)
    try:
        manifest = json.loads(body)
    except ValueError:
        raise BackupError("the manifest of %s is not JSON; refusing it" % what)
    if manifest.get("id") != backup_id or store.base.split("/")[-1] != manifest.get("host"):
        raise BackupError("%s: its signed manifest says it is backup %s of %s; refusing it"
                          % (what, manifest.get("id"), manifest.get("host")))
    if not str(manifest.get("archive", {}).get("key", "")).startswith(store.key(backup_id) + "/"):
        raise BackupError("%s: its manifest points to an archive outside it; refusing it" % what)
    return manifest


def fetch_backup(store, manifest, identity, dest, age="age", policy=None):
    """Download the archive of ``manifest`` (verified by find_backup) into ``dest``, check size and
    SHA-256 against the manifest, decrypt and unpack it (every member checked with ``policy``), and
    check every member's checksum. Nothing outside ``dest`` changes."""
    what = "backup %s of %s" % (manifest["id"], manifest["host"])
    os.makedirs(dest, 0o700, exist_ok=True)
    archive = os.path.join(dest, ARCHIVE_NAME)
    got = store.download(manifest["archive"]["key"], archive)
    want = manifest["archive"]
    if got["size"] != want["size"] or got["sha256"] != want["sha256"]:
        raise BackupError("the archive of %s does not match its manifest (size %d vs %d, sha256 %s vs %s); "
                          "refusing to restore it" % (what, got["size"], want["size"],
                                                      got["sha256"][:16], want["sha256"][:16]))
    unpacked = os.path.join(dest, "unpacked")
    if os.path.isdir(unpacked):
        shutil.rmtree(unpacked)
    try:
        inner = decrypt_archive(archive, identity, unpacked, age, policy)
    except BackupError as err:
        raise BackupError("%s refused: %s" % (what, err))
    if inner.get("id") != manifest["id"] or inner.get("host") != manifest["host"]:
        raise BackupError("the archive says it is backup %s of %s, the manifest says %s of %s"
                          % (inner.get("id"), inner.get("host"), manifest["id"], manifest["host"]))
    os.unlink(archive)
    return dict(unpacked=unpacked, inner=inner)


# ---------------------------------------------------------------------------------------------
# Putting a fetched backup in place, reversibly
#
# Every step that touches live data is a rename(2) inside the target's own directory (so on its
# filesystem), followed by an fsync of that directory. The restored copy is staged next to each
# target first (``.<name>.livekit-restore-new``), the live copy is renamed aside next to it
# (``.<name>.livekit-restore-old``) and the staged copy renamed into place. A journal, written
# (and fsynced) before the first rename, names every target; revert_restore reads only the journal
# and what exists on disk, so it puts the live data back exactly after a crash at any point, and
# it never deletes the live copy: it only ever removes what it can prove is the restored one.


JOURNAL = "journal.json"
STAGE_SUFFIX = ".livekit-restore-new"
ASIDE_SUFFIX = ".livekit-restore-old"
DISCARD_SUFFIX = ".livekit-restore-discard"


def sibling(target, suffix):
    """A hidden name next to ``target``: same directory, so the same filesystem."""
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, "." + name + suffix)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename(src, dst):
    """rename(2), then fsync the directory so the new name survives a crash."""
    os.rename(src, dst)
    fsync_dir(os.path.dirname(dst))
    if os.path.dirname(src) != os.path.dirname(dst):
        fsync_dir(os.path.dirname(src))


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _write_journal(journal_dir, journal):
    atomic_write(os.path.join(journal_dir, JOURNAL), json.dumps(journal, indent=1).encode(), 0o600)
    fsync_dir(journal_dir)


def read_journal(journal_dir):
    path = os.path.join(journal_dir, JOURNAL)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def restore_targets(paths):
    """The absolute, normalised ``paths`` without those inside another one of them."""
    targets = sorted({os.path.normpath(os.path.abspath(path)) for path in paths})
    return [t for t in targets if not any(t != o and t.startswith(o.rstrip("/") + "/") for o in targets)]


def restore_plan(unpacked, paths, redis_dir=None, redis_names=REDIS_NAMES):
    """(restored copy in ``unpacked`` or None, target on this host) pairs. The targets are the
    ``paths`` and the Redis files the caller names (from the inventory), never what the archive
    says. A path the archive has no copy of is left alone; when the archive holds Redis data, a
    Redis file it lacks (say, the AOF of a Redis that had none) is moved aside with nothing in its
    place, so Redis starts on the restored data alone."""
    plan = []
    for target in restore_targets(paths):
        source = os.path.join(unpacked, "files" + target)
        if os.path.lexists(source):
            plan.append((source, target))
    redis_backup = os.path.join(unpacked, "redis")
    if redis_dir and os.path.isdir(redis_backup):
        for name in redis_names:
            source = os.path.join(redis_backup, name)
            target = os.path.join(os.path.abspath(redis_dir), name)
            if os.path.lexists(source):
                plan.append((source, target))
            elif os.path.lexists(target):
                plan.append((None, target))
    return plan


def _copy_tree(source, dest):
    """Copy ``source`` to ``dest`` keeping modes and owners, every file and directory fsynced."""
    info = os.lstat(source)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), dest)
        os.lchown(dest, info.st_uid, info.st_gid)
        return
    if os.path.isdir(source):
        os.mkdir(dest, 0o700)
        for name in sorted(os.listdir(source)):
            _copy_tree(os.path.join(source, name), os.path.join(dest, name))
    else:
        shutil.copyfile(source, dest)
        with open(dest, "rb+") as handle:
            os.fsync(handle.fileno())
    os.chown(dest, info.st_uid, info.st_gid)
    os.chmod(dest, info.st_mode & 0o7777)
    if os.path.isdir(dest):
        fsync_dir(dest)


def _stage(source, stage, ids):
    """Put the restored copy at ``stage`` (next to its target): a rename when the work directory
    is on the same filesystem, a copy otherwise. Then give it ``ids`` (uid, gid) if set."""
    try:
        os.rename(source, stage)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        _copy_tree(source, stage)
    if ids:
        _chown_tree(stage, *ids)
    fsync_dir(os.path.dirname(stage))


def _keep_live(steps, keep_live):
    """Copy each live file of ``keep_live`` into the staged copy of the target that holds it, so the
    swap keeps what this host's inventory made (livekit.yaml names this host's addresses; the backup's
    names those of the host it came from). Only staged copies change: nothing live does."""
    for path in keep_live or []:
        path = os.path.abspath(path)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        for step in steps:
            top = step["target"].rstrip("/") + "/"
            if step["restored"] and path.startswith(top) and os.path.isdir(step["stage"]):
                staged = os.path.join(step["stage"], path[len(top):])
                if os.path.isdir(os.path.dirname(staged)):
                    info = os.stat(path)
                    shutil.copyfile(path, staged + ".live")
                    os.chown(staged + ".live", info.st_uid, info.st_gid)
                    os.chmod(staged + ".live", info.st_mode & 0o7777)
                    with open(staged + ".live", "rb+") as handle:
                        os.fsync(handle.fileno())
                    os.rename(staged + ".live", staged)
                    fsync_dir(os.path.dirname(staged))


def apply_restore(plan, journal_dir, owner=None, pause=0, sleep=time.sleep, keep_live=None):
    """Swap the restored copies in and the live copies aside (see above). ``owner`` maps a target
    to the (uid, gid) to give its restored copy (Redis data). ``pause`` seconds are waited after
    each rename (fault-injection drills kill the restore there). ``keep_live`` lists files inside
    the targets whose live version replaces the backup's (_keep_live). Returns the targets."""
    if read_journal(journal_dir) is not None:
        raise BackupError("%s holds an earlier restore that was neither committed nor reverted; "
                          "revert or commit it first" % os.path.join(journal_dir, JOURNAL))
    for source, target in plan:
        if source is not None and not os.path.lexists(source):
            raise BackupError("restored copy %s is missing; nothing was changed" % source)
        for suffix in (STAGE_SUFFIX, ASIDE_SUFFIX, DISCARD_SUFFIX):
            if os.path.lexists(sibling(target, suffix)):
                raise BackupError("%s is in the way (left by an earlier restore?); nothing was changed: "
                                  "look at it and move it away" % sibling(target, suffix))
    os.makedirs(journal_dir, 0o700, exist_ok=True)
    steps = [dict(target=target, stage=sibling(target, STAGE_SUFFIX), aside=sibling(target, ASIDE_SUFFIX),
                  discard=sibling(target, DISCARD_SUFFIX), existed=os.path.lexists(target),
                  restored=source is not None)
             for source, target in plan]
    journal = dict(state="applying", steps=steps)
    _write_journal(journal_dir, journal)
    for (source, target), step in zip(plan, steps):
        if source is not None:
            parent = os.path.dirname(target)
            if not os.path.isdir(parent):
                os.makedirs(parent, 0o755)
            _stage(source, step["stage"], (owner or {}).get(target))
    _keep_live(steps, keep_live)
    for step in steps:
        if step["existed"]:
            _rename(step["target"], step["aside"])
            if pause:
                sleep(pause)
        if step["restored"]:
            _rename(step["stage"], step["target"])
            if pause:
                sleep(pause)
    journal["state"] = "applied"
    _write_journal(journal_dir, journal)
    return [step["target"] for step in steps]


def _chown_tree(path, uid, gid):
    os.lchown(path, uid, gid)
    for root, dirs, names in os.walk(path):
        for name in dirs + names:
            os.lchown(os.path.join(root, name), uid, gid)


def revert_restore(journal_dir):
    """Put back what apply_restore moved aside, from whatever point it stopped at; returns the
    targets put back. Safe to repeat, and safe to interrupt and run again."""
    journal = read_journal(journal_dir)
    if journal is None:
        return []
    if journal.get("state") == "committing":
        raise BackupError("the restore journalled in %s was being committed when it stopped: the live copies "
                          "are partly gone, so it cannot be reverted; finish it with state=committed"
                          % os.path.join(journal_dir, JOURNAL))
    reverted = []
    for step in reversed(journal["steps"]):
        target, aside, discard = step["target"], step["aside"], step["discard"]
        _remove(discard)  # only ever holds a restored copy
        if step["existed"]:
            # The aside name exists only once the live copy was renamed to it; the target is then
            # absent or the restored copy.
            if os.path.lexists(aside):
                if os.path.lexists(target):
                    _rename(target, discard)
                _rename(aside, target)
                reverted.append(target)
        elif os.path.lexists(target):
            # Nothing was there before the restore: what is there now is the restored copy.
            _rename(target, discard)
            reverted.append(target)
        _remove(discard)
        _remove(step["stage"])
    os.unlink(os.path.join(journal_dir, JOURNAL))
    fsync_dir(journal_dir)
    shutil.rmtree(journal_dir, ignore_errors=True)
    return reverted


def commit_restore(journal_dir):
    """Drop the live copies apply_restore kept aside; the restored state stays. Safe to repeat."""
    journal = read_journal(journal_dir)
    if journal is None:
        return False
    if journal.get("state") not in ("applied", "committing"):
        raise BackupError("the restore journalled in %s did not finish putting the backup in place (state %s); "
                          "revert it, do not commit it" % (os.path.join(journal_dir, JOURNAL), journal.get("state")))
    journal["state"] = "committing"
    _write_journal(journal_dir, journal)
    for step in journal["steps"]:
        for path in (step["aside"], step["stage"], step["discard"]):
            _remove(path)
    os.unlink(os.path.join(journal_dir, JOURNAL))
    shutil.rmtree(journal_dir, ignore_errors=True)
    return True


# ---------------------------------------------------------------------------------------------
# One restore at a time, and no backup of a half-restored host


class Busy(BackupError):
    """Another run holds the lock, or a restore is in progress: nothing was done, on purpose."""


def restore_marker(marker):
    """What the restore-in-progress marker says, or None when no restore is in progress."""
    if not marker or not os.path.lexists(marker):
        return None
    return read_json(marker) or dict(started="?", backup="?", source="?")


def describe_restore(pending):
    return "a restore of backup %s of %s started at %s" % (
        pending.get("backup"), pending.get("source"), pending.get("started"))


def begin_restore(marker, lock_file, lock_timeout, info):
    """Mark a restore as in progress (under the backup lock). Refuses when one already is."""
    with Lock(lock_file, lock_timeout):
        pending = restore_marker(marker)
        if pending is not None:
            raise Busy("%s is in progress or was interrupted (%s); refusing to start another. If no restore is "
                       "running, put the live data back with restore.yml -e livekit_backup_restore_recover=true"
                       % (describe_restore(pending), marker))
        atomic_write(marker, json.dumps(dict(info, started=iso(time.time()))).encode(), 0o644)
        fsync_dir(os.path.dirname(marker))


def end_restore(marker):
    if marker and os.path.lexists(marker):
        os.unlink(marker)
        fsync_dir(os.path.dirname(marker))
        return True
    return False


def s3_argument_spec():
    """Argument spec of the options in the ``selfhosted.livekit.livekit_s3`` doc fragment."""
    return dict(
        bucket=dict(type="str", required=True),
        prefix=dict(type="str", default="livekit"),
        endpoint_url=dict(type="str"),
        region=dict(type="str", default="us-east-1"),
        access_key=dict(type="str", no_log=True),
        secret_key=dict(type="str", no_log=True),
        validate_certs=dict(type="bool", default=True),
        ca_bundle=dict(type="path"),
    )


def s3_settings(params):
    """The s3_client keyword arguments from module parameters."""
    verify = params.get("ca_bundle") or bool(params.get("validate_certs", True))
    return dict(endpoint_url=params.get("endpoint_url"), region=params.get("region"),
                access_key=params.get("access_key"), secret_key=params.get("secret_key"), verify=verify)
