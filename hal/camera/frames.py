"""Helpers shared by the capture-thread cameras: yuv420p planes, rotation, newest-frame hand-off."""

from __future__ import annotations

import asyncio
import threading

import av
import numpy as np

from hal.camera.base import CameraError, CapturedFrame


def output_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """Frame size after rotation (90/270 swap the axes), as TestPatternCamera does."""
    return (height, width) if rotation in (90, 270) else (width, height)


def planes_to_frame(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> av.VideoFrame:
    """A yuv420p frame from three contiguous planes (``y`` is ``(h, w)``, chroma ``(h/2, w/2)``)."""
    h, w = y.shape
    buf = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w)
    return av.VideoFrame.from_ndarray(buf, format="yuv420p")


def frame_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U, V planes of a yuv420p frame as arrays (line padding removed)."""
    out = []
    for plane, (w, h) in zip(  # a format with other planes than yuv420p's three: only the first three
        frame.planes,
        (
            (frame.width, frame.height),
            (frame.width // 2, frame.height // 2),
            (frame.width // 2, frame.height // 2),
        ),
        strict=False,
    ):
        arr = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:h, :w]
        out.append(arr)
    return out[0], out[1], out[2]


def rotate_frame(frame: av.VideoFrame, rotation: int) -> av.VideoFrame:
    """Rotate a yuv420p frame clockwise by 0/90/180/270 degrees (planes rotated in numpy)."""
    if rotation == 0:
        return frame
    k = {90: -1, 180: 2, 270: 1}[rotation]
    y, u, v = (np.ascontiguousarray(np.rot90(p, k)) for p in frame_planes(frame))
    return planes_to_frame(y, u, v)


def scale_and_rotate(frame: av.VideoFrame, width: int, height: int, rotation: int) -> av.VideoFrame:
    """``frame`` as yuv420p ``width`` x ``height`` (the sensor-side size), then rotated."""
    if frame.format.name != "yuv420p" or frame.width != width or frame.height != height:
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    return rotate_frame(frame, rotation)


class LatestFrameSlot:
    """Hands the newest frame from a capture thread to asyncio; an unread older frame is dropped.

    The capture thread calls ``put``/``fail``; the event loop awaits ``get``. ``drops`` counts
    frames that were replaced before anyone read them (the reader was slower than the camera).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._frame: CapturedFrame | None = None
        self._error: str | None = None
        self._event = asyncio.Event()
        self.drops = 0
        self.delivered = 0

    def put(self, frame: CapturedFrame) -> None:
        with self._lock:
            if self._frame is not None:
                self.drops += 1
            self._frame = frame
        self._wake()

    def fail(self, message: str) -> None:
        with self._lock:
            self._error = message
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    async def get(self) -> CapturedFrame:
        """The newest frame not yet read; raises CameraError once the capture thread has failed."""
        while True:
            with self._lock:
                frame, self._frame = self._frame, None
                error = self._error
                if frame is None and error is None:
                    self._event.clear()
            if frame is not None:
                self.delivered += 1
                return frame
            if error is not None:
                raise CameraError(error)
            await self._event.wait()
