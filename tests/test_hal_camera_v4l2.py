"""V4L2Camera driven by a scripted opener around libav's real ``lavfi`` input (the stand-in for
/dev/video0)."""

from __future__ import annotations

import asyncio
import errno
import time
from typing import Any

import av
import pytest

from hal.camera.base import CameraError
from hal.camera.v4l2 import V4L2Camera, v4l2_options


class ScriptedV4L2:
    """Behaves like ``av.open(device, format="v4l2", options=...)`` for a camera we describe.

    ``modes`` maps an input_format to the size the "driver" delivers in it (FFmpeg's v4l2 input
    opens at the nearest size the driver offers); formats not listed fail like av.open does.
    The container is libav's real lavfi ``testsrc2`` at that size, paced in real time.
    ``vanish_after`` makes demux fail with ENODEV after that many packets (device unplugged).
    """

    def __init__(
        self,
        modes: dict[str, tuple[int, int]],
        missing: bool = False,
        vanish_after: int | None = None,
        rate: int = 30,
    ) -> None:
        self.modes, self.missing, self.vanish_after, self.rate = modes, missing, vanish_after, rate
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, device: str, format: str = "", options: dict[str, str] | None = None) -> Any:
        options = dict(options or {})
        self.calls.append((device, format, options))
        if self.missing:
            raise av.error.FileNotFoundError(errno.ENOENT, "No such file or directory", device)
        size = self.modes.get(options.get("input_format", ""))
        if size is None:
            raise av.error.OSError(errno.EINVAL, "Invalid argument", device)
        spec = f"testsrc2=size={size[0]}x{size[1]}:rate={self.rate},realtime"
        return _Vanishing(av.open(spec, format="lavfi"), self.vanish_after)


class _Vanishing:
    """A real container whose demux raises ENODEV after ``after`` packets (None: never)."""

    def __init__(self, container: Any, after: int | None) -> None:
        self._container, self._after = container, after
        self.streams = container.streams

    def demux(self, *args: Any, **kwargs: Any):
        for n, packet in enumerate(self._container.demux(*args, **kwargs)):
            if self._after is not None and n >= self._after:
                raise av.error.OSError(errno.ENODEV, "No such device", "/dev/video0")
            yield packet

    def close(self) -> None:
        self._container.close()


def test_option_mapping():
    assert v4l2_options(1280, 720, 30, "mjpeg") == {
        "video_size": "1280x720",
        "framerate": "30",
        "input_format": "mjpeg",
    }


async def test_prefers_mjpeg_at_the_requested_size_and_delivers_frames():
    opener = ScriptedV4L2({"mjpeg": (640, 480), "yuyv422": (640, 480)})
    cam = V4L2Camera("/dev/video0", 640, 480, 30, opener=opener)
    await cam.start()
    try:
        frames = [await cam.read() for _ in range(6)]
    finally:
        await cam.stop()
    assert opener.calls == [("/dev/video0", "v4l2", v4l2_options(640, 480, 30, "mjpeg"))]
    assert cam.input_format == "mjpeg"
    assert all((f.frame.width, f.frame.height, f.frame.format.name) == (640, 480, "yuv420p") for f in frames)
    assert [f.index for f in frames] == sorted(f.index for f in frames)
    now = time.monotonic()
    assert all(now - 1.0 < f.timestamp <= now for f in frames)


async def test_falls_back_to_yuyv_when_mjpeg_is_missing_or_smaller():
    opener = ScriptedV4L2({"yuyv422": (320, 240)})
    cam = V4L2Camera("/dev/video0", 320, 240, 30, opener=opener)
    await cam.start()
    await cam.read()
    await cam.stop()
    assert [c[2]["input_format"] for c in opener.calls] == ["mjpeg", "yuyv422"]
    assert cam.input_format == "yuyv422"

    opener = ScriptedV4L2({"mjpeg": (320, 240), "yuyv422": (640, 480)})
    cam = V4L2Camera("/dev/video0", 640, 480, 30, rotation=270, opener=opener)
    await cam.start()
    frame = (await cam.read()).frame
    await cam.stop()
    assert cam.input_format == "yuyv422"  # mjpeg only at 320x240: raw at the asked size wins
    assert (frame.width, frame.height) == (480, 640)


async def test_slow_reader_gets_the_newest_frame_and_drops_are_counted():
    cam = V4L2Camera("/dev/video0", 320, 240, 30, opener=ScriptedV4L2({"mjpeg": (320, 240)}))
    await cam.start()
    try:
        first = await cam.read()
        await asyncio.sleep(0.4)
        late = await cam.read()
        assert late.index - first.index >= 8
        assert time.monotonic() - late.timestamp < 0.1
        assert cam.stats()["dropped"] >= 7
    finally:
        await cam.stop()


async def test_missing_device_and_vanishing_device_raise_camera_error():
    cam = V4L2Camera("/dev/video9", 320, 240, 30, opener=ScriptedV4L2({}, missing=True))
    with pytest.raises(CameraError, match="cannot open camera /dev/video9"):
        await cam.start()

    cam = V4L2Camera("/dev/video0", 320, 240, 30, opener=ScriptedV4L2({"mjpeg": (320, 240)}, vanish_after=5))
    await cam.start()
    with pytest.raises(CameraError, match="vanished"):
        for _ in range(20):
            await cam.read()
    await cam.stop()
    assert cam.stats()["errors"] == 1


async def test_frame_encoder_source_reports_vanished_camera_and_recovers():
    from device_agent.media.video_source import FrameEncoderSource
    from hal.encoder.pyav import Libx264Encoder

    class Replug(ScriptedV4L2):
        """Unplugged after 5 packets; missing on the first reopen; then plugged back in for good."""

        def __call__(self, device, format="", options=None):
            opens = len(self.calls)
            self.missing = opens == 1
            self.vanish_after = 5 if opens == 0 else None
            return super().__call__(device, format, options)

    opener = Replug({"mjpeg": (320, 240)})
    states: list[tuple[bool, str]] = []
    source = FrameEncoderSource(
        V4L2Camera("/dev/video0", 320, 240, 30, opener=opener),
        Libx264Encoder(320, 240, 30, 500_000, 1_000_000),
        on_state=lambda ok, msg: states.append((ok, msg)),
    )
    packets: list = []
    await source.start(packets.append)
    try:
        deadline = time.monotonic() + 6
        while not (states and states[-1][0]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [ok for ok, _ in states] == [False, False, True], states
        assert "vanished" in states[0][1] and "cannot open camera" in states[1][1]
        count = len(packets)
        await asyncio.sleep(0.3)
        assert len(packets) > count + 3 and source.healthy()
    finally:
        await source.stop()
