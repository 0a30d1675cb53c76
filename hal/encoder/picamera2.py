"""The Pi 4's hardware H.264 encoder through picamera2, fed zero-copy by the Pi camera.

Written against picamera2 0.3.2x, whose ``Output.outputframe(frame, keyframe=True, timestamp=None,
packet=None, audio=False)`` is called on the encoder's own thread with ``timestamp`` in
microseconds since the encoder's first frame (``Encoder.firsttimestamp``, microseconds of the
sensor clock), and whose ``H264Encoder(bitrate, repeat, iperiod, ...)`` has ``force_key_frame()``.
picamera2 is imported lazily: the module loads anywhere, the source needs it only once running.

The camera side (opening, configuring, sensor timestamps, YUV420 arrays) is the picamera2 camera
backend's, ``hal.camera.picamera2``; this backend only adds recording through the encoder. It is
an ``EncodedVideoSource`` (``hal.encoder.base``) rather than an ``H264Encoder``: frames never reach
Python on their way to the encoder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from hal.availability import Availability, Backoff, StateCallback
from hal.camera.base import CameraError, CapturedFrame
from hal.camera.picamera2 import SensorClock, close_picamera2, open_picamera2, yuv420_array_to_frame
from hal.camera.settings import CameraSettings
from hal.encoder.annexb import ParameterSetKeeper
from hal.encoder.base import EncodedPacket, PacketCallback
from hal.encoder.settings import EncoderSettings
from hal.encoder.timing import FrameTiming
from hal.tasks import cancel_and_wait

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000


def _make_output_class() -> type:
    """A picamera2 ``Output`` subclass (built lazily: picamera2 is imported only on the Pi)."""
    from picamera2.outputs import Output

    class PacketOutput(Output):
        """Receives encoded frames on picamera2's encoder thread and forwards them to asyncio."""

        def __init__(self, handler: Callable[[bytes, bool, int | None], None]) -> None:
            super().__init__()
            self._handler = handler

        def outputframe(
            self,
            frame: Any,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            if audio or not self.recording:
                return
            self._handler(bytes(frame), keyframe, timestamp)

    return PacketOutput


class Picamera2H264Source:
    """``EncodedVideoSource`` on the Pi 4's hardware H.264 encoder, fed zero-copy by picamera2.

    Bitrate and GOP are fixed at start (``set_bitrate`` returns False); ``force_keyframe`` asks the
    encoder for an IDR; every IDR leaves with SPS/PPS (``ParameterSetKeeper``). The camera follows
    the HAL's availability contract (``hal.availability``, as ``ReopeningCamera`` does for the
    frame-in cameras): when it fails to open, or its watchdog sees no frame for
    ``stall_timeout_s`` (picamera2 reports no error when frames simply stop),
    ``on_state(False, "camera unavailable: ...")`` is called and the camera is reopened with
    backoff from 0.5 s doubling to ``retry_max_s``; ``on_state(True, "camera is back")`` with the
    first frame after the outage. 90/270 rotation cannot be applied on this zero-copy path and is
    ignored with a warning.
    """

    def __init__(
        self,
        camera: CameraSettings,
        encoder: EncoderSettings,
        reason: str = "",
        on_state: StateCallback | None = None,
        retry_max_s: float = 30.0,
        stall_timeout_s: float = 3.0,
    ) -> None:
        self.camera, self.encoder_cfg = camera, encoder
        self.name, self.reason = "picamera2", reason
        self.availability = Availability(
            "Pi camera", on_state, repeat_failures=True, backoff=Backoff(min(0.5, retry_max_s), retry_max_s)
        )
        self.stall_timeout_s = stall_timeout_s
        self._gop = max(1, round(encoder.keyframe_interval_s * camera.fps))
        self._task: asyncio.Task[None] | None = None
        self._picam2: Any = None
        self._encoder: Any = None
        self._params = ParameterSetKeeper()
        self._clock = SensorClock()
        self._last_packet = 0.0
        self._got_packet = False
        self.frames = self.keyframes = self.bytes = 0
        self._snapshots = 0
        self._timing = FrameTiming()
        if camera.rotation in (90, 270):
            log.warning(
                "rotation %d is not possible on the picamera2 hardware-encoder path; "
                "use encoder.backend = 'v4l2m2m' for software rotation",
                camera.rotation,
            )

    @property
    def camera_errors(self) -> int:
        """Failed camera opens and stalls since start."""
        return self.availability.failures

    @property
    def last_error(self) -> str:
        """Why the camera is unavailable now ("" while it works)."""
        return self.availability.error

    async def start(self, on_packet: PacketCallback) -> None:
        self._timing = FrameTiming()
        self.availability.bind()
        self.availability.state = "starting"
        self._task = asyncio.create_task(self._run(on_packet), name="picamera2-h264")

    async def _run(self, on_packet: PacketCallback) -> None:
        loop = asyncio.get_running_loop()
        availability = self.availability
        while True:
            try:
                self._got_packet = False
                await asyncio.to_thread(self._open, loop, on_packet)
                availability.backoff.opened()
                self._last_packet = time.monotonic()
                while True:  # watchdog: picamera2 reports no error when frames simply stop
                    await asyncio.sleep(min(0.5, self.stall_timeout_s / 2))
                    if time.monotonic() - self._last_packet > self.stall_timeout_s:
                        raise CameraError(f"no frames from the Pi camera for {self.stall_timeout_s:.1f} s")
                    if self._got_packet and availability.state != "running":
                        availability.running("camera is back")
            except CameraError as exc:
                availability.failed(f"camera unavailable: {exc}")
                await asyncio.to_thread(self._close)
                await asyncio.sleep(availability.backoff.next_delay())

    def _open(self, loop: asyncio.AbstractEventLoop, on_packet: PacketCallback) -> None:
        """Open camera and encoder and start recording (blocking)."""
        cam = self.camera
        rotation = 180 if cam.rotation == 180 else 0
        picam2 = open_picamera2(cam.width, cam.height, cam.fps, rotation)
        try:
            from picamera2.encoders import H264Encoder

            encoder = H264Encoder(bitrate=self.encoder_cfg.bitrate, repeat=True, iperiod=self._gop)
            output = _make_output_class()(self._make_handler(loop, on_packet))
            self._clock = SensorClock()
            self._params = ParameterSetKeeper()
            self._encoder = encoder  # before frames flow: the handler reads its firsttimestamp
            picam2.start_recording(encoder, output)
        except Exception as exc:
            self._encoder = None
            close_picamera2(picam2)
            raise CameraError(f"cannot start H.264 recording: {exc}") from exc
        self._picam2 = picam2

    def _make_handler(
        self, loop: asyncio.AbstractEventLoop, on_packet: PacketCallback
    ) -> Callable[[bytes, bool, int | None], None]:
        index = 0

        def handle(data: bytes, keyframe: bool, timestamp_us: int | None) -> None:
            """On picamera2's encoder thread: wrap the access unit and pass it to the event loop."""
            nonlocal index
            first = getattr(self._encoder, "firsttimestamp", None) if self._encoder is not None else None
            if timestamp_us is not None and first is not None:
                capture_ts = self._clock.to_monotonic((first + timestamp_us) * 1000)
            else:
                capture_ts = time.monotonic()
            fixed, idr = self._params.fix(data)
            packet = EncodedPacket(
                data=fixed,
                pts=round(capture_ts * VIDEO_CLOCK),
                keyframe=idr,
                capture_ts=capture_ts,
                frame_index=index,
            )
            index += 1
            try:
                loop.call_soon_threadsafe(self._deliver, packet, on_packet)
            except RuntimeError:
                pass  # the loop has closed

        return handle

    def _deliver(self, packet: EncodedPacket, on_packet: PacketCallback) -> None:
        self._last_packet = time.monotonic()
        self._got_packet = True
        self.frames += 1
        self.keyframes += packet.keyframe
        self.bytes += len(packet.data)
        self._timing.add(packet.capture_ts)  # encode time is not visible on the hardware path
        on_packet(packet)

    def _close(self) -> None:
        picam2, self._picam2, self._encoder = self._picam2, None, None
        if picam2 is not None:
            try:
                picam2.stop_recording()
            except Exception:
                log.debug("stop_recording", exc_info=True)
            close_picamera2(picam2)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.availability.state = "stopped"
        await asyncio.to_thread(self._close)

    async def capture_frame(self) -> CapturedFrame | None:
        """One raw frame from the running camera (picamera2 serves requests while recording)."""
        picam2 = self._picam2
        if picam2 is None:
            return None
        return await asyncio.to_thread(self._capture_main, picam2)

    def _capture_main(self, picam2: Any) -> CapturedFrame | None:
        try:
            request = picam2.capture_request()
        except Exception as exc:  # the camera is failing; the watchdog reports it
            log.warning("capture_frame: %s", exc)
            return None
        try:
            array = request.make_array("main")
            sensor_ns = request.get_metadata().get("SensorTimestamp")
        finally:
            request.release()
        frame = yuv420_array_to_frame(array, self.camera.width, self.camera.height)
        timestamp = self._clock.to_monotonic(sensor_ns) if sensor_ns else time.monotonic()
        self._snapshots += 1
        return CapturedFrame(frame=frame, index=self._snapshots, timestamp=timestamp)

    def force_keyframe(self) -> None:
        encoder = self._encoder
        if encoder is not None and hasattr(encoder, "force_key_frame"):
            encoder.force_key_frame()

    def set_bitrate(self, bps: int) -> bool:
        return False  # the V4L2 encoder takes its bitrate at start only

    def healthy(self) -> bool:
        """Alive, and packets flow or a known camera failure is being retried (see FrameEncoderSource)."""
        if self._task is None or self._task.done():
            return False
        return bool(self.last_error) or (
            self._picam2 is not None and time.monotonic() - self._last_packet < 5.0
        )

    def stats(self) -> dict[str, Any]:
        timing = self._timing.stats()
        return {
            "camera": {
                "backend": "picamera2",
                "width": self.camera.width,
                "height": self.camera.height,
                "fps": self.camera.fps,
                "state": self.availability.state,
            },
            "encoder": {
                "backend": self.name,
                "reason": self.reason,
                "bitrate": self.encoder_cfg.bitrate,
                "frames": self.frames,
                "keyframes": self.keyframes,
                "bytes": self.bytes,
                "runtime_bitrate": False,
            },
            **timing,
            "camera_errors": self.camera_errors,
            "last_error": self.last_error or None,
        }
