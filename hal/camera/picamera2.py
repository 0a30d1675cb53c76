"""Raspberry Pi cameras through picamera2 (libcamera): raw frames, or H.264 from the Pi 4's encoder.

Written against picamera2 0.3.2x (Raspberry Pi OS Bookworm, ``python3-picamera2``), whose
``Output.outputframe(frame, keyframe=True, timestamp=None, packet=None, audio=False)`` is called on
the encoder's own thread with ``timestamp`` in microseconds since the encoder's first frame
(``Encoder.firsttimestamp``, microseconds of the sensor clock), and whose ``H264Encoder(bitrate,
repeat, iperiod, ...)`` has ``force_key_frame()``. picamera2 and libcamera are imported lazily: the
module loads anywhere, the classes need them only at ``start()``.

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
from collections.abc import Callable
from typing import Any

import numpy as np

from device_agent.config import CameraSection, EncoderSection
from device_agent.tasks import cancel_and_wait
from hal.camera.base import Camera, CameraError, CapturedFrame
from hal.camera.frames import LatestFrameSlot, output_size, planes_to_frame, rotate_frame
from hal.encoder.annexb import ParameterSetKeeper
from hal.encoder.base import EncodedPacket

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
PacketCallback = Callable[[EncodedPacket], None]
StateCallback = Callable[[bool, str], None]


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
    y = flat[:stride * height].reshape(height, stride)[:, :width]
    u = flat[stride * height:stride * height + cs * ch].reshape(ch, cs)[:, :width // 2]
    v = flat[stride * height + cs * ch:stride * height + 2 * cs * ch].reshape(ch, cs)[:, :width // 2]
    return planes_to_frame(np.ascontiguousarray(y), np.ascontiguousarray(u), np.ascontiguousarray(v))


def _video_configuration(picam2: Any, width: int, height: int, fps: int, rotation: int) -> Any:
    """A picamera2 video configuration: YUV420 main stream, frame rate, 180-degree flip in the ISP."""
    from libcamera import Transform

    transform = Transform(hflip=1, vflip=1) if rotation == 180 else Transform()
    return picam2.create_video_configuration(main={"size": (width, height), "format": "YUV420"},
                                             controls={"FrameRate": float(fps)}, transform=transform)


def _open_camera(width: int, height: int, fps: int, rotation: int) -> Any:
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
        _close_quietly(picam2)
        raise CameraError(f"camera refused {width}x{height}@{fps}: {exc}") from exc
    return picam2


def _close_quietly(picam2: Any) -> None:
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
        self._picam2 = await asyncio.to_thread(_open_camera, width, height, self.fps, self.rotation)
        try:
            await asyncio.to_thread(self._picam2.start)
        except Exception as exc:
            await asyncio.to_thread(_close_quietly, self._picam2)
            self._picam2 = None
            raise CameraError(f"camera failed to start: {exc}") from exc
        self._clock = SensorClock()
        self._slot = LatestFrameSlot(asyncio.get_running_loop())
        self._stopping.clear()
        self._thread = threading.Thread(target=self._capture, args=(self._picam2, self._slot),
                                        name="picamera2-capture", daemon=True)
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
            frame = rotate_frame(yuv420_array_to_frame(arr, width, height), self.rotation if
                                 self.rotation in (90, 270) else 0)
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
            await asyncio.to_thread(_close_quietly, picam2)  # unblocks capture_request
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
        if self._slot is not None:
            self._drops_total += self._slot.drops
            self._slot = None

    def stats(self) -> dict[str, Any]:
        drops = self._drops_total + (self._slot.drops if self._slot else 0)
        return {"backend": "picamera2", "frames": self._index, "dropped": drops,
                "width": self.width, "height": self.height, "fps": self.fps}


def _make_output_class() -> type:
    """A picamera2 ``Output`` subclass (built lazily: picamera2 is imported only on the Pi)."""
    from picamera2.outputs import Output

    class PacketOutput(Output):  # type: ignore[misc, valid-type]
        """Receives encoded frames on picamera2's encoder thread and forwards them to asyncio."""

        def __init__(self, handler: Callable[[bytes, bool, int | None], None]) -> None:
            super().__init__()
            self._handler = handler

        def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
                        packet: Any = None, audio: bool = False) -> None:
            if audio or not self.recording:
                return
            self._handler(bytes(frame), keyframe, timestamp)

    return PacketOutput


