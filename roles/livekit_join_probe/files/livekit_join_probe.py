# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Synthetic LiveKit join probe (selfhosted.livekit, role livekit_join_probe).

For every target, twice (path ``direct``, then path ``relay_tls``): one participant publishes audio and
video into a fresh probe room, a second one receives them. ``relay_tls`` forces both through TURN
(ICE transport policy relay) and first checks TURN/TLS on 443 itself: name, TCP, certificate, and a
TURN answer to an Allocate request. The result is written as node-exporter textfile series
(docs/monitoring.md, "Probe") and one JSON line per target and path on stdout.

The API secret is read from a file (root and the probe's group only), never from the command line
or the environment. Standard library plus LiveKit's real-time SDK (package ``livekit``) only.

Failure labels, by the first step that failed: ``dns`` (the URL's or TURN name does not resolve),
``tls`` (handshake or certificate check, wss or TURN/TLS), ``auth`` (the server refused the token),
``timeout`` (no answer, no join or no ICE connection in time), ``no_media`` (joined, but no audio or
no video arrived in time), ``error`` (anything else, e.g. connection refused: nothing listening).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import socket
import ssl
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# The collection's module_utils the role installs next to this file (livekit_api, livekit_files).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import livekit_api  # noqa: E402
import livekit_files  # noqa: E402

PATHS = ("direct", "relay_tls")
FAILURES = ("none", "dns", "tls", "auth", "timeout", "no_media", "error")
SAMPLE_RATE = 48000
WIDTH, HEIGHT, FPS = 160, 120, 15
STUN_MAGIC = 0x2112A442


class ProbeFailure(Exception):
    """A step failed; ``label`` is one of FAILURES."""

    def __init__(self, label: str, detail: str):
        super().__init__(detail)
        self.label = label
        self.detail = detail


# ---- tokens: the collection's HS256 JWTs (livekit_api.make_token) -------------------------------
def make_token(key: str, secret: str, identity: str, room: str, ttl: int, publish: bool) -> str:
    """A join token for one room only: publish (publisher) or subscribe (receiver), never both,
    no data messages, no admin grants, valid for ttl seconds."""
    grants = {"roomJoin": True, "room": room, "canPublish": publish, "canSubscribe": not publish,
              "canPublishData": False}
    return livekit_api.make_token(key, secret, grants, identity=identity, ttl=ttl)


# ---- network steps, each failing with its own label ---------------------------------------------
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file or None)


def open_connection(host: str, port: int, timeout: float, tls: ssl.SSLContext | None) -> socket.socket:
    """TCP (and TLS) to host:port, raising ProbeFailure labelled by the step that failed."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ProbeFailure("dns", f"{host} does not resolve: {err.strerror}") from err
    family, kind, proto, _name, address = addresses[0]
    sock = socket.socket(family, kind, proto)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except (socket.timeout, TimeoutError) as err:
        sock.close()
        raise ProbeFailure("timeout", f"no TCP answer from {host}:{port} in {timeout:g} s") from err
    except OSError as err:
        sock.close()
        raise ProbeFailure("error", f"TCP to {host}:{port}: {err.strerror or err}") from err
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=host)
    except (socket.timeout, TimeoutError) as err:
        sock.close()
        raise ProbeFailure("timeout", f"no TLS handshake with {host}:{port} in {timeout:g} s") from err
    except ssl.SSLCertVerificationError as err:
        sock.close()
        raise ProbeFailure("tls", f"certificate of {host}:{port} refused: {err.verify_message}") from err
    except (ssl.SSLError, OSError) as err:
        sock.close()
        raise ProbeFailure("tls", f"TLS handshake with {host}:{port} failed: {err}") from err


def check_signalling(url: str, token: str, ca_file: str | None, timeout: float) -> None:
    """DNS, TCP, TLS (wss) and the token, through livekit-server's /rtc/validate."""
    parsed = urllib.parse.urlsplit(url)
    secure = parsed.scheme in ("wss", "https")
    host, port = parsed.hostname or "", parsed.port or (443 if secure else 80)
    context = tls_context(ca_file) if secure else None
    open_connection(host, port, timeout, context).close()
    base = urllib.parse.urlunsplit(("https" if secure else "http", parsed.netloc, parsed.path.rstrip("/"), "", ""))
    request = urllib.request.Request(f"{base}/rtc/validate?" + urllib.parse.urlencode({"access_token": token}))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            response.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise ProbeFailure("auth", f"{host} refused the probe's token (HTTP {err.code}): is the probe key in "
                                       "livekit_server_api_keys?") from err
        raise ProbeFailure("error", f"{host} answered HTTP {err.code} to /rtc/validate") from err
    except (socket.timeout, TimeoutError) as err:
        raise ProbeFailure("timeout", f"no answer from {host} to /rtc/validate in {timeout:g} s") from err
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ssl.SSLError):
            raise ProbeFailure("tls", f"TLS with {host}: {reason}") from err
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise ProbeFailure("timeout", f"no answer from {host} to /rtc/validate in {timeout:g} s") from err
        raise ProbeFailure("error", f"/rtc/validate on {host}: {reason}") from err


