"""playbooks/loadtest.yml against a converged node, in a small bounded shape (2 rooms x 3 participants,
30 s), as a user runs it: from the controller as the load host, with the generator's SDK installed
from local wheels into its own venv. What a user reads afterwards is checked: the three report files,
every participant joined, CPU samples from the node, and a PNG that decodes and shows the series the
JSON says it plots. No secret of the run in the -vvv output or any command line meanwhile.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import zlib

import pytest

from conftest import load_nodes, run_playbook_watched

SHAPE = {"livekit_loadtest_rooms": 2, "livekit_loadtest_publishers_per_room": 1,
         "livekit_loadtest_subscribers_per_room": 2, "livekit_loadtest_duration": 30, "livekit_loadtest_ramp_up": 4,
         "livekit_loadtest_sample_interval": 2, "livekit_loadtest_video_resolution": "320x180"}


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of a PNG, checked chunk by chunk (CRCs, IHDR first, IEND last)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack("!I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack("!I", data[pos + 8 + length:pos + 12 + length])[0], kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", [k for k, _b in chunks]
    width, height, depth, color, _comp, _filt, interlace = struct.unpack("!IIBBBBB", chunks[0][1])
    assert (depth, color, interlace) == (8, 2, 0), "expected 8-bit RGB, not interlaced"
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    stride = width * 3 + 1
    assert len(raw) == height * stride
    assert all(raw[y * stride] == 0 for y in range(height)), "the report writes filter 0 on every row"
    return width, height, [raw[y * stride + 1:(y + 1) * stride] for y in range(height)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str]:
    node = load_nodes(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"] + "/hosts")[0]
    work = tmp_path_factory.mktemp("loadtest")
    extra = dict(SHAPE, livekit_loadtest_node=node.name, livekit_loadtest_home=str(work / "home"),
                 livekit_loadtest_report_dir=str(work / "reports"), livekit_loadtest_sdk_source="local",
                 livekit_loadtest_local_wheel_dir=os.environ["LKT_PROBE_WHEEL_DIR"],
                 livekit_loadtest_install_packages=False, livekit_loadtest_load_host_become=False,
                 # The generator runs on this machine too: judge livekit-server's share of the CPU.
                 livekit_loadtest_cpu_basis="livekit")
    (work / "extra.json").write_text(json.dumps(extra))
    result = run_playbook_watched("loadtest.yml", "-e", f"@{work / 'extra.json'}", nodes=[node], timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    dirs = list((work / "reports").glob(f"{node.name}-*"))
    assert len(dirs) == 1, dirs
    leftovers = list((work / "home" / "runs").glob("*/api-secret"))
    assert not leftovers, f"the API secret's file was left on the load host: {leftovers}"
    return dirs[0], result.stdout


def test_report_files_and_figures(report) -> None:
    directory, _output = report
    for name in ("report.md", "report.json", "report.png"):
        assert (directory / name).stat().st_size > 0, name
    data = json.loads((directory / "report.json").read_text())
    assert data["participants_planned"] == 6
    assert data["participants_joined"] == 6, data["join_errors"]
    assert data["join_failures"] == 0 and data["stop_reason"] is None, (data["join_errors"], data["stop_reason"])
    samples = data["samples"]
    assert data["cpu_samples"] >= 8 and all(s["cpu_host_percent"] is not None for s in samples), len(samples)
    assert any((s.get("cpu_livekit_percent") or 0) > 0 for s in samples), "livekit-server's CPU was never seen"
    assert max(s.get("participants", 0) for s in samples) == 6, "the node never counted the six participants"
    assert max(s.get("tracks_subscribed", 0) for s in samples) >= 8, "subscribers did not get the publishers' tracks"
    assert any(s.get("rss_bytes") for s in samples)
    assert any(t.get("node") for t in data["generator_timeline"]), "the generator never saw the node's samples"
    capacity = data["capacity"]
    assert capacity["largest_load"]["participants"] == 6 and not capacity["limit_crossed"]
    assert capacity["participants_per_core"] and capacity["participants_per_core"] > 0
    assert data["generator"]["generator_participants_per_core"] > 0
    markdown = (directory / "report.md").read_text()
    assert "Participants per core" in markdown and "6 of 6 participants (0 join failures" in markdown


def test_png_decodes_with_the_series_the_json_lists(report) -> None:
    directory, _output = report
    width, height, rows = decode_png((directory / "report.png").read_bytes())
    assert width >= 600 and height >= 400
    plot = json.loads((directory / "report.json").read_text())["plot"]
    names = {s["name"] for s in plot["series"]}
    assert {"participants", "cpu_host_percent", "cpu_livekit_percent", "loss_percent"} <= names
    pixels = b"".join(rows)
    counts = {}
    for series in plot["series"]:
        color = bytes(series["color"])
        counts[series["name"]] = sum(1 for i in range(0, len(pixels), 3) if pixels[i:i + 3] == color)
    for name in ("participants", "cpu_host_percent", "cpu_livekit_percent"):
        points = next(s["points"] for s in plot["series"] if s["name"] == name)
        assert points >= 8, (name, points)
        assert counts[name] > 400, f"{name} is listed but hardly drawn (its legend alone is fewer pixels): {counts}"
