"""USB (UVC) cameras through PyAV's ``v4l2`` input device."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import av

from hal.camera.base import Camera, CameraError, CapturedFrame
from hal.camera.frames import LatestFrameSlot, output_size, scale_and_rotate

log = logging.getLogger(__name__)

Opener = Callable[..., Any]  # av.open's interface: (file, format=..., options=...) -> InputContainer
INPUT_FORMATS = ("mjpeg", "yuyv422")  # preference order


def v4l2_options(width: int, height: int, fps: int, input_format: str) -> dict[str, str]:
    """FFmpeg v4l2 demuxer options for one capture mode."""
    return {"video_size": f"{width}x{height}", "framerate": str(fps), "input_format": input_format}


class V4L2Camera(Camera):
    """A V4L2 capture device read by a dedicated thread (blocking demux + decode).

    At start the camera is opened in MJPEG (little USB bandwidth, the common choice of UVC cameras
    at 720p) when it delivers that format at the requested size, else in raw YUYV. The thread
    converts each frame to yuv420p ``width`` x ``height``, rotates it, stamps it with
    ``time.monotonic()`` and hands the newest one to asyncio; frames the reader did not take in time
    are dropped and counted. A device that vanishes (unplugged, driver reset) raises ``CameraError``
    from ``read()``; the video source reports it and reopens with backoff.
    """

    def __init__(
        self,
        device: str = "/dev/video0",
        width: int = 1280,
        height: int = 720,
        fps: int = 30,
        rotation: int = 0,
        opener: Opener = av.open,
    ) -> None:
        self.device = device
        self.rotation = rotation
        self._src_size = (width, height)
        self.width, self.height = output_size(width, height, rotation)
        self.fps = fps
        self._opener = opener
        self._container: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._slot: LatestFrameSlot | None = None
        self.input_format = ""
        self._index = 0
        self._errors = 0
        self._drops_total = 0

    async def start(self) -> None:
        self._container, self.input_format = await asyncio.to_thread(self._open)
        self._slot = LatestFrameSlot(asyncio.get_running_loop())
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._capture, args=(self._container, self._slot), name=f"v4l2-{self.device}", daemon=True
        )
        self._thread.start()
        log.info("camera %s open: %s %dx%d@%d", self.device, self.input_format, *self._src_size, self.fps)

    def _open(self) -> tuple[Any, str]:
        """Open the device in the first input format it delivers at the requested size."""
        width, height = self._src_size
        problems = []
        for i, fmt in enumerate(INPUT_FORMATS):
            options = v4l2_options(width, height, self.fps, fmt)
            try:
                container = self._opener(self.device, format="v4l2", options=options)
            except (av.error.FFmpegError, OSError) as exc:
                problems.append(f"{fmt}: {exc}")
                continue
            stream = container.streams.video[0] if container.streams.video else None
            got = (stream.codec_context.width, stream.codec_context.height) if stream is not None else None
            if got is not None and (got == (width, height) or i == len(INPUT_FORMATS) - 1):
                if got != (width, height):
                    log.warning(
                        "camera %s delivers %dx%d, not %dx%d: frames are scaled",
                        self.device,
                        *got,
                        width,
                        height,
                    )
                return container, fmt
            problems.append(f"{fmt}: driver offers {got[0]}x{got[1]}" if got else f"{fmt}: no video stream")
            container.close()
        raise CameraError(
            f"cannot open camera {self.device} at {width}x{height}@{self.fps}: " + "; ".join(problems)
        )

    def _capture(self, container: Any, slot: LatestFrameSlot) -> None:
        """Capture thread: demux + decode until stopped or the device fails."""
        try:
            for packet in container.demux(video=0):
                if self._stopping.is_set():
                    return
                for raw in packet.decode():
                    frame = scale_and_rotate(raw, *self._src_size, self.rotation)
                    slot.put(CapturedFrame(frame=frame, index=self._index, timestamp=time.monotonic()))
                    self._index += 1
            if not self._stopping.is_set():
                slot.fail(f"camera {self.device} stopped delivering frames (end of stream)")
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            if not self._stopping.is_set():
                log.error("camera %s failed: %s", self.device, exc)
                slot.fail(f"camera {self.device} vanished or failed: {exc}")

    async def read(self) -> CapturedFrame:
        if self._slot is None:
            raise RuntimeError("camera not started")
        try:
            return await self._slot.get()
        except CameraError:
            self._errors += 1
            raise

    async def stop(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        container, self._container = self._container, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)  # one frame at most: the device is paced
            if thread.is_alive():  # stuck in the driver: closing under it could crash; let it go
                log.warning("camera %s capture thread did not stop; leaving it", self.device)
                container = None
        if container is not None:
            try:
                container.close()
            except (av.error.FFmpegError, OSError):
                pass  # already gone
        if self._slot is not None:
            self._drops_total += self._slot.drops
            self._slot = None

    def stats(self) -> dict[str, Any]:
        drops = self._drops_total + (self._slot.drops if self._slot else 0)
        return {
            "backend": "v4l2",
            "device": self.device,
            "input_format": self.input_format,
            "frames": self._index,
            "dropped": drops,
            "errors": self._errors,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
        }
