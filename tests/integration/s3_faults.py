"""A fault-injecting stand-in between the backup hosts and the real MinIO (test tool, not shipped).

Runs inside the S3 test host: listens on --listen, passes every connection through to --upstream
byte for byte, unless the JSON control file says otherwise when the connection arrives:

  {"mode": "pass"}                       pass through (also when the file is missing or unreadable)
  {"mode": "error", "count": 3}          answer the next 3 requests "500 Internal Server Error" with
                                         S3's InternalError body, then pass (count -1: every request)
  {"mode": "slow", "delay": 8}           wait 8 s before each answer starts, then pass

Every decision is appended to --log as one JSON line, so a test can show what the client met.
Bounded: it exits after --lifetime seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time

ERROR_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
              b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class Faults:
    def __init__(self, control: str, log: str):
        self.control, self.log, self.lock = control, log, threading.Lock()

    def decide(self) -> dict:
        with self.lock:
            try:
                with open(self.control, encoding="utf-8") as handle:
                    state = json.load(handle)
            except (OSError, ValueError):
                state = {"mode": "pass"}
            decision = dict(state)
            if state.get("mode") == "error":
                count = int(state.get("count", -1))
                if count == 0:
                    decision = {"mode": "pass"}
                elif count > 0:
                    state["count"] = count - 1
                    with open(self.control, "w", encoding="utf-8") as handle:
                        json.dump(state, handle)
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(dict(decision, at=round(time.time(), 3))) + "\n")
            return decision


def pipe(source: socket.socket, dest: socket.socket, delay: float = 0.0) -> None:
    first = True
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            if first and delay:
                time.sleep(delay)
            first = False
            dest.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, dest):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def read_head(client: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = client.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def serve(client: socket.socket, upstream: tuple[str, int], faults: Faults) -> None:
    decision = faults.decide()
    with client:
        if decision.get("mode") == "error":
            # Answer before the body (botocore sends "Expect: 100-continue" with uploads), as S3 does.
            read_head(client)
            client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(ERROR_BODY) + ERROR_BODY)
            return
        with socket.create_connection(upstream, timeout=30) as server:
            client.settimeout(None)
            server.settimeout(None)
            delay = float(decision.get("delay", 0)) if decision.get("mode") == "slow" else 0.0
            back = threading.Thread(target=pipe, args=(server, client, delay), daemon=True)
            back.start()
            pipe(client, server)
            back.join(timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of the real S3 endpoint")
    parser.add_argument("--control", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lifetime", type=float, default=1800)
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    faults = Faults(args.control, args.log)
    listener = socket.create_server(("0.0.0.0", args.listen), reuse_port=True)
    listener.settimeout(1)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            client, _address = listener.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(client, (host, int(port)), faults), daemon=True).start()


if __name__ == "__main__":
    main()
