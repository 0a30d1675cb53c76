"""Raspberry Pi cameras through picamera2 (libcamera): raw frames.

Written against picamera2 0.3.2x (Raspberry Pi OS Bookworm, ``python3-picamera2``). picamera2 and
libcamera are imported lazily: the module loads anywhere, the classes need them only at
``start()``. The Pi 4's hardware H.264 encoder fed by this camera is a separate backend,
``hal.encoder.picamera2``; it opens the camera with ``open_picamera2`` from here.

Sensor timestamps (request metadata ``SensorTimestamp``, nanoseconds) come from the kernel's
capture clock: CLOCK_BOOTTIME on current Pi kernels, CLOCK_MONOTONIC on older ones (they differ only
after a suspend). ``SensorClock`` picks whichever of the two the first frame matches and converts
to the ``time.monotonic()`` domain the rest of the agent uses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np

from hal.camera.base import Camera, CameraError, CapturedFrame
from hal.camera.frames import LatestFrameSlot, output_size, planes_to_frame, rotate_frame

log = logging.getLogger(__name__)


class SensorClock:
    """Maps sensor timestamps (ns, CLOCK_BOOTTIME or CLOCK_MONOTONIC) to ``time.monotonic()`` seconds."""

    def __init__(self) -> None:
        self._offset_ns: int | None = None

    def to_monotonic(self, sensor_ns: int) -> float:
        if self._offset_ns is None:
            mono = time.monotonic_ns()
            boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            # the frame was captured moments ago: its timestamp is closest to "now" on its own clock
            self._offset_ns = 0 if abs(mono - sensor_ns) <= abs(boot - sensor_ns) else mono - boot
        return (sensor_ns + self._offset_ns) / 1e9


def yuv420_array_to_frame(arr: np.ndarray, width: int, height: int) -> Any:
    """picamera2's ``make_array("main")`` for YUV420 (``(h*3/2, stride)`` bytes) -> av.VideoFrame.

    The ISP pads lines to its alignment, so the stride can exceed the width; the U and V planes
    have half that stride and follow the Y plane back to back.
    """
    flat = np.ascontiguousarray(arr).reshape(-1)
    stride = arr.shape[1]
    cs, ch = stride // 2, height // 2
    y = flat[: stride * height].reshape(height, stride)[:, :width]
    u = flat[stride * height : stride * height + cs * ch].reshape(ch, cs)[:, : width // 2]
    v = flat[stride * height + cs * ch : stride * height + 2 * cs * ch].reshape(ch, cs)[:, : width // 2]
    return planes_to_frame(np.ascontiguousarray(y), np.ascontiguousarray(u), np.ascontiguousarray(v))


def _video_configuration(picam2: Any, width: int, height: int, fps: int, rotation: int) -> Any:
    """A picamera2 video configuration: YUV420 main stream, frame rate, 180-degree flip in the ISP."""
    from libcamera import Transform

    transform = Transform(hflip=1, vflip=1) if rotation == 180 else Transform()
    return picam2.create_video_configuration(
        main={"size": (width, height), "format": "YUV420"},
        controls={"FrameRate": float(fps)},
        transform=transform,
    )


def open_picamera2(width: int, height: int, fps: int, rotation: int) -> Any:
    """Construct and configure a Picamera2 (blocking); any failure is a CameraError."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise CameraError(f"picamera2 is not installed: {exc}") from exc
    try:
        picam2 = Picamera2()
    except (RuntimeError, IndexError, OSError) as exc:  # IndexError: no camera attached
        raise CameraError(f"no usable Pi camera: {exc!r}") from exc
    try:
        picam2.configure(_video_configuration(picam2, width, height, fps, rotation))
    except Exception as exc:
        close_picamera2(picam2)
        raise CameraError(f"camera refused {width}x{height}@{fps}: {exc}") from exc
    return picam2


def close_picamera2(picam2: Any) -> None:
    """Stop and close ``picam2``, ignoring the errors of a camera that is already gone."""
    for name in ("stop", "close"):
        try:
            getattr(picam2, name)()
        except Exception:
            log.debug("picamera2 %s", name, exc_info=True)


class Picamera2Camera(Camera):
    """Raw YUV420 frames from libcamera; 180 degrees by the ISP, 90/270 rotated in software.

    A dedicated thread blocks in ``capture_request()``, copies the main stream out with
    ``make_array("main")``, releases the request and hands the newest frame to asyncio (older
    unread ones are dropped and counted). Timestamps come from ``SensorTimestamp``.
    """

    def __init__(self, width: int = 1280, height: int = 720, fps: int = 30, rotation: int = 0) -> None:
        self.rotation = rotation
        self._src_size = (width, height)
        self.width, self.height = output_size(width, height, rotation)
        self.fps = fps
        self._picam2: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._slot: LatestFrameSlot | None = None
        self._clock = SensorClock()
        self._index = 0
        self._drops_total = 0

    async def start(self) -> None:
        width, height = self._src_size
        self._picam2 = await asyncio.to_thread(open_picamera2, width, height, self.fps, self.rotation)
        try:
            await asyncio.to_thread(self._picam2.start)
        except Exception as exc:
            await asyncio.to_thread(close_picamera2, self._picam2)
            self._picam2 = None
            raise CameraError(f"camera failed to start: {exc}") from exc
        self._clock = SensorClock()
        self._slot = LatestFrameSlot(asyncio.get_running_loop())
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._capture, args=(self._picam2, self._slot), name="picamera2-capture", daemon=True
        )
        self._thread.start()

    def _capture(self, picam2: Any, slot: LatestFrameSlot) -> None:
        width, height = self._src_size
        while not self._stopping.is_set():
            try:
                request = picam2.capture_request()
                try:
                    arr = request.make_array("main")
                    sensor_ns = request.get_metadata().get("SensorTimestamp")
                finally:
                    request.release()
            except Exception as exc:  # picamera2 raises plain RuntimeErrors when libcamera fails
                if not self._stopping.is_set():
                    log.error("picamera2 capture failed: %s", exc)
                    slot.fail(f"Pi camera failed: {exc}")
                return
            ts = self._clock.to_monotonic(sensor_ns) if sensor_ns else time.monotonic()
            frame = rotate_frame(
                yuv420_array_to_frame(arr, width, height), self.rotation if self.rotation in (90, 270) else 0
            )
            slot.put(CapturedFrame(frame=frame, index=self._index, timestamp=ts))
            self._index += 1

    async def read(self) -> CapturedFrame:
        if self._slot is None:
            raise RuntimeError("camera not started")
        return await self._slot.get()

    async def stop(self) -> None:
        self._stopping.set()
        picam2, self._picam2 = self._picam2, None
        if picam2 is not None:
            await asyncio.to_thread(close_picamera2, picam2)  # unblocks capture_request
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
        if self._slot is not None:
            self._drops_total += self._slot.drops
            self._slot = None

    def stats(self) -> dict[str, Any]:
        drops = self._drops_total + (self._slot.drops if self._slot else 0)
        return {
            "backend": "picamera2",
            "frames": self._index,
            "dropped": drops,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
        }
