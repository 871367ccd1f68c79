"""A real LiveKit participant for tests, built on LiveKit's Python real-time SDK.

The SDK's wheel carries LiveKit's native client (libwebrtc), so what this tool does is what an
app does: signalling over WebSocket, ICE (direct or through the server's TURN), DTLS/SRTP media.

Subcommands (JSON on stdout, exit 0 on success):
  token  print a join or admin token
  call   a publisher and a subscriber in one room; counts the frames that arrive
  stay   one participant that stays connected and reports every event (drain/upgrade tests); with
         --report-every N also its frame counts every N seconds, so a test sees a gap in the media
         and not only the total

The API secret comes from LIVEKIT_API_SECRET (or --api-secret); prefer the environment so the
secret never shows in a process list. Every mode is bounded by --seconds and --timeout.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import datetime
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from livekit import api, rtc
from livekit.rtc._proto import stats_pb2

SAMPLE_RATE = 48000
AUDIO_FRAME_MS = 10
WIDTH, HEIGHT, FPS = 320, 240, 15


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def make_token(args: argparse.Namespace, identity: str, grant: str = "join", ttl: int = 3600) -> str:
    if grant == "admin":
        grants = api.VideoGrants(room_list=True, room_create=True, room_admin=True, room=args.room)
    else:
        grants = api.VideoGrants(room_join=True, room=args.room, can_publish=True, can_subscribe=True)
    token = api.AccessToken(args.api_key, args.api_secret).with_identity(identity).with_grants(grants)
    return token.with_ttl(datetime.timedelta(seconds=ttl)).to_jwt()


def room_options(args: argparse.Namespace) -> rtc.RoomOptions:
    policy = rtc.IceTransportType.TRANSPORT_RELAY if args.relay_only else rtc.IceTransportType.TRANSPORT_ALL
    return rtc.RoomOptions(auto_subscribe=True, rtc_config=rtc.RtcConfiguration(ice_transport_type=policy),
                           connect_timeout=10)


async def publish_media(room: rtc.Room, stop: asyncio.Event) -> None:
    """Publish a 440 Hz tone and a moving test pattern until stop is set."""
    audio = rtc.AudioSource(SAMPLE_RATE, 1)
    video = rtc.VideoSource(WIDTH, HEIGHT)
    await room.local_participant.publish_track(
        rtc.LocalAudioTrack.create_audio_track("tone", audio),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    await room.local_participant.publish_track(
        rtc.LocalVideoTrack.create_video_track("pattern", video),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))

    async def audio_loop() -> None:
        samples = SAMPLE_RATE * AUDIO_FRAME_MS // 1000
        # One second of tone, replayed: 440 Hz fits a whole number of periods in a second.
        tone = array.array("h", (int(8000 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE))
                                 for i in range(SAMPLE_RATE)))
        offset = 0
        while not stop.is_set():
            frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, samples)
            frame.data[:] = tone[offset:offset + samples]
            offset = (offset + samples) % SAMPLE_RATE
            await audio.capture_frame(frame)

    async def video_loop() -> None:
        tick = 0
        while not stop.is_set():
            shade = (tick * 8) % 256
            pixels = bytes([shade, 255 - shade, (tick * 3) % 256, 255]) * (WIDTH * HEIGHT)
            video.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, pixels))
            tick += 1
            await asyncio.sleep(1 / FPS)

    await asyncio.gather(audio_loop(), video_loop())


@dataclass
class Counter:
    video: int = 0
    audio: int = 0
    tasks: list = field(default_factory=list)

    def watch(self, track: rtc.Track) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            self.tasks.append(asyncio.create_task(self._count(rtc.VideoStream(track), "video")))
        elif track.kind == rtc.TrackKind.KIND_AUDIO:
            self.tasks.append(asyncio.create_task(self._count(rtc.AudioStream(track), "audio")))

    async def _count(self, stream, kind: str) -> None:
        async for _event in stream:
            setattr(self, kind, getattr(self, kind) + 1)


async def selected_candidate_types(room: rtc.Room) -> list[str]:
    """Local candidate types of the candidate pairs the transports selected (e.g. ['relay'])."""
    stats = await room.get_rtc_stats()
    entries = list(stats.publisher_stats) + list(stats.subscriber_stats)
    candidates, selected = {}, set()
    for entry in entries:
        which = entry.WhichOneof("stats")
        if which == "local_candidate":
            candidates[entry.local_candidate.rtc.id] = entry.local_candidate.candidate.candidate_type
        elif which == "transport" and entry.transport.transport.selected_candidate_pair_id:
            selected.add(entry.transport.transport.selected_candidate_pair_id)
    types = set()
    for entry in entries:
        if entry.WhichOneof("stats") == "candidate_pair":
            pair = entry.candidate_pair
            if pair.rtc.id in selected or (pair.candidate_pair.nominated and pair.candidate_pair.state == 4):
                kind = candidates.get(pair.candidate_pair.local_candidate_id)
                if kind is not None:
                    types.add(stats_pb2.IceCandidateType.Name(kind).lower())
    return sorted(types)


async def connect(args: argparse.Namespace, identity: str) -> rtc.Room:
    room = rtc.Room()
    await room.connect(args.url, make_token(args, identity), options=room_options(args))
    return room


async def cmd_call(args: argparse.Namespace) -> int:
    """Publisher + subscriber in one room; success when both audio and video frames arrive."""
    stop = asyncio.Event()
    counter = Counter()
    disconnects: list[str] = []
    subscriber = rtc.Room()
    subscriber.on("track_subscribed", lambda track, *_: counter.watch(track))
    subscriber.on("disconnected", lambda reason: disconnects.append(rtc.DisconnectReason.Name(reason)))
    started = time.monotonic()
    await subscriber.connect(args.url, make_token(args, "subscriber"), options=room_options(args))
    publisher = await connect(args, "publisher")
    publishing = asyncio.create_task(publish_media(publisher, stop))
    await asyncio.sleep(args.seconds)
    candidate_types = {
        "publisher": await selected_candidate_types(publisher),
        "subscriber": await selected_candidate_types(subscriber),
    }
    stop.set()
    await publishing
    dropped = list(disconnects)  # disconnects before our own, below
    result = dict(video_frames_received=counter.video, audio_frames_received=counter.audio,
                  subscriber_disconnected=bool(dropped), disconnect_reasons=dropped,
                  relay_only=args.relay_only, selected_candidate_types=candidate_types,
                  seconds=round(time.monotonic() - started, 2))
    await publisher.disconnect()
    await subscriber.disconnect()
    for task in counter.tasks:
        task.cancel()
    ok = counter.video > 0 and counter.audio > 0 and not dropped
    emit(**result, ok=ok)
    return 0 if ok else 1


async def report_progress(counter: Counter, stop: asyncio.Event, every: float) -> None:
    """Cumulative frame counts every ``every`` seconds until stop is set (one JSON line each)."""
    while not stop.is_set():
        emit(progress=True, t=time.time(), video_frames_received=counter.video, audio_frames_received=counter.audio)
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except asyncio.TimeoutError:
            pass
    emit(progress=True, t=time.time(), video_frames_received=counter.video, audio_frames_received=counter.audio)


async def cmd_stay(args: argparse.Namespace) -> int:
    """Join, optionally publish, stay until --seconds or --leave-at; report events as JSON lines."""
    stop = asyncio.Event()
    counter = Counter()
    state = {"disconnected": False, "reason": None}
    room = rtc.Room()

    def on_disconnected(reason) -> None:
        name = rtc.DisconnectReason.Name(reason)
        if name == "CLIENT_INITIATED":  # our own hang-up below
            return
        state.update(disconnected=True, reason=name)
        emit(event="disconnected", reason=name, t=time.time())
        stop.set()

    room.on("track_subscribed", lambda track, *_: counter.watch(track))
    room.on("disconnected", on_disconnected)
    room.on("reconnecting", lambda: emit(event="reconnecting", t=time.time()))
    room.on("reconnected", lambda: emit(event="reconnected", t=time.time()))
    await room.connect(args.url, make_token(args, args.identity), options=room_options(args))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)  # hang up cleanly
    joined = time.monotonic()
    emit(event="connected", identity=args.identity, room=args.room, t=time.time())
    tasks = [asyncio.create_task(publish_media(room, stop))] if args.publish else []
    if args.report_every:
        tasks.append(asyncio.create_task(report_progress(counter, stop, args.report_every)))
    until = args.seconds if args.leave_at is None else max(0.0, args.leave_at - time.time())
    try:
        await asyncio.wait_for(stop.wait(), timeout=until)
    except asyncio.TimeoutError:
        pass
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    connected_seconds = round(time.monotonic() - joined, 2)
    if not state["disconnected"]:
        await room.disconnect()
    emit(summary=True, disconnected=state["disconnected"], reason=state["reason"],
         connected_seconds=connected_seconds, video_frames_received=counter.video,
         audio_frames_received=counter.audio)
    return 1 if state["disconnected"] else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("LIVEKIT_URL", "ws://127.0.0.1:7880"))
    parser.add_argument("--api-key", default=os.environ.get("LIVEKIT_API_KEY"))
    parser.add_argument("--api-secret", default=os.environ.get("LIVEKIT_API_SECRET"))
    parser.add_argument("--room", default="test")
    parser.add_argument("--timeout", type=float, default=120, help="hard limit for the whole run (s)")
    parser.add_argument("--relay-only", action="store_true", help="ICE transport policy relay (TURN only)")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token")
    token.add_argument("--identity", default="user")
    token.add_argument("--grant", choices=["join", "admin"], default="join")
    token.add_argument("--ttl", type=int, default=6 * 3600)
    call = sub.add_parser("call")
    call.add_argument("--seconds", type=float, default=10)
    stay = sub.add_parser("stay")
    stay.add_argument("--identity", required=True)
    stay.add_argument("--seconds", type=float, default=30)
    stay.add_argument("--leave-at", type=float, help="unix time to leave at (overrides --seconds)")
    stay.add_argument("--publish", action="store_true")
    stay.add_argument("--report-every", type=float, help="print the frame counts every this many seconds")
    args = parser.parse_args(argv)
    if not args.api_key or not args.api_secret:
        parser.error("set LIVEKIT_API_KEY and LIVEKIT_API_SECRET (or --api-key/--api-secret)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.command == "token":
        print(make_token(args, args.identity, args.grant, args.ttl))
        return 0
    command = cmd_call if args.command == "call" else cmd_stay
    try:
        return asyncio.run(asyncio.wait_for(command(args), timeout=args.timeout))
    except (asyncio.TimeoutError, rtc.ConnectError, RuntimeError) as err:
        emit(ok=False, error=f"{type(err).__name__}: {getattr(err, 'message', err)}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
