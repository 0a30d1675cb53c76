"""Encoded video sources: what the fan-out consumes (camera + encoder, or a camera that encodes).

``FrameEncoderSource`` reads raw frames from any HAL camera and encodes them on one worker
thread (libx264 or h264_v4l2m2m). A camera that loses its device is reported through
``on_state`` and reopened with backoff; the source never crashes the agent.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol

from device_agent.tasks import cancel_and_wait
from hal.camera.base import Camera, CameraError, CapturedFrame
from hal.encoder.base import EncodedPacket, H264Encoder

log = logging.getLogger(__name__)

PacketCallback = Callable[[EncodedPacket], None]
StateCallback = Callable[[bool, str], None]  # (available, message)


class EncodedVideoSource(Protocol):
    """Produces H.264 access units for the fan-out."""

    async def start(self, on_packet: PacketCallback) -> None: ...

    async def stop(self) -> None: ...

    def force_keyframe(self) -> None: ...

    def set_bitrate(self, bps: int) -> bool: ...

    async def capture_frame(self) -> CapturedFrame | None:
        """A current raw frame (snapshots, self-tests) without opening the camera twice; None if none yet."""
        ...

    def healthy(self) -> bool: ...

    def stats(self) -> dict[str, Any]: ...


class FrameTiming:
    """Frame rate and frame-interval jitter over the last ``window`` capture timestamps, and encode time."""

    def __init__(self, window: int = 90) -> None:
        self.stamps: collections.deque[float] = collections.deque(maxlen=window)
        self.encode_s: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, capture_ts: float, encode_s: float | None = None) -> None:
        self.stamps.append(capture_ts)
        if encode_s is not None:
            self.encode_s.append(encode_s)

    def stats(self) -> dict[str, Any]:
        encode = round(statistics.mean(self.encode_s) * 1000, 2) if self.encode_s else None
        if len(self.stamps) < 2:
            return {"fps": 0.0, "frame_interval_jitter_ms": None, "encode_ms": encode}
        stamps = list(self.stamps)
        intervals = [b - a for a, b in zip(stamps, stamps[1:])]
        span = stamps[-1] - stamps[0]
        return {"fps": round((len(stamps) - 1) / span, 2) if span > 0 else 0.0,
                "frame_interval_jitter_ms": round(statistics.pstdev(intervals) * 1000, 2),
                "encode_ms": encode}

    def last(self) -> float | None:
        return self.stamps[-1] if self.stamps else None


class FrameEncoderSource:
    """Camera -> encoder (one worker thread) -> ``on_packet`` on the event loop.

    ``wanted()`` says whether anyone needs packets now; while it is False frames are still captured
    (health, snapshots) but not encoded, so a software encoder costs nothing with no viewers. The
    first viewer's keyframe request makes the next encoded frame an IDR.
    """

    def __init__(self, camera: Camera, encoder: H264Encoder, on_state: StateCallback | None = None,
                 retry_max_s: float = 30.0, wanted: Callable[[], bool] | None = None) -> None:
        self.camera = camera
        self.encoder = encoder
        self.wanted = wanted
        self.on_state = on_state
        self.retry_max_s = retry_max_s
        self.timing = FrameTiming()
        self.camera_errors = 0
        self.last_error = ""
        self._latest: CapturedFrame | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="h264-encoder")
        self._task: asyncio.Task[None] | None = None

    async def start(self, on_packet: PacketCallback) -> None:
        self._task = asyncio.create_task(self._run(on_packet), name="video-source")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.camera.stop()
        finally:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.encoder.close)
            self._executor.shutdown(wait=True)

    async def _run(self, on_packet: PacketCallback) -> None:
        loop = asyncio.get_running_loop()
        first_backoff = min(0.5, self.retry_max_s)
        backoff = first_backoff
        while True:
            try:
                await self.camera.start()
                if self.last_error:
                    self.last_error = ""
                    self.encoder.force_keyframe()  # a new picture after a gap: every viewer resyncs
                    self._state(True, "camera is back")
                backoff = first_backoff
                while True:
                    frame = await self.camera.read()
                    self._latest = frame
                    if self.wanted is not None and not self.wanted():
                        self.timing.add(frame.timestamp)
                        continue
                    started = time.monotonic()
                    packets = await loop.run_in_executor(self._executor, self.encoder.encode, frame)
                    self.timing.add(frame.timestamp, time.monotonic() - started)
                    for packet in packets:
                        on_packet(packet)
            except CameraError as exc:
                self.camera_errors += 1
                self.last_error = str(exc)
                log.error("camera failed: %s (retrying in %.1f s)", exc, backoff)
                self._state(False, f"camera unavailable: {exc}")
                try:
                    await self.camera.stop()
                except Exception:  # the device may already be gone
                    log.debug("camera stop after failure", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(self.retry_max_s, backoff * 2)

    def _state(self, available: bool, message: str) -> None:
        if self.on_state is not None:
            self.on_state(available, message)

    def force_keyframe(self) -> None:
        self.encoder.force_keyframe()

    def set_bitrate(self, bps: int) -> bool:
        return self.encoder.set_bitrate(bps)

    async def capture_frame(self) -> CapturedFrame | None:
        return self._latest  # the encoder loop keeps the newest frame anyway

    def healthy(self) -> bool:
        """The loop is alive and either frames flow or a known camera failure is being retried.

        A missing camera is not a reason to restart the agent (it would not bring the camera back);
        it is reported as a P1 alert instead. A loop that died, or frames that stopped for no known
        reason, is (the systemd watchdog then restarts the agent).
        """
        if self._task is None or self._task.done():
            return False
        last = self.timing.last()
        return bool(self.last_error) or (last is not None and time.monotonic() - last < 5.0)

    def stats(self) -> dict[str, Any]:
        return {"camera": self.camera.stats(), "encoder": self.encoder.stats(), **self.timing.stats(),
                "camera_errors": self.camera_errors, "last_error": self.last_error or None}
