# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""LiveKit load generator (selfhosted.livekit, role livekit_loadtest).

Real participants on LiveKit's real-time SDK (package ``livekit``: libwebrtc inside), all in this one
process: per room, publishers send a tone (and, unless audio only, a moving test pattern at the
configured resolution, simulcast if asked) and every participant subscribes to the others. They join
evenly spread over the ramp-up, stay for the duration, then leave.

Every sample interval it records how many are connected, the joins and their failures, and its own
CPU (so users can size their load host). The node's sampler (module livekit_loadtest_sampler) writes
its latest CPU and loss into a load-test room's metadata; the generator reads it there and stops early
when the CPU or the loss stays over its stop threshold for two samples, or when too many joins fail.

Bounded: at most the configured participants, and ramp-up + duration + join timeout + 60 s in all.
The API secret is read from a file, never from the command line or the environment. The result is
one JSON file (no secret in it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import time

# The collection's module_utils the role installs next to this file (livekit_api: the tokens).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import livekit_api  # noqa: E402

METADATA_KEY = "selfhosted_livekit_loadtest"  # as in module_utils/livekit_loadtest.py
SAMPLE_RATE = 48000
PATTERN_FRAMES = 8


def token(config: dict, secret: str, identity: str, room: str, publish: bool) -> str:
    """A join token for one room: publish (publishers) and subscribe, nothing else."""
    grants = {"roomJoin": True, "room": room, "canPublish": publish, "canSubscribe": True, "canPublishData": False}
    return livekit_api.make_token(config["api_key"], secret, grants, identity=identity, ttl=int(config["token_ttl"]))


def cpu_seconds() -> float:
    """CPU seconds of this process, every thread included (the SDK's native threads too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_pattern(rtc, width: int, height: int) -> list:
    """A few frames of a moving block pattern (made once; publishers cycle through them)."""
    frames = []
    block = 16
    for n in range(PATTERN_FRAMES):
        rows = []
        for by in range((height + block - 1) // block):
            row = b"".join(bytes([(bx * 29 + by * 13 + n * 37) % 256, (bx * 7 + n * 61) % 256,
                                  (by * 11 + n * 23) % 256, 255]) * block
                           for bx in range((width + block - 1) // block))[:width * 4]
            rows.append(row * min(block, height - by * block))
        frames.append(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, b"".join(rows)))
    return frames


class Generator:
    def __init__(self, rtc, config: dict, secret: str):
        self.rtc, self.config, self.secret = rtc, config, secret
        self.people: list[dict] = []
        self.rooms: dict[str, object] = {}
        self.audio_sources: list = []
        self.video_sources: list = []
        self.timeline: list[dict] = []
        self.stop = asyncio.Event()
        self.stop_reason: str | None = None
        self.node: dict | None = None
        self.over = {"cpu": 0, "loss": 0}

    def plan(self) -> list[dict]:
        """Publishers of every room first, then subscribers, rooms interleaved."""
        c = self.config
        plan = []
        for role, count in (("publisher", c["publishers"]), ("subscriber", c["subscribers"])):
            for i in range(count):
                for room in c["rooms"]:
                    plan.append({"identity": "%s-%s-%d" % (room.rsplit("-", 1)[-1], role[:3], i), "room": room,
                                 "role": role, "joined": False, "join_seconds": None, "error": None,
                                 "tracks_subscribed": 0, "disconnected": None})
        return plan

    async def join(self, person: dict) -> None:
        rtc, c = self.rtc, self.config
        room = rtc.Room()
        publisher = person["role"] == "publisher"

        def on_track(*_args) -> None:
            person["tracks_subscribed"] += 1

        def on_disconnected(reason) -> None:
            name = rtc.DisconnectReason.Name(reason)
            if name != "CLIENT_INITIATED":
                person["disconnected"] = name

        room.on("track_subscribed", on_track)
        room.on("disconnected", on_disconnected)
        options = rtc.RoomOptions(auto_subscribe=True, connect_timeout=c["join_timeout"])
        started = time.monotonic()
        try:
            grant = token(c, self.secret, person["identity"], person["room"], publisher)
            await asyncio.wait_for(room.connect(c["url"], grant, options=options), timeout=c["join_timeout"])
            person["join_seconds"] = round(time.monotonic() - started, 3)
            person["joined"] = True
            self.rooms[person["identity"]] = room
            if publisher:
                await self.publish(room)
        except asyncio.CancelledError:
            person["error"] = person["error"] or "cancelled (the run ended)"
            raise
        except Exception as err:  # pylint: disable=broad-except  # every failure is a failed join, counted
            person["error"] = ("timeout after %s s" % c["join_timeout"]) if isinstance(err, asyncio.TimeoutError) \
                else "%s: %s" % (type(err).__name__, str(getattr(err, "message", err))[:160])
            failed = sum(1 for p in self.people if p["error"] and not p["error"].startswith("cancelled"))
            if failed >= c["stop_join_failures"] and not self.stop.is_set():
                self.stop_reason = "stopped early: %d join failure(s) (last: %s)" % (failed, person["error"])
                self.stop.set()

    async def publish(self, room) -> None:
        rtc, c = self.rtc, self.config
        audio = rtc.AudioSource(SAMPLE_RATE, 1)
        await room.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("tone", audio),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self.audio_sources.append(audio)
        if not c["audio_only"]:
            video = rtc.VideoSource(c["width"], c["height"])
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA, simulcast=bool(c["simulcast"]),
                video_encoding=rtc.VideoEncoding(max_bitrate=int(c["max_bitrate_kbps"]) * 1000,
                                                 max_framerate=float(c["fps"])))
            await room.local_participant.publish_track(rtc.LocalVideoTrack.create_video_track("pattern", video), options)
            self.video_sources.append(video)

    async def audio_loop(self) -> None:
        """A 440 Hz tone into every publisher's source, 10 ms at a time (the sources pace it)."""
        samples = SAMPLE_RATE // 100
        frame = self.rtc.AudioFrame.create(SAMPLE_RATE, 1, samples)
        frame.data[:] = [int(6000 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE)) for i in range(samples)]
        while not self.stop.is_set():
            sources = list(self.audio_sources)
            if not sources:
                await asyncio.sleep(0.01)
                continue
            await asyncio.gather(*(s.capture_frame(frame) for s in sources), return_exceptions=True)

    async def video_loop(self) -> None:
        c = self.config
        if c["audio_only"]:
            return
        frames = test_pattern(self.rtc, c["width"], c["height"])
        tick, period = 0, 1.0 / float(c["fps"])
        next_at = time.monotonic()
        while not self.stop.is_set():
            for source in list(self.video_sources):
                source.capture_frame(frames[tick % len(frames)])
            tick += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def read_node(self) -> None:
        """The newest sample the node's sampler put into a room's metadata."""
        for room in list(self.rooms.values()):
            try:
                data = json.loads(room.metadata or "{}").get(METADATA_KEY)
            except (ValueError, AttributeError):
                continue
            if isinstance(data, dict) and (self.node is None or data.get("seq", -1) > self.node.get("seq", -1)):
                self.node = data

    def check_node(self, last_seq: int) -> int:
        """Stop when CPU or loss stays over its stop threshold for two node samples in a row."""
        c = self.config
        if not self.node or self.node.get("seq", -1) == last_seq:
            return last_seq
        cpu = self.node.get("cpu_host_percent" if c["cpu_basis"] == "host" else "cpu_livekit_percent")
        loss = self.node.get("loss_percent")
        self.over["cpu"] = self.over["cpu"] + 1 if cpu is not None and cpu > c["stop_cpu_percent"] else 0
        self.over["loss"] = self.over["loss"] + 1 if loss is not None and loss > c["stop_loss_percent"] else 0
        if self.over["cpu"] >= 2 and not self.stop.is_set():
            self.stop_reason = "stopped early: node CPU %.1f %% > %s %% (%s)" % (cpu, c["stop_cpu_percent"], c["cpu_basis"])
            self.stop.set()
        elif self.over["loss"] >= 2 and not self.stop.is_set():
            self.stop_reason = "stopped early: packet loss %.2f %% > %s %%" % (loss, c["stop_loss_percent"])
            self.stop.set()
        return self.node.get("seq", -1)

    async def sampler(self, started: float) -> None:
        interval = float(self.config["sample_interval"])
        last_cpu, last_t, last_seq = cpu_seconds(), time.monotonic(), -1
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass
            now, cpu = time.monotonic(), cpu_seconds()
            self.read_node()
            last_seq = self.check_node(last_seq)
            self.timeline.append({
                "t": round(time.time(), 3), "seconds": round(now - started, 2),
                "participants": sum(1 for p in self.people if p["joined"] and not p["disconnected"]),
                "joined": sum(1 for p in self.people if p["joined"]),
                "failed": sum(1 for p in self.people if p["error"]),
                "generator_cores": round((cpu - last_cpu) / (now - last_t), 3) if now > last_t else None,
                "node": self.node})
            last_cpu, last_t = cpu, now

    async def run(self) -> dict:
        c = self.config
        self.people = self.plan()
        started_wall, started = time.time(), time.monotonic()
        loops = [asyncio.create_task(self.audio_loop()), asyncio.create_task(self.video_loop()),
                 asyncio.create_task(self.sampler(started))]
        gap = float(c["ramp_up"]) / max(1, len(self.people) - 1)
        joins = []
        for n, person in enumerate(self.people):
            if self.stop.is_set():
                break
            delay = started + n * gap - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop.wait(), timeout=delay)
                    break
                except asyncio.TimeoutError:
                    pass
            joins.append(asyncio.create_task(self.join(person)))
        # Hold for the duration once everyone was asked in (or until a stop).
        hold_until = max(time.monotonic(), started + float(c["ramp_up"])) + float(c["duration"])
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, hold_until - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        ended_load = time.time()
        self.stop.set()
        for task in joins:
            task.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
        await asyncio.gather(*loops, return_exceptions=True)
        for room in list(self.rooms.values()):
            try:
                await asyncio.wait_for(room.disconnect(), timeout=5)
            except Exception:  # pylint: disable=broad-except  # leaving is best effort
                pass
        return {
            "url": c["url"], "started": round(started_wall, 3), "ended": round(ended_load, 3),
            "stop_reason": self.stop_reason, "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
            "generator_cpu_seconds": round(cpu_seconds(), 2),
            "shape": dict(
                {k: c[k] for k in ("publishers", "subscribers", "audio_only", "fps", "simulcast", "duration", "ramp_up",
                                   "max_bitrate_kbps")},
                rooms=len(c["rooms"]), resolution="%dx%d" % (c["width"], c["height"])),
            "participants": self.people, "timeline": self.timeline,
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="JSON settings written by the role (no secret)")
    parser.add_argument("--secret-file", required=True, help="file holding the API key's secret")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        config = json.load(handle)
    with open(args.secret_file, encoding="utf-8") as handle:
        secret = handle.read().strip()
    from livekit import rtc  # pylint: disable=import-outside-toplevel

    limit = float(config["ramp_up"]) + float(config["duration"]) + float(config["join_timeout"]) + 60
    generator = Generator(rtc, config, secret)
    try:
        result = asyncio.run(asyncio.wait_for(generator.run(), timeout=limit))
    except asyncio.TimeoutError:
        print(json.dumps({"error": "the run did not end within %d s" % limit}), file=sys.stderr)
        return 1
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    os.replace(tmp, args.out)
    joined = sum(1 for p in result["participants"] if p["joined"])
    print(json.dumps({"joined": joined, "planned": len(result["participants"]), "stop_reason": result["stop_reason"]}),
          flush=True)
    return 0


if __name__ == "__main__":
    # The result is written: leave without the SDK's teardown, which can abort the process (an FFI
    # panic on a connect the run cancelled, seen on a saturated load host) after a complete run.
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)
