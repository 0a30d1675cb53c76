"""Frame-rate, jitter and encode-time statistics of an encoded video source (for health)."""

from __future__ import annotations

import collections
import statistics
from typing import Any


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
        intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        span = stamps[-1] - stamps[0]
        return {
            "fps": round((len(stamps) - 1) / span, 2) if span > 0 else 0.0,
            "frame_interval_jitter_ms": round(statistics.pstdev(intervals) * 1000, 2),
            "encode_ms": encode,
        }

    def last(self) -> float | None:
        return self.stamps[-1] if self.stamps else None
