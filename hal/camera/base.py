"""Camera HAL interface: raw frames with their capture timestamps."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import av


@dataclass
class CapturedFrame:
    frame: av.VideoFrame  # yuv420p unless the backend says otherwise
    index: int  # frame counter since start
    timestamp: float  # time.monotonic() at capture


class CameraError(RuntimeError):
    """The camera is gone or cannot deliver the configured mode."""


class Camera(abc.ABC):
    """Frame source. ``read()`` awaits the next frame at the configured rate."""

    width: int
    height: int
    fps: int

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def read(self) -> CapturedFrame: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        return {}