class Picamera2H264Source:
    """``EncodedVideoSource`` on the Pi 4's hardware H.264 encoder, fed zero-copy by picamera2.

    Bitrate and GOP are fixed at start (``set_bitrate`` returns False); ``force_keyframe`` asks the
    encoder for an IDR; every IDR leaves with SPS/PPS (``ParameterSetKeeper``). When the camera
    fails to open or stops delivering for ``stall_timeout_s``, ``on_state(False, message)`` is
    called and the camera is reopened with exponential backoff; ``on_state(True, ...)`` when back.
    90/270 rotation cannot be applied on this zero-copy path and is ignored with a warning.
    """

    def __init__(self, camera: CameraSection, encoder: EncoderSection, reason: str = "",
                 on_state: StateCallback | None = None, retry_max_s: float = 30.0,
                 stall_timeout_s: float = 3.0) -> None:
        self.camera, self.encoder_cfg = camera, encoder
        self.name, self.reason = "picamera2", reason
        self.on_state = on_state
        self.retry_max_s, self.stall_timeout_s = retry_max_s, stall_timeout_s
        self._gop = max(1, round(encoder.keyframe_interval_s * camera.fps))
        self._task: asyncio.Task[None] | None = None
        self._picam2: Any = None
        self._encoder: Any = None
        self._params = ParameterSetKeeper()
        self._clock = SensorClock()
        self._last_packet = 0.0
        self._got_packet = False
        self.frames = self.keyframes = self.bytes = 0
        self.camera_errors = 0
        self.last_error = ""
        self._snapshots = 0
        self._timing: Any = None
        if camera.rotation in (90, 270):
            log.warning("rotation %d is not possible on the picamera2 hardware-encoder path; "
                        "use encoder.backend = 'v4l2m2m' for software rotation", camera.rotation)

    async def start(self, on_packet: PacketCallback) -> None:
        from device_agent.media.video_source import FrameTiming

        self._timing = FrameTiming()
        self._task = asyncio.create_task(self._run(on_packet), name="picamera2-h264")

    async def _run(self, on_packet: PacketCallback) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.5
        while True:
            try:
                self._got_packet = False
                await asyncio.to_thread(self._open, loop, on_packet)
                self._last_packet = time.monotonic()
                while True:  # watchdog: picamera2 reports no error when frames simply stop
                    await asyncio.sleep(min(0.5, self.stall_timeout_s / 2))
                    if time.monotonic() - self._last_packet > self.stall_timeout_s:
                        raise CameraError(f"no frames from the Pi camera for {self.stall_timeout_s:.1f} s")
                    if self.last_error and self._got_packet:
                        self.last_error = ""
                        self._state(True, "camera is back")
                    if self._got_packet:
                        backoff = 0.5
            except CameraError as exc:
                self.camera_errors += 1
                self.last_error = str(exc)
                log.error("picamera2 failed: %s (retrying in %.1f s)", exc, backoff)
                self._state(False, f"camera unavailable: {exc}")
                await asyncio.to_thread(self._close)
                await asyncio.sleep(backoff)
                backoff = min(self.retry_max_s, backoff * 2)

    def _state(self, available: bool, message: str) -> None:
        if self.on_state is not None:
            self.on_state(available, message)

    def _open(self, loop: asyncio.AbstractEventLoop, on_packet: PacketCallback) -> None:
        """Open camera and encoder and start recording (blocking)."""
        cam = self.camera
        rotation = 180 if cam.rotation == 180 else 0
        picam2 = _open_camera(cam.width, cam.height, cam.fps, rotation)
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
            _close_quietly(picam2)
            raise CameraError(f"cannot start H.264 recording: {exc}") from exc
        self._picam2 = picam2

    def _make_handler(self, loop: asyncio.AbstractEventLoop,
                      on_packet: PacketCallback) -> Callable[[bytes, bool, int | None], None]:
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
            packet = EncodedPacket(data=fixed, pts=round(capture_ts * VIDEO_CLOCK), keyframe=idr,
                                   capture_ts=capture_ts, frame_index=index)
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
            _close_quietly(picam2)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
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
        return bool(self.last_error) or (self._picam2 is not None and time.monotonic() - self._last_packet < 5.0)

    def stats(self) -> dict[str, Any]:
        timing = self._timing.stats() if self._timing is not None else {}
        return {"camera": {"backend": "picamera2", "width": self.camera.width, "height": self.camera.height,
                           "fps": self.camera.fps},
                "encoder": {"backend": self.name, "reason": self.reason, "bitrate": self.encoder_cfg.bitrate,
                            "frames": self.frames, "keyframes": self.keyframes, "bytes": self.bytes,
                            "runtime_bitrate": False},
                **timing, "camera_errors": self.camera_errors, "last_error": self.last_error or None}
