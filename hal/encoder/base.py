"""H.264 encoder HAL interface: Annex-B access units, Constrained Baseline, SPS/PPS on every IDR."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

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