def stun_message(method: int, attributes: list[tuple[int, bytes]]) -> tuple[bytes, bytes]:
    body = b""
    for kind, value in attributes:
        body += struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)
    transaction = secrets.token_bytes(12)
    return struct.pack("!HHI", method, len(body), STUN_MAGIC) + transaction + body, transaction


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ProbeFailure("error", "the TURN server closed the connection")
        data += chunk
    return data


def check_turn_tls(domain: str, port: int, ca_file: str | None, timeout: float) -> None:
    """TURN/TLS: the name resolves, TLS verifies against the CA for that name, and a TURN server
    answers an Allocate without credentials with 401 and a nonce (RFC 8656): a TURN listener, not
    just any TLS server. No relay is allocated."""
    sock = open_connection(domain, port, timeout, tls_context(ca_file))
    try:
        # Allocate (0x0003) with REQUESTED-TRANSPORT UDP (0x0019).
        request, transaction = stun_message(0x0003, [(0x0019, bytes([17, 0, 0, 0]))])
        sock.sendall(request)
        header = read_exact(sock, 20)
        kind, length, cookie = struct.unpack("!HHI", header[:8])
        body = read_exact(sock, length)
    except (socket.timeout, TimeoutError) as err:
        raise ProbeFailure("timeout", f"no TURN answer on {domain}:{port} in {timeout:g} s") from err
    except OSError as err:
        raise ProbeFailure("error", f"TURN on {domain}:{port}: {err}") from err
    finally:
        sock.close()
    if cookie != STUN_MAGIC or header[8:20] != transaction:
        raise ProbeFailure("error", f"{domain}:{port} does not speak TURN (no STUN answer to Allocate)")
    attributes, offset = {}, 0
    while offset + 4 <= len(body):
        attr, size = struct.unpack("!HH", body[offset:offset + 4])
        attributes[attr] = body[offset + 4:offset + 4 + size]
        offset += 4 + size + (-size % 4)
    code = attributes.get(0x0009)
    status = (code[2] & 7) * 100 + code[3] if code and len(code) >= 4 else None
    if kind == 0x0113 and status == 401 and 0x0015 in attributes:
        return
    raise ProbeFailure("error", f"TURN on {domain}:{port} answered type {kind:#06x} code {status} to an Allocate "
                                "without credentials (expected 401 with a nonce)")


