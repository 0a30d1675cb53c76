"""The frame-in encoded video source: any HAL camera + a frame encoder, on one worker thread.

``FrameEncoderSource`` reads raw frames from a camera and encodes them (libx264 or h264_v4l2m2m).
The camera runs under the HAL's availability contract (``hal.camera.reopening.ReopeningCamera``):
a lost camera is reported through ``on_state`` and reopened with backoff, so the source never
crashes the agent. The contract it implements, ``EncodedVideoSource``, is the HAL's
(``hal.encoder.base``), as is the picamera2 source that encodes in hardware.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

from device_agent.tasks import cancel_and_wait
from hal.availability import StateCallback
from hal.camera.base import Camera, CapturedFrame
from hal.camera.reopening import ReopeningCamera
from hal.encoder.base import EncodedPacket, EncodedVideoSource, H264Encoder, PacketCallback
from hal.encoder.timing import FrameTiming

__all__ = ["EncodedVideoSource", "FrameEncoderSource", "FrameTiming"]


class FrameEncoderSource:
    """Camera -> encoder (one worker thread) -> ``on_packet`` on the event loop.

    ``camera`` is a ``ReopeningCamera`` (``hal.camera.factory.create_reopening_camera``, whose
    ``on_state`` reports the camera), or a bare backend, which is wrapped in one here with
    ``on_state`` and a backoff from 0.5 s doubling to ``retry_max_s``. When the camera comes back
    the next frame is encoded as an IDR, so every viewer resyncs.

    ``wanted()`` says whether anyone needs packets now; while it is False frames are still captured
    (health, snapshots) but not encoded, so a software encoder costs nothing with no viewers. The
    first viewer's keyframe request makes the next encoded frame an IDR.

    ``add_layer`` adds a lower encoding of the same frames (its encoder scales them): each layer
    has its own worker thread, its own ``wanted`` and its own packet callback (its fan-out), and is
    encoded only while someone watches it.
    """

    def __init__(
        self,
        camera: Camera,
        encoder: H264Encoder,
        on_state: StateCallback | None = None,
        retry_max_s: float = 30.0,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        if not isinstance(camera, ReopeningCamera):
            camera = ReopeningCamera(
                camera, on_state, reopen_min_s=min(0.5, retry_max_s), reopen_max_s=retry_max_s
            )
        elif on_state is not None:
            raise ValueError("a ReopeningCamera reports through its own on_state")
        self.camera: ReopeningCamera = camera
        self.encoder = encoder
        self.wanted = wanted
        self.timing = FrameTiming()
        self._latest: CapturedFrame | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="h264-encoder")
        self._task: asyncio.Task[None] | None = None
        self.layers: list[EncoderLayer] = []

    def add_layer(
        self, encoder: H264Encoder, on_packet: PacketCallback, wanted: Callable[[], bool]
    ) -> EncoderLayer:
        """A further (lower) encoding of the same captured frames; call before ``start``."""
        layer = EncoderLayer(encoder, on_packet, wanted)
        self.layers.append(layer)
        return layer

    @property
    def camera_errors(self) -> int:
        """Failed camera opens and losses since start."""
        return self.camera.availability.failures

    @property
    def last_error(self) -> str:
        """Why the camera is unavailable now ("" while it works)."""
        return self.camera.availability.error

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
            for layer in self.layers:
                await layer.settle()
                layer.close()

    async def _run(self, on_packet: PacketCallback) -> None:
        loop = asyncio.get_running_loop()
        await self.camera.start()
        opens = self.camera.opens
        while True:
            frame = await self.camera.read()  # waits, reopening, while the camera is away
            if self.camera.opens != opens:  # a new picture after a gap: every viewer resyncs
                if opens:
                    self.encoder.force_keyframe()
                    for layer in self.layers:
                        layer.encoder.force_keyframe()
                opens = self.camera.opens
            self._latest = frame
            for layer in self.layers:
                if layer.wanted():
                    layer.offer(loop, frame)  # never waited for: a busy lower layer skips the frame
            if self.wanted is not None and not self.wanted():
                self.timing.add(frame.timestamp)
            else:
                started = time.monotonic()
                packets = await loop.run_in_executor(self._executor, self.encoder.encode, frame)
                self.timing.add(frame.timestamp, time.monotonic() - started)
                for packet in packets:
                    on_packet(packet)

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
        layers = {"layers": [layer.stats() for layer in self.layers]} if self.layers else {}
        return {
            "camera": self.camera.stats(),
            "encoder": self.encoder.stats(),
            **layers,
            **self.timing.stats(),
            "camera_errors": self.camera_errors,
            "last_error": self.last_error or None,
        }


class EncoderLayer:
    """A lower encoding in a ``FrameEncoderSource``: what its fan-out drives (keyframes, bitrate).

    It encodes on its own thread beside the first layer and is never waited for: a frame that
    arrives while its previous one is still being encoded is skipped for this layer only
    (``skipped``), so the first layer keeps the camera's rate however slow the second one is.
    """

    def __init__(self, encoder: H264Encoder, on_packet: PacketCallback, wanted: Callable[[], bool]) -> None:
        self.encoder = encoder
        self.on_packet = on_packet
        self.wanted = wanted
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="h264-layer")
        self.skipped = 0  # frames skipped because the previous encode was still running
        self._busy: asyncio.Future[list[EncodedPacket]] | None = None

    def offer(self, loop: asyncio.AbstractEventLoop, frame: CapturedFrame) -> None:
        """Encode ``frame`` unless the previous one is still encoding; packets go out when done.

        An encoder failure is raised here, at the next frame, and ends the capture loop as a failure
        of the first layer would.
        """
        busy = self._busy
        if busy is not None:
            if not busy.done():
                self.skipped += 1
                return
            busy.result()
        self._busy = loop.run_in_executor(self.executor, self.encoder.encode, frame)
        self._busy.add_done_callback(self._deliver)

    def _deliver(self, done: asyncio.Future[list[EncodedPacket]]) -> None:
        if done.cancelled() or done.exception() is not None:
            return  # raised by the next offer()
        for packet in done.result():
            self.on_packet(packet)

    async def settle(self) -> None:
        """Wait for an encode still running (its packets are delivered; a failure is dropped)."""
        busy, self._busy = self._busy, None
        if busy is not None:
            await asyncio.wait([busy])
            if not busy.cancelled():
                busy.exception()  # retrieved: the source is stopping

    def stats(self) -> dict[str, Any]:
        return {**self.encoder.stats(), "skipped": self.skipped}

    def force_keyframe(self) -> None:
        self.encoder.force_keyframe()

    def set_bitrate(self, bps: int) -> bool:
        return self.encoder.set_bitrate(bps)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.encoder.close()
