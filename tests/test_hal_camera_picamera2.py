"""Picamera2Camera (the raw-frame camera backend) driven through a scripted stand-in of picamera2's interface.

The hardware H.264 encoder backend on the same camera is tested in test_hal_encoder_picamera2.py."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from hal.camera.base import CameraError
from hal.camera.frames import rotate_frame
from hal.camera.marker import read_stamp
from hal.camera.picamera2 import Picamera2Camera, SensorClock
from tests.support import picamera2_standin


@pytest.fixture
def script(monkeypatch):
    return picamera2_standin.install(monkeypatch)


def luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="gray")


async def test_raw_frames_are_real_and_timestamped_in_monotonic_domain(script):
    cam = Picamera2Camera(width=328, height=240, fps=30)  # 328 -> stride 384: padding is cropped
    await cam.start()
    try:
        frames = [await cam.read() for _ in range(8)]
    finally:
        await cam.stop()
    assert script.configs[0]["main"] == {"size": (328, 240), "format": "YUV420", "stride": 384}
    assert script.configs[0]["controls"] == {"FrameRate": 30.0}
    stamps = [read_stamp(luma(f.frame)).index for f in frames]
    assert all(f.frame.width == 328 and f.frame.height == 240 for f in frames)
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0]
    now = time.monotonic()
    assert all(now - 1.0 < f.timestamp <= now for f in frames)
    assert frames[-1].timestamp > frames[0].timestamp


async def test_rotation_180_in_isp_and_90_in_software(script):
    cam = Picamera2Camera(width=320, height=240, fps=30, rotation=180)
    await cam.start()
    await cam.read()
    await cam.stop()
    transform = script.configs[-1]["transform"]
    assert transform.hflip and transform.vflip

    cam = Picamera2Camera(width=320, height=240, fps=30, rotation=90)
    await cam.start()
    frame = (await cam.read()).frame
    await cam.stop()
    assert (cam.width, cam.height) == (240, 320) and (frame.width, frame.height) == (240, 320)
    assert not script.configs[-1]["transform"].hflip
    upright = rotate_frame(frame, 270)  # undo the clockwise quarter turn: the stamp reads again
    assert read_stamp(luma(upright)).index < 100


async def test_missing_camera_and_dying_camera_raise_camera_error(script):
    script.open_failures = 1
    cam = Picamera2Camera(width=320, height=240, fps=30)
    with pytest.raises(CameraError, match="no usable Pi camera"):
        await cam.start()
    script.fail_after_frames = 3
    await cam.start()
    with pytest.raises(CameraError, match="Pi camera failed"):
        for _ in range(10):
            await cam.read()
    await cam.stop()


def test_sensor_clock_matches_boottime_or_monotonic():
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert abs(SensorClock().to_monotonic(boot) - time.monotonic()) < 0.05
    assert abs(SensorClock().to_monotonic(time.monotonic_ns()) - time.monotonic()) < 0.05
