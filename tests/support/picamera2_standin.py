"""A scripted stand-in for picamera2's interface (and libcamera's Transform), for tests off the Pi.

It mirrors the parts of picamera2 0.3.2x the agent uses: ``Picamera2()`` (raising when no camera),
``create_video_configuration``/``configure``/``start``/``stop``/``close``, ``capture_request()`` with
``make_array("main")`` (YUV420 with the line stride padded to 64 like the ISP), ``get_metadata()``
(``SensorTimestamp`` in ns of CLOCK_BOOTTIME) and ``release()``; ``start_recording(encoder, output)``
/ ``stop_recording()``; ``encoders.H264Encoder(bitrate, repeat, iperiod)`` with ``force_key_frame()``
and ``firsttimestamp``; ``outputs.Output``. Frames are REAL (TestPatternCamera.render, so they carry
the burnt-in stamp), and the encoder produces REAL H.264 with libx264, calling
``output.outputframe(frame, keyframe, timestamp_us, None, False)`` from its own thread as picamera2 does.

``Script`` controls failures: ``open_failures`` makes the next N ``Picamera2()`` raise,
``fail_after_frames`` makes the running camera die after N frames (capture raises, encoding stops).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hal.camera.test_pattern import TestPatternCamera
from hal.encoder.pyav import Libx264Encoder


@dataclass
class Script:
    open_failures: int = 0
    fail_after_frames: int | None = None
    stride_align: int = 64
    opened: int = 0
    configs: list[dict[str, Any]] = field(default_factory=list)
    encoders: list[Any] = field(default_factory=list)
    forced_keyframes: int = 0


class Transform:
    """libcamera.Transform: flips and transpose."""

    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0) -> None:
        self.hflip, self.vflip, self.transpose = bool(hflip), bool(vflip), bool(transpose)


class Output:
    """picamera2.outputs.Output."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        pass


class _Request:
    def __init__(self, array: np.ndarray, sensor_ns: int) -> None:
        self._array, self._metadata, self.released = array, {"SensorTimestamp": sensor_ns}, False

    def make_array(self, name: str) -> np.ndarray:
        assert name == "main" and not self.released
        return self._array.copy()

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def release(self) -> None:
        self.released = True


def make_h264_encoder_class(script: Script) -> type:
    class H264Encoder:
        """picamera2.encoders.H264Encoder: frames in on the camera thread, outputframe on its own thread."""

        def __init__(
            self,
            bitrate: int | None = None,
            repeat: bool = True,
            iperiod: int | None = None,
            framerate: float | None = None,
            enable_sps_framerate: bool = False,
            qp: Any = None,
            profile: Any = None,
        ) -> None:
            self.bitrate, self.repeat, self.iperiod = bitrate, repeat, iperiod
            self.firsttimestamp: int | None = None
            self.output: Any = None
            self._queue: queue.Queue[tuple[Any, int] | None] = queue.Queue(maxsize=4)
            self._thread: threading.Thread | None = None
            self._x264: Libx264Encoder | None = None
            script.encoders.append(self)

        def _start(self, width: int, height: int, fps: int) -> None:
            self._x264 = Libx264Encoder(
                width,
                height,
                fps,
                self.bitrate or 2_000_000,
                self.bitrate or 2_000_000,
                keyframe_interval_s=(self.iperiod or fps) / fps,
            )
            self._thread = threading.Thread(target=self._loop, name="standin-h264", daemon=True)
            self._thread.start()

        def encode_request(self, captured: Any, sensor_ns: int) -> None:
            ts = sensor_ns // 1000
            if self.firsttimestamp is None:
                self.firsttimestamp, rel = ts, 0
            else:
                rel = ts - self.firsttimestamp
            try:
                self._queue.put_nowait((captured, rel))
            except queue.Full:
                pass  # picamera2 drops frames the encoder cannot take

        def _loop(self) -> None:
            while (item := self._queue.get()) is not None:
                captured, rel = item
                for pkt in self._x264.encode(captured):  # type: ignore[union-attr]
                    self.output.outputframe(pkt.data, pkt.keyframe, rel, None, False)

        def _stop(self) -> None:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(5)
                self._thread = None
            if self._x264 is not None:
                self._x264.close()

        def force_key_frame(self) -> None:
            script.forced_keyframes += 1
            if self._x264 is not None:
                self._x264.force_keyframe()

    return H264Encoder


