"""The device's own video QoS at the encoder output: what leaves the encoder, before any network.

``EncoderOutput.add(now, capture_ts)`` for every access unit the fan-out publishes. Over the last
``WINDOW`` units it reports the output frame rate, the frame-interval jitter at the encoder output
(standard deviation of the intervals between published units: capture jitter plus encoder
queueing variation) and capture -> encoder output p50/p95 (encode time plus queueing). Beside the
capture-side jitter (``video.frame_interval_jitter_ms``) it tells whether a stutter starts at the
camera, at the encoder, or later.
"""

from __future__ import annotations

import collections
import statistics
from typing import Any

WINDOW = 300


class EncoderOutput:
    def __init__(self, window: int = WINDOW) -> None:
        self.times: collections.deque[float] = collections.deque(maxlen=window)
        self.delays: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, now: float, capture_ts: float) -> None:
        self.times.append(now)
        self.delays.append(max(0.0, now - capture_ts))

    def stats(self) -> dict[str, Any]:
        times = list(self.times)
        intervals = [b - a for a, b in zip(times, times[1:], strict=False)]
        delays = sorted(self.delays)
        pick = lambda q: round(delays[min(len(delays) - 1, int(q * len(delays)))] * 1000, 2)  # noqa: E731
        return {
            "output_fps": round(len(intervals) / (times[-1] - times[0]), 2)
            if len(times) > 1 and times[-1] > times[0]
            else None,
            "output_interval_jitter_ms": round(statistics.pstdev(intervals) * 1000, 2)
            if len(intervals) > 1
            else None,
            "capture_to_output_p50_ms": pick(0.5) if delays else None,
            "capture_to_output_p95_ms": pick(0.95) if delays else None,
        }
