"""Picamera2H264Source (the Pi 4's hardware H.264 encoder backend) through a scripted stand-in of
picamera2."""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import pytest

from hal.camera.marker import read_stamp
from hal.camera.settings import CameraSettings
from hal.encoder.annexb import NAL_IDR, NAL_PPS, NAL_SPS, nal_type, split_nals
from hal.encoder.picamera2 import Picamera2H264Source
from hal.encoder.settings import EncoderSettings
from tests.support import picamera2_standin


@pytest.fixture
def script(monkeypatch):
    return picamera2_standin.install(monkeypatch)


def luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="gray")


def decode(packets, codec=None):
    codec = codec or av.CodecContext.create("h264", "r")
    frames = []
    for p in packets:
        frames.extend(codec.decode(av.Packet(p.data)))
    return frames


async def collect(queue: asyncio.Queue, n: int, timeout: float = 5.0):
    return [await asyncio.wait_for(queue.get(), timeout) for _ in range(n)]


async def test_h264_source_packets_decode_and_force_keyframe(script):
    cam = CameraSettings(backend="picamera2", width=320, height=240, fps=30)
    enc = EncoderSettings(keyframe_interval_s=10.0)
    source = Picamera2H264Source(cam, enc, reason="test")
    queue: asyncio.Queue = asyncio.Queue()
    await source.start(queue.put_nowait)
    try:
        first = await collect(queue, 10)
        assert first[0].keyframe
        assert script.encoders[0].iperiod == 300 and script.encoders[0].bitrate == enc.bitrate
        codec = av.CodecContext.create("h264", "r")
        frames = decode(first, codec)
        assert len(frames) >= 8
        stamps = [read_stamp(luma(f)).index for f in frames]
        assert stamps == sorted(stamps) and stamps[-1] > stamps[0]
        now = time.monotonic()
        assert all(now - 1.0 < p.capture_ts <= now for p in first)
        assert all(b.pts > a.pts for a, b in zip(first, first[1:], strict=False))
        assert not any(p.keyframe for p in first[1:])  # GOP of 300: no IDR unless asked

        source.force_keyframe()
        assert script.forced_keyframes == 1
        more = await collect(queue, 8)
        idrs = [p for p in more if p.keyframe]
        assert idrs, "force_keyframe produced no IDR"
        types = [nal_type(n) for n in split_nals(idrs[0].data)]
        assert NAL_SPS in types and NAL_PPS in types and NAL_IDR in types
        assert len(decode(idrs[:1])) == 1  # decodable on its own: a late joiner can start here
        assert source.set_bitrate(500_000) is False
        assert source.healthy()
        snapshot = await source.capture_frame()  # a raw frame while recording, for diagnostics
        assert snapshot is not None and (snapshot.frame.width, snapshot.frame.height) == (320, 240)
        assert read_stamp(luma(snapshot.frame)).index >= stamps[-1]
        assert abs(snapshot.timestamp - time.monotonic()) < 1.0
        assert source.stats()["encoder"]["keyframes"] >= 2
    finally:
        await source.stop()


async def test_h264_source_reports_failure_and_recovers(script):
    cam = CameraSettings(backend="picamera2", width=320, height=240, fps=30)
    states: list[tuple[bool, str]] = []
    source = Picamera2H264Source(
        cam, EncoderSettings(), on_state=lambda ok, msg: states.append((ok, msg)), stall_timeout_s=0.4
    )
    queue: asyncio.Queue = asyncio.Queue()
    script.fail_after_frames = 10
    script.open_failures = 0
    await source.start(queue.put_nowait)
    try:
        await collect(queue, 5)
        # the camera dies after 10 frames, then is missing for one reopen attempt
        deadline = time.monotonic() + 5
        while not states and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert states and states[0][0] is False and "no frames" in states[0][1]
        script.open_failures = 1
        deadline = time.monotonic() + 8
        while not any(ok for ok, _ in states) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [ok for ok, _ in states][-1] is True, states
        assert any("no usable Pi camera" in msg for ok, msg in states if not ok)
        seen: list = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen.extend(await collect(queue, 1))
            starts = [i for i, p in enumerate(seen) if p.frame_index == 0]
            if starts and len(seen) - starts[-1] >= 5:
                break
        after = seen[starts[-1] :]
        assert after[0].keyframe  # the reopened encoder starts with an IDR (SPS/PPS in front)
        assert len(decode(after)) >= 4
        assert source.camera_errors >= 2 and script.opened >= 2
    finally:
        await source.stop()
