"""Runs inside a Redis test host (fed on stdin by bench/redis_aof_loss.sh): writes INCRs as fast as
one client can, kill -9's redis-server mid-stream, waits for systemd to restart it, and reports
how many acknowledged writes the AOF (appendfsync everysec) lost, and how many seconds of writes
that is. Bounded: TRIALS trials of WRITE_SECONDS each."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

TRIALS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
WRITE_SECONDS = 3.0
PASSWORD = re.search(r"^requirepass\s+(\S+)", open("/etc/redis/redis.conf").read(), re.M).group(1)


def connect():
    sock = socket.create_connection(("127.0.0.1", 6379), timeout=2)
    sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(PASSWORD), PASSWORD.encode()))
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"+OK")
    return sock, reader


def command(sock, reader, *args):
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    line = reader.readline()
    if not line:
        raise ConnectionError("closed")
    if line.startswith(b"-"):
        raise ConnectionError(line.decode().strip())  # e.g. LOADING while the AOF is replayed
    if line.startswith(b"$"):  # bulk string: length line, then the data
        size = int(line[1:-2])
        return None if size < 0 else reader.read(size + 2)[:-2]
    return line[1:-2]


def main_pid():
    return int(subprocess.check_output(["systemctl", "show", "-p", "MainPID", "--value", "redis-server"]).strip())


results = []
for trial in range(TRIALS):
    key = b"bench:aof:%d:%d" % (os.getpid(), trial)
    sock, reader = connect()
    acked, acks = 0, []  # (value, time acknowledged)
    start = time.monotonic()
    while time.monotonic() - start < WRITE_SECONDS:
        acked = int(command(sock, reader, b"INCR", key))
        acks.append((acked, time.monotonic()))
    killed_at = time.monotonic()
    os.kill(main_pid(), signal.SIGKILL)
    sock.close()
    deadline = time.time() + 60
    while True:
        try:
            sock, reader = connect()
            value = command(sock, reader, b"GET", key)
            break
        except (OSError, ConnectionError, AssertionError):
            if time.time() > deadline:
                raise SystemExit("redis-server did not come back within 60 s")
            time.sleep(0.2)
    recovered = int(value or 0)
    lost = acked - recovered
    # How long before the kill the first lost write was acknowledged.
    window = killed_at - next((t for v, t in acks if v > recovered), killed_at)
    rate = len(acks) / WRITE_SECONDS
    results.append(dict(trial=trial, acknowledged=acked, recovered=recovered, lost_writes=lost,
                        lost_seconds=round(window, 3), writes_per_second=round(rate)))
    command(sock, reader, b"DEL", key)
    sock.close()
    time.sleep(1.5)
print(json.dumps(results))
