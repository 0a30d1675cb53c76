"""The test-pattern camera's ``busy`` pattern: needs bits, stays cheap, deterministic, stamp readable."""

from __future__ import annotations

import fractions
import statistics
import time
from pathlib import Path

import av
import numpy as np
import pytest

from device_agent.config import ConfigError, config_from_dict
from hal.camera.factory import create_camera
from hal.camera.marker import block_size, read_stamp
from hal.camera.settings import CameraSettings
from hal.camera.test_pattern import TestPatternCamera

W, H, FPS = 1280, 720, 30


def _kbps_at_crf(frames: list[av.VideoFrame], crf: str = "23") -> tuple[float, list[int]]:
    """libx264 as the agent opens it (ultrafast, zerolatency, baseline) at a fixed CRF; kbit/s and stamps
    read."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base, enc.framerate = fractions.Fraction(1, FPS), FPS
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "crf": crf, "g": "60"}
    dec = av.CodecContext.create("h264", "r")
    size, read = 0, []
    for i, frame in enumerate(frames):
        frame.pts = i
        for packet in [*enc.encode(frame), *([] if i < len(frames) - 1 else enc.encode(None))]:
            size += packet.size
            read += [read_stamp(d.to_ndarray()[:H]).index for d in dec.decode(packet)]
    return size * 8 / 1000 / (len(frames) / FPS), read


def test_busy_needs_well_over_a_megabit_and_bars_do_not() -> None:
    busy = TestPatternCamera(W, H, FPS, pattern="busy")
    bars = TestPatternCamera(W, H, FPS)
    busy_kbps, busy_read = _kbps_at_crf([busy.render(i).frame for i in range(45)])
    bars_kbps, _ = _kbps_at_crf([bars.render(i).frame for i in range(45)])
    assert busy_kbps > 2500, busy_kbps  # measured ~4300 kbit/s at CRF 23 (benchmarks/pattern_bits.py)
    assert bars_kbps < 1000, bars_kbps
    assert busy_read == list(range(45)), busy_read  # the burnt-in counter survives the busy picture


def test_busy_is_a_function_of_the_frame_index_and_moves() -> None:
    a, b = TestPatternCamera(W, H, FPS, pattern="busy"), TestPatternCamera(W, H, FPS, pattern="busy")
    size = block_size(W)

    def picture(camera: TestPatternCamera, index: int) -> np.ndarray:
        yuv = camera.render(index).frame.to_ndarray()
        yuv[size : 2 * size] = 0  # the stamp's second row is the wall-clock capture time
        return yuv

    for index in (0, 1, 77, 1000):
        assert np.array_equal(picture(a, index), picture(b, index))
    first, second = picture(a, 10), picture(a, 11)
    assert np.mean(first[:H] != second[:H]) > 0.5  # most of the picture changes every frame
    assert read_stamp(a.render(1234).frame.to_ndarray()[:H]).index == 1234


def test_busy_is_cheap_to_draw() -> None:
    camera = TestPatternCamera(W, H, FPS, pattern="busy")
    times = []
    for i in range(30):
        started = time.perf_counter()
        camera.render(i)
        times.append(time.perf_counter() - started)
    # ~1-3 ms on an idle core here; generous for a shared, loaded machine, far below 33 ms a frame
    assert statistics.median(times) < 0.015, times


def test_pattern_key_reaches_the_camera_and_is_validated(tmp_path: Path) -> None:
    config = config_from_dict({"device": {"state_dir": str(tmp_path)}, "camera": {"pattern": "busy"}})
    camera = create_camera(config.camera)
    assert isinstance(camera, TestPatternCamera) and camera.stats()["pattern"] == "busy"
    assert create_camera(CameraSettings()).stats()["pattern"] == "bars"
    with pytest.raises(ConfigError, match="camera.pattern"):
        config_from_dict({"device": {"state_dir": str(tmp_path)}, "camera": {"pattern": "noise"}})
    with pytest.raises(ValueError, match="unknown test pattern"):
        TestPatternCamera(pattern="noise")