# ---- media through LiveKit's SDK ----------------------------------------------------------------
async def media_check(rtc, url: str, key: str, secret: str, room: str, relay: bool, ttl: int,
                      timeout: float, media_timeout: float) -> tuple[float, float]:
    """(join seconds, first-frame seconds): the receiver joins, the publisher joins and publishes a
    tone and a test pattern, and both audio and video must arrive at the receiver."""
    policy = rtc.IceTransportType.TRANSPORT_RELAY if relay else rtc.IceTransportType.TRANSPORT_ALL

    def options() -> object:
        return rtc.RoomOptions(auto_subscribe=True, rtc_config=rtc.RtcConfiguration(ice_transport_type=policy),
                               connect_timeout=timeout)

    loop = asyncio.get_running_loop()
    first = {"audio": loop.create_future(), "video": loop.create_future()}
    streams: list[asyncio.Task] = []

    async def watch(stream, kind: str) -> None:
        async for _frame in stream:
            if not first[kind].done():
                first[kind].set_result(time.monotonic())
                break

    def on_track(track, *_args) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            streams.append(asyncio.create_task(watch(rtc.VideoStream(track), "video")))
        elif track.kind == rtc.TrackKind.KIND_AUDIO:
            streams.append(asyncio.create_task(watch(rtc.AudioStream(track), "audio")))

    receiver, publisher = rtc.Room(), rtc.Room()
    receiver.on("track_subscribed", on_track)
    stop = asyncio.Event()
    sending = None
    try:
        started = time.monotonic()
        await join(rtc, receiver, url, make_token(key, secret, "probe-receiver", room, ttl, False), options(), timeout)
        join_seconds = time.monotonic() - started
        await join(rtc, publisher, url, make_token(key, secret, "probe-publisher", room, ttl, True), options(), timeout)
        joined = time.monotonic()
        sending = asyncio.create_task(publish(rtc, publisher, stop))
        try:
            await asyncio.wait_for(asyncio.gather(first["audio"], first["video"]), timeout=media_timeout)
        except asyncio.TimeoutError as err:
            missing = [kind for kind, future in first.items() if not future.done()]
            raise ProbeFailure("no_media", f"joined, but no {' and no '.join(missing)} arrived in {media_timeout:g} s"
                               + (" through TURN" if relay else "")) from err
        return join_seconds, first["video"].result() - joined
    finally:
        stop.set()
        for task in streams + ([sending] if sending else []):
            task.cancel()
        for member in (publisher, receiver):
            try:
                await asyncio.wait_for(member.disconnect(), timeout=5)
            except Exception:  # pylint: disable=broad-except  # leaving is best effort
                pass


async def join(rtc, room, url: str, token: str, options, timeout: float) -> None:
    try:
        await asyncio.wait_for(room.connect(url, token, options=options), timeout=timeout)
    except asyncio.TimeoutError as err:
        raise ProbeFailure("timeout", f"no join in {timeout:g} s") from err
    except rtc.ConnectError as err:
        text = str(getattr(err, "message", err))
        lowered = text.lower()
        if "401" in text or "403" in text or "unauthorized" in lowered or "forbidden" in lowered:
            raise ProbeFailure("auth", f"join refused: {text}") from err
        if "timeout" in lowered or "timed out" in lowered:
            raise ProbeFailure("timeout", f"join: {text}") from err
        raise ProbeFailure("error", f"join: {text}") from err


async def publish(rtc, room, stop: asyncio.Event) -> None:
    audio = rtc.AudioSource(SAMPLE_RATE, 1)
    video = rtc.VideoSource(WIDTH, HEIGHT)
    await room.local_participant.publish_track(
        rtc.LocalAudioTrack.create_audio_track("probe-tone", audio),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    await room.local_participant.publish_track(
        rtc.LocalVideoTrack.create_video_track("probe-pattern", video),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
    samples = SAMPLE_RATE // 100
    tone = [int(6000 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE)) for i in range(samples)]

    async def audio_loop() -> None:
        while not stop.is_set():
            frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, samples)
            frame.data[:] = tone
            await audio.capture_frame(frame)

    async def video_loop() -> None:
        tick = 0
        while not stop.is_set():
            shade = (tick * 16) % 256
            video.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA,
                                               bytes([shade, 255 - shade, 128, 255]) * (WIDTH * HEIGHT)))
            tick += 1
            await asyncio.sleep(1 / FPS)

    await asyncio.gather(audio_loop(), video_loop())