def make_picamera2_class(script: Script) -> type:
    class Picamera2:
        """picamera2.Picamera2 with a test-pattern sensor."""

        def __init__(self, camera_num: int = 0) -> None:
            if script.open_failures > 0:
                script.open_failures -= 1
                raise IndexError("list index out of range")  # what picamera2 raises with no camera
            script.opened += 1
            self._config: dict[str, Any] | None = None
            self._requests: queue.Queue[_Request | Exception] = queue.Queue(maxsize=2)
            self._thread: threading.Thread | None = None
            self._running = threading.Event()
            self._encoder: Any = None
            self._dead = False

        def create_video_configuration(
            self,
            main: dict[str, Any] | None = None,
            controls: Any = None,
            transform: Any = None,
            **kwargs: Any,
        ) -> dict[str, Any]:
            main = {"size": (640, 480), "format": "XBGR8888", **(main or {})}
            return {
                "use_case": "video",
                "main": main,
                "controls": dict(controls or {}),
                "transform": transform or Transform(),
                **kwargs,
            }

        def configure(self, config: dict[str, Any]) -> None:
            if config["main"]["format"] != "YUV420":
                raise RuntimeError(f"stand-in supports YUV420 only, not {config['main']['format']}")
            width, height = config["main"]["size"]
            align = script.stride_align
            config["main"]["stride"] = (width + align - 1) // align * align
            script.configs.append(config)
            self._config = config

        def start(self) -> None:
            if self._config is None:
                raise RuntimeError("Camera has not been configured")
            self._running.set()
            self._thread = threading.Thread(target=self._sensor, name="standin-sensor", daemon=True)
            self._thread.start()

        def _sensor(self) -> None:
            width, height = self._config["main"]["size"]  # type: ignore[index]
            stride = self._config["main"]["stride"]  # type: ignore[index]
            fps = float(self._config["controls"].get("FrameRate", 30))  # type: ignore[index]
            pattern = TestPatternCamera(width, height, round(fps))
            start, index = time.monotonic(), 0
            while self._running.is_set():
                if script.fail_after_frames is not None and index >= script.fail_after_frames:
                    script.fail_after_frames = None
                    self._dead = True
                    self._put(RuntimeError("Camera frontend has timed out!"))
                    return
                time.sleep(max(0.0, start + index / fps - time.monotonic()))
                captured = pattern.render(index)
                sensor_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
                index += 1
                if self._encoder is not None:  # like picamera2: the encoder gets every frame, and
                    self._encoder.encode_request(captured, sensor_ns)  # capture_request() still works
                self._put(_Request(self._to_array(captured.frame, width, height, stride), sensor_ns))

        @staticmethod
        def _to_array(frame: Any, width: int, height: int, stride: int) -> np.ndarray:
            yuv = frame.to_ndarray()  # (h*3/2, w) planar
            y = yuv[:height]
            chroma = yuv[height:].reshape(-1)
            cw, ch, cs = width // 2, height // 2, stride // 2
            out = np.zeros(stride * height + 2 * cs * ch, np.uint8)
            out[: stride * height].reshape(height, stride)[:, :width] = y
            for i in range(2):
                plane = chroma[i * cw * ch : (i + 1) * cw * ch].reshape(ch, cw)
                base = stride * height + i * cs * ch
                out[base : base + cs * ch].reshape(ch, cs)[:, :cw] = plane
            return out.reshape(height * 3 // 2, stride)

        def _put(self, item: Any) -> None:
            try:
                self._requests.put_nowait(item)
            except queue.Full:  # like libcamera: a request nobody takes is recycled
                try:
                    self._requests.get_nowait()
                except queue.Empty:
                    pass
                self._requests.put_nowait(item)

        def capture_request(self) -> _Request:
            if self._dead and self._requests.empty():
                raise RuntimeError("Camera frontend has timed out!")
            deadline = time.monotonic() + 5
            while True:
                try:
                    item = self._requests.get(timeout=0.05)
                    break
                except queue.Empty:
                    if not self._running.is_set() or time.monotonic() > deadline:
                        raise RuntimeError("camera is not running") from None
            if isinstance(item, Exception):
                raise item
            return item

        def start_recording(self, encoder: Any, output: Any) -> None:
            width, height = self._config["main"]["size"]  # type: ignore[index]
            encoder.output = output
            encoder._start(width, height, round(self._config["controls"].get("FrameRate", 30)))  # type: ignore[index]
            output.start()
            self._encoder = encoder
            self.start()

        def stop_recording(self) -> None:
            self.stop()
            if self._encoder is not None:
                self._encoder._stop()
                self._encoder.output.stop()
                self._encoder = None

        def stop(self) -> None:
            self._running.clear()
            if self._thread is not None:
                self._thread.join(5)
                self._thread = None

        def close(self) -> None:
            self.stop()

    return Picamera2


def install(monkeypatch: Any, script: Script | None = None) -> Script:
    """Inject modules ``picamera2``, ``picamera2.encoders``, ``picamera2.outputs``, ``libcamera``."""
    script = script or Script()
    pkg = types.ModuleType("picamera2")
    pkg.__path__ = []  # a package, so submodule imports resolve through sys.modules
    pkg.Picamera2 = make_picamera2_class(script)
    encoders = types.ModuleType("picamera2.encoders")
    encoders.H264Encoder = make_h264_encoder_class(script)
    outputs = types.ModuleType("picamera2.outputs")
    outputs.Output = Output
    libcamera = types.ModuleType("libcamera")
    libcamera.Transform = Transform
    pkg.encoders, pkg.outputs = encoders, outputs
    for name, module in (
        ("picamera2", pkg),
        ("picamera2.encoders", encoders),
        ("picamera2.outputs", outputs),
        ("libcamera", libcamera),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return script
