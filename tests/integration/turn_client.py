"""A small TURN client (RFC 5766 Allocate with long-term credentials) and LiveKit's TURN credentials.

livekit-server hands each participant TURN credentials it derives from an API key, with nothing
stored (pkg/service/turn.go in livekit-server 1.13.5, docs/blue-green.md F5):
  username = base62("<api key>|<participant id>|<expiry unix time>")
  password = base62(sha256("<api secret>|<participant id>|<expiry>"))
base62 being the variable-length 62-letter encoding of github.com/jxskiss/base62 (5 or 6 bits a
letter). Any instance holding the same key accepts the credentials another instance minted; the
blue-green tests prove it against the new slot's TURN through nginx's TURN/TLS route on 443.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import ssl
import struct

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
MAGIC_COOKIE = 0x2112A442
ALLOCATE = 0x0003
ALLOCATE_SUCCESS, ALLOCATE_ERROR = 0x0103, 0x0113
ATTR_USERNAME, ATTR_MESSAGE_INTEGRITY, ATTR_ERROR_CODE = 0x0006, 0x0008, 0x0009
ATTR_REALM, ATTR_NONCE, ATTR_XOR_RELAYED_ADDRESS, ATTR_REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0016, 0x0019
UDP = 17


def base62(data: bytes) -> str:
    """jxskiss/base62's encoding: 6 bits a letter, read from the end of the data; a value whose bits
    1-4 are all set (30, 31, 62, 63) takes only 5 bits, so every value fits in 62 letters."""
    position = len(data) * 8
    letters = []
    while position > 0:
        rem, index = position & 7, position >> 3
        if rem == 0:
            index, rem = index - 1, 8
        value = data[index] >> (8 - rem)
        if rem < 6 and index > 0:
            value |= (data[index - 1] << rem) & 0xFF
        value &= 0x3F
        width = 6
        if value & 0x1E == 0x1E:
            if position > 6 or value > 0x1F:
                width = 5
            value &= 0x1F
        letters.append(ALPHABET[value])
        position -= width
    return "".join(letters)


def livekit_credentials(key: str, secret: str, participant_id: str, expiry: int) -> tuple[str, str]:
    """(username, password) as livekit-server mints them for a participant."""
    username = base62(f"{key}|{participant_id}|{expiry}".encode())
    password = base62(hashlib.sha256(f"{secret}|{participant_id}|{expiry}".encode()).digest())
    return username, password


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def message(kind: int, transaction: bytes, attributes: bytes) -> bytes:
    return struct.pack("!HHI", kind, len(attributes), MAGIC_COOKIE) + transaction + attributes


def with_integrity(kind: int, transaction: bytes, attributes: bytes, key: bytes) -> bytes:
    """The message with MESSAGE-INTEGRITY (HMAC-SHA1 over the message, its length counting the attribute)."""
    head = struct.pack("!HHI", kind, len(attributes) + 24, MAGIC_COOKIE) + transaction + attributes
    return head + attribute(ATTR_MESSAGE_INTEGRITY, hmac.new(key, head, hashlib.sha1).digest())


def parse(data: bytes) -> tuple[int, dict[int, bytes]]:
    kind, _length, _cookie = struct.unpack("!HHI", data[:8])
    attributes, offset = {}, 20
    while offset + 4 <= len(data):
        name, size = struct.unpack("!HH", data[offset:offset + 4])
        attributes.setdefault(name, data[offset + 4:offset + 4 + size])
        offset += 4 + size + (-size % 4)
    return kind, attributes


def read_message(sock: socket.socket) -> bytes:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the TURN server closed the connection")
            data += chunk
        return data
    header = exactly(20)
    return header + exactly(struct.unpack("!H", header[2:4])[0])


def error_code(attributes: dict[int, bytes]) -> int | None:
    value = attributes.get(ATTR_ERROR_CODE)
    return value[2] * 100 + value[3] if value else None


def allocate_over_tls(ip: str, name: str, cafile: str, username: str, password: str, port: int = 443) -> dict:
    """An Allocate (relayed UDP) over TURN/TLS to ip:port with SNI ``name``, the chain checked against
    ``cafile``: the unauthenticated request for the realm and nonce, then the signed one.
    Returns {"ok": bool, "error": code or None, "relayed_port": int or None}."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((ip, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=name) as sock:
        transport = attribute(ATTR_REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))
        sock.sendall(message(ALLOCATE, secrets.token_bytes(12), transport))
        kind, challenge = parse(read_message(sock))
        if kind != ALLOCATE_ERROR or error_code(challenge) != 401:
            return {"ok": False, "error": error_code(challenge), "relayed_port": None, "stage": "challenge"}
        realm, nonce = challenge[ATTR_REALM], challenge[ATTR_NONCE]
        key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()
        signed = transport + attribute(ATTR_USERNAME, username.encode()) + attribute(ATTR_REALM, realm) \
            + attribute(ATTR_NONCE, nonce)
        sock.sendall(with_integrity(ALLOCATE, secrets.token_bytes(12), signed, key))
        kind, answer = parse(read_message(sock))
        relayed = answer.get(ATTR_XOR_RELAYED_ADDRESS)
        return {"ok": kind == ALLOCATE_SUCCESS, "error": error_code(answer),
                "relayed_port": (struct.unpack("!H", relayed[2:4])[0] ^ (MAGIC_COOKIE >> 16)) if relayed else None}
