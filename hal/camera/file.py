"""A camera that loops a video file (development, demos, reproducible benchmarks)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av

from hal.camera.base import Camera, CameraError, CapturedFrame
from hal.camera.frames import output_size, scale_and_rotate
from hal.camera.pacing import FrameClock


class FileCamera(Camera):
    """Decodes ``path`` with PyAV on one worker thread and loops it forever.

    Frames are delivered on a fixed schedule from the monotonic clock at ``fps`` (the file's own
    rate is ignored); a reader that falls behind skips the slots it missed (``stats()['skipped']``)
    instead of queueing. Each frame is scaled to ``width`` x ``height`` yuv420p, then rotated;
    its timestamp is the delivery time. A missing or undecodable file raises ``CameraError``.
    """

    def __init__(
        self, path: str | Path, width: int = 1280, height: int = 720, fps: int = 30, rotation: int = 0
    ) -> None:
        self.path = Path(path)
        self.rotation = rotation
        self._src_size = (width, height)
        self.width, self.height = output_size(width, height, rotation)
        self.fps = fps
        self._container: Any = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._clock = FrameClock(fps)
        self._loops = 0
        self._running = False

    async def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="file-camera")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except CameraError:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._clock.restart()
        self._running = True

    def _open(self) -> None:
        if not self.path.is_file():
            raise CameraError(f"video file {self.path} does not exist")
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as exc:
            raise CameraError(f"cannot open video file {self.path}: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise CameraError(f"video file {self.path} has no video stream")
        self._container = container
        self._frames = container.decode(video=0)

    async def stop(self) -> None:
        self._running = False
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
            executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._frames = None

    async def read(self) -> CapturedFrame:
        if not self._running or self._executor is None:
            raise RuntimeError("camera not started")
        index = await self._clock.next_slot()
        frame = await asyncio.get_running_loop().run_in_executor(self._executor, self._next_frame)
        return CapturedFrame(frame=frame, index=index, timestamp=time.monotonic())

    def _next_frame(self) -> av.VideoFrame:
        """The next decoded frame, rewinding at the end; runs on the worker thread."""
        for attempt in range(2):
            try:
                raw = next(self._frames)  # type: ignore[arg-type]
            except StopIteration:
                if attempt:
                    break
                self._rewind()
                continue
            except av.error.FFmpegError as exc:
                raise CameraError(f"cannot decode {self.path}: {exc}") from exc
            return scale_and_rotate(raw, *self._src_size, self.rotation)
        raise CameraError(f"video file {self.path} has no decodable video frames")

    def _rewind(self) -> None:
        self._loops += 1
        try:
            self._container.seek(0)
            self._frames = self._container.decode(video=0)
        except av.error.FFmpegError:  # not seekable: reopen
            self._close()
            self._open()

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "file",
            "path": str(self.path),
            "frames": self._clock.index,
            "skipped": self._clock.skipped,
            "loops": self._loops,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
        }
