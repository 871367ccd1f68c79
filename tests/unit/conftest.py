"""Shared fixtures: a fake LiveKit API server on loopback (unit tests only; integration tests
use the real server)."""

from __future__ import annotations

import json
import threading
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
