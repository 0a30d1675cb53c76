"""Input level metering: RMS and peak in dBFS over a sliding window of periods."""

from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np

FLOOR_DBFS = -120.0  # reported for digital silence (keeps health JSON finite)
FULL_SCALE = 32768.0


def dbfs(amplitude: float) -> float:
    """Convert a linear amplitude relative to full scale (1.0) to dBFS, floored at -120."""
    if amplitude <= 0.0:
        return FLOOR_DBFS
    return max(FLOOR_DBFS, 20.0 * math.log10(amplitude))


class LevelMeter:
    """Thread-safe level meter: ``update()`` per period, ``levels()`` over the last ``window`` periods.

    RMS is relative to a full-scale square wave, so a full-scale sine reads -3 dBFS.
    """

    def __init__(self, window_periods: int = 100) -> None:
        self._lock = threading.Lock()
        self._window: deque[tuple[float, int, float]] = deque(maxlen=max(1, window_periods))

    def update(self, samples: np.ndarray) -> None:
        """Account one period of int16 samples (any shape)."""
        if samples.size == 0:
            return
        x = samples.astype(np.float64, copy=False)
        sum_sq = float(np.dot(x.ravel(), x.ravel()))
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        with self._lock:
            self._window.append((sum_sq, int(samples.size), peak))

    def levels(self) -> tuple[float, float]:
        """(rms_dbfs, peak_dbfs) over the window; the floor when nothing was measured yet."""
        with self._lock:
            items = list(self._window)
        if not items:
            return FLOOR_DBFS, FLOOR_DBFS
        total_sq = sum(i[0] for i in items)
        count = sum(i[1] for i in items)
        peak = max(i[2] for i in items)
        rms = math.sqrt(total_sq / count) / FULL_SCALE
        return round(dbfs(rms), 2), round(dbfs(peak / FULL_SCALE), 2)

    def reset(self) -> None:
        with self._lock:
            self._window.clear()