# ---- one run --------------------------------------------------------------------------------------
async def probe_path(rtc, target: dict, path: str, key: str, secret: str, config: dict) -> dict:
    timeout = float(config.get("timeout", 20))
    ttl = int(config.get("token_ttl", 120))
    ca_file = config.get("ca_file") or None
    room = f"{config.get('room', 'livekit-probe')}-{path.replace('_', '-')}-{secrets.token_hex(3)}"
    result = {"target": target["name"], "path": path, "room": room, "failure": "none", "detail": ""}
    started = time.monotonic()
    try:
        check_signalling(target["url"], make_token(key, secret, "probe-check", room, ttl, False), ca_file, timeout)
        if path == "relay_tls":
            check_turn_tls(target["turn_domain"], int(target.get("turn_port", 443)), ca_file, timeout)
        join_seconds, first_frame = await asyncio.wait_for(
            media_check(rtc, target["url"], key, secret, room, path == "relay_tls", ttl, timeout,
                        float(config.get("media_timeout", 15))),
            timeout=2 * timeout + float(config.get("media_timeout", 15)) + 15)
        result.update(join_seconds=round(join_seconds, 4), first_frame_seconds=round(first_frame, 4))
    except ProbeFailure as failure:
        result.update(failure=failure.label, detail=failure.detail)
    except asyncio.TimeoutError:
        result.update(failure="timeout", detail="the path did not finish in time")
    except Exception as err:  # pylint: disable=broad-except  # any other problem is a failure of its own
        result.update(failure="error", detail=f"{type(err).__name__}: {err}")
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(results: list[dict], finished: dict[str, float]) -> str:
    lines = [
        "# HELP livekit_probe_success 1 if the last probe run joined, published and received audio and video over the path.",
        "# TYPE livekit_probe_success gauge",
    ]
    for r in results:
        lines.append('livekit_probe_success{target="%s",path="%s",failure="%s"} %d'
                     % (escape(r["target"]), r["path"], r["failure"], r["failure"] == "none"))
    for name, field, text in (("livekit_probe_join_seconds", "join_seconds", "Seconds from connect to joined in the last successful run."),
                              ("livekit_probe_first_frame_seconds", "first_frame_seconds",
                               "Seconds from the publisher joining to the first video frame at the receiver.")):
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
        lines += ['%s{target="%s",path="%s"} %s' % (name, escape(r["target"]), r["path"], r[field])
                  for r in results if r["failure"] == "none"]
    lines += ["# HELP livekit_probe_last_run_timestamp_seconds Unix time the last probe run against the target ended.",
              "# TYPE livekit_probe_last_run_timestamp_seconds gauge"]
    lines += ['livekit_probe_last_run_timestamp_seconds{target="%s"} %.3f' % (escape(t), ts) for t, ts in finished.items()]
    return "\n".join(lines) + "\n"


def write_atomically(path: str, text: str) -> None:
    """node-exporter never reads half a file (the collection's livekit_files.atomic_write)."""
    livekit_files.atomic_write(path, text.encode(), 0o644)


def read_secret(path: str | None) -> str:
    if not path:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SystemExit("no --secret-file and no systemd credential: where is the probe key's secret?")
        path = os.path.join(directory, "api-secret")
    with open(path, encoding="utf-8") as handle:
        secret = handle.read().strip()
    if not secret:
        raise SystemExit(f"{path} is empty")
    return secret


async def run(config: dict, secret: str, paths: list[str]) -> list[dict]:
    from livekit import rtc  # pylint: disable=import-outside-toplevel  # only where media is probed

    results = []
    for target in config["targets"]:
        for path in paths:
            result = await probe_path(rtc, target, path, config["api_key"], secret, config)
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="JSON settings (targets, api_key, room, timeouts, ca_file, textfile)")
    parser.add_argument("--secret-file", help="file holding the API secret (default: the systemd credential api-secret, "
                                              "if the unit loads one)")
    parser.add_argument("--textfile", help="write the series here instead of the configured textfile ('' for none)")
    parser.add_argument("--path", choices=PATHS, action="append", help="probe only this path (repeatable)")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        config = json.load(handle)
    secret = read_secret(args.secret_file)
    results = asyncio.run(run(config, secret, args.path or list(PATHS)))
    textfile = config.get("textfile", "") if args.textfile is None else args.textfile
    if textfile:
        finished = {target["name"]: time.time() for target in config["targets"]}
        write_atomically(textfile, render(results, finished))
    # With a textfile the result is in the series (a failed path is not a failed unit); without one
    # (bench/probe.sh, by hand) the exit code says whether every path succeeded.
    return 0 if textfile or all(r["failure"] == "none" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
