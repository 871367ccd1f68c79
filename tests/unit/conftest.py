"""Shared fixtures: a fake LiveKit API server on loopback (unit tests only; integration tests
use the real server)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

SECRET = "s" * 40
KEY = "APIunit"


class FakeLiveKit(BaseHTTPRequestHandler):
    """Answers GET / like livekit-server and checks Bearer tokens like its auth middleware."""

    rooms: list = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, "OK") if self.path == "/" else self._send(404, "not found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        auth = self.headers.get("Authorization", "")
        try:
            claims = jwt.decode(auth.removeprefix("Bearer "), SECRET, algorithms=["HS256"], issuer=KEY)
        except jwt.PyJWTError as err:
            self._send(401, "invalid token: %s" % err)
            return
        method = self.path.rsplit("/", 1)[-1]
        if method == "ListRooms" and claims["video"].get("roomList"):
            self._send(200, json.dumps({"rooms": self.rooms}), "application/json")
        elif method == "CreateRoom" and claims["video"].get("roomCreate"):
            self._send(200, json.dumps({"name": body["name"], "num_participants": 0}), "application/json")
        else:
            self._send(403, json.dumps({"code": "permission_denied", "msg": "missing grant"}), "application/json")


@pytest.fixture
def fake_server():
    FakeLiveKit.rooms = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLiveKit)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1], FakeLiveKit
    server.shutdown()
    server.server_close()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("# managed\n%s: %s\n" % (KEY, SECRET))
    path.chmod(0o600)
    return str(path)


class Misbehaving(BaseHTTPRequestHandler):
    """Answers each request with the next behaviour of ``script`` (the last one repeats):
    ``("status", code, body)`` answers that status and body, ``"close"`` closes the connection
    without an answer, ``"truncate"`` promises a body it does not send, ``("hang", seconds)`` says
    nothing for that long."""

    script: list = []
    requests = 0

    def log_message(self, *args) -> None:
        pass

    def _behave(self) -> None:
        step = self.script[min(type(self).requests, len(self.script) - 1)]
        type(self).requests += 1
        if step == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if step == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"livekit_participant_total 3\n")
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if step[0] == "hang":
            time.sleep(step[1])
            self.close_connection = True
            return
        _kind, status, body = step
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _behave
    do_POST = _behave


@pytest.fixture
def misbehaving_server():
    """A real HTTP server on loopback that fails in the ways a busy or broken node can:
    ``start(script)`` returns its URL and handler class (``requests`` counts the calls)."""
    servers = []

    def start(script):
        handler = type("Scripted", (Misbehaving,), {"script": list(script), "requests": 0})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return "http://127.0.0.1:%d" % server.server_address[1], handler

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class FakeRedis:
    """A RESP server on a unix socket or loopback TCP that records the commands it gets, for the
    tests of the collection's Redis client (module_utils/livekit_backup.py): AUTH with the right
    password answers +OK, anything else before AUTH is refused, like requirepass. ``answer(args)``
    returns the reply to every other command (bytes); by default INFO server."""

    def __init__(self, family, address, password, answer=None):
        import socket
        self.password, self.commands = password, []
        self.answer = answer or self._info_server
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.address = self.sock.getsockname()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _info_server(args):
        info = b"# Server\r\nredis_version:7.0.15"
        return b"$%d\r\n%s\r\n" % (len(info), info)

    def _serve(self):
        while True:
            try:
                conn, dummy = self.sock.accept()
            except OSError:
                return
            with conn:
                reader, authed = conn.makefile("rb"), False
                while True:
                    line = reader.readline()
                    if not line:
                        break
                    args = []
                    for dummy in range(int(line[1:-2])):
                        size = int(reader.readline()[1:-2])
                        args.append(reader.read(size + 2)[:-2].decode())
                    self.commands.append(args)
                    if args[0] == "AUTH":
                        authed = args[1] == self.password
                        conn.sendall(b"+OK\r\n" if authed else b"-WRONGPASS invalid username-password pair\r\n")
                    elif not authed:
                        conn.sendall(b"-NOAUTH Authentication required.\r\n")
                    else:
                        conn.sendall(self.answer(args))

    def close(self):
        self.sock.close()
