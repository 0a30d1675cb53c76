"""H.264 encoder HAL interfaces: Annex-B access units, Constrained Baseline, SPS/PPS on every IDR.

``H264Encoder`` encodes raw frames (frame in, packets out). ``EncodedVideoSource`` is what the
media fan-out consumes: a running source of packets, either a camera plus an ``H264Encoder``
(``device_agent.media.video_source.FrameEncoderSource``) or a camera that encodes by itself
(``hal.encoder.picamera2.Picamera2H264Source``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hal.camera.base import CapturedFrame


@dataclass
class EncodedPacket:
    data: bytes  # Annex-B, one access unit; SPS+PPS precede every IDR
    pts: int  # 90 kHz clock
    keyframe: bool
    capture_ts: float  # time.monotonic() the source frame was captured
    frame_index: int


class H264Encoder(abc.ABC):
    """One encoder per camera; ``encode`` blocks and is called from a worker thread."""

    name: str  # "picamera2" | "v4l2m2m" | "libx264"
    reason: str  # why the probe chose this backend (logged and shown in health)

    @abc.abstractmethod
    def encode(self, frame: CapturedFrame) -> list[EncodedPacket]: ...

    @abc.abstractmethod
    def force_keyframe(self) -> None:
        """The next encoded frame is an IDR (with SPS/PPS)."""

    def set_bitrate(self, bps: int) -> bool:
        """Change the target bitrate at run time; False if the backend cannot."""
        return False

    @property
    def bitrate(self) -> int:
        return 0

    @abc.abstractmethod
    def close(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        return {"backend": self.name, "reason": self.reason, "bitrate": self.bitrate}


PacketCallback = Callable[[EncodedPacket], None]


class EncodedVideoSource(Protocol):
    """Produces H.264 access units for the fan-out (``on_packet`` runs on the event loop).

    A camera that goes missing is no exception here: the source reports it through its
    ``on_state(available, message)`` callback, reopens with backoff (``hal.availability``) and
    ``healthy()`` stays True while it does; ``stats()`` carries ``camera_errors`` and ``last_error``.
    """

    async def start(self, on_packet: PacketCallback) -> None: ...

    async def stop(self) -> None: ...

    def force_keyframe(self) -> None: ...

    def set_bitrate(self, bps: int) -> bool: ...

    async def capture_frame(self) -> CapturedFrame | None:
        """A current raw frame (snapshots, self-tests) without opening the camera twice; None if none yet."""
        ...

    def healthy(self) -> bool: ...

    def stats(self) -> dict[str, Any]: ...
