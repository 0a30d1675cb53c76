"""Base for sources that generate audio in software and pace it by the monotonic clock."""

from __future__ import annotations

import abc
import asyncio
import time
from typing import Any

import numpy as np

from hal.audio.base import AudioChunk, AudioSource, AudioSourceError
from hal.audio.level import LevelMeter


class PacedSource(AudioSource):
    """Delivers period ``n`` no earlier than ``t0 + (n + 1) * period / rate`` on ``time.monotonic()``.

    Each chunk's timestamp is ``t0 + n * period / rate`` computed from integers, so timestamps never
    drift however long the source runs. A reader that falls more than ``max_lag_s`` behind is moved
    to the present (like a device overrun): the gap is counted in ``stats()["overruns"]``.

    ``delay_s`` holds every period that much longer before delivering it, with the same timestamp:
    a capture path with a deep buffer (its driver dates samples at capture, then they wait).
    ``clock_ppm`` makes the sample clock run that many parts per million fast (negative: slow)
    against ``time.monotonic()``, as a sound card's crystal does: ``rate`` samples take
    ``1 / (1 + clock_ppm / 1e6)`` s, and each chunk is dated (and delivered) by the real clock.
    """

    backend = "paced"

    def __init__(
        self,
        rate: int,
        channels: int,
        period_frames: int,
        *,
        max_lag_s: float = 0.5,
        delay_s: float = 0.0,
        clock_ppm: float = 0.0,
    ) -> None:
        if rate <= 0 or channels <= 0 or period_frames <= 0:
            raise ValueError("rate, channels and period_frames must be positive")
        if delay_s < 0:
            raise ValueError("delay_s must not be negative")
        if not -100_000 <= clock_ppm <= 100_000:
            raise ValueError("clock_ppm must be -100000..100000")
        self.delay_s = delay_s
        self._true_rate = rate * (1.0 + clock_ppm / 1e6)  # samples per second of the monotonic clock
        self.rate = rate
        self.channels = channels
        self.period_frames = period_frames
        self._max_lag = max_lag_s
        self._t0 = 0.0
        self._index = 0  # next period on the clock
        self._periods = 0  # periods delivered
        self._overruns = 0
        self._running = False
        self._stopped: asyncio.Event | None = None
        self._meter = LevelMeter(max(1, rate // period_frames))

    @abc.abstractmethod
    def _render(self, frames: int) -> np.ndarray:
        """The next ``frames`` frames as int16 ``(frames, channels)``."""

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        self._t0 = time.monotonic()
        self._index = 0
        self._running = True

    async def stop(self) -> None:
        self._running = False
        if self._stopped is not None:
            self._stopped.set()

    def _period_start(self, index: int) -> float:
        return self._t0 + index * self.period_frames / self._true_rate

    async def read(self) -> AudioChunk:
        if not self._running or self._stopped is None:
            raise AudioSourceError(f"{self.backend} source is not running")
        end = self._period_start(self._index + 1) + self.delay_s
        now = time.monotonic()
        if now - end > self._max_lag:
            # the reader stalled: resume at the present like a device that overran
            self._index = int((now - self.delay_s - self._t0) * self._true_rate / self.period_frames) - 1
            self._overruns += 1
            end = self._period_start(self._index + 1) + self.delay_s
        while now < end:
            try:
                await asyncio.wait_for(self._stopped.wait(), end - now)
            except TimeoutError:
                pass
            if not self._running:
                raise AudioSourceError(f"{self.backend} source stopped")
            now = time.monotonic()
        samples = self._render(self.period_frames)
        chunk = AudioChunk(samples=samples, rate=self.rate, timestamp=self._period_start(self._index))
        self._index += 1
        self._periods += 1
        self._meter.update(samples)
        return chunk

    def stats(self) -> dict[str, Any]:
        rms, peak = self._meter.levels()
        return {
            "backend": self.backend,
            "state": "running" if self._running else "stopped",
            "rate": self.rate,
            "channels": self.channels,
            "period_frames": self.period_frames,
            "periods": self._periods,
            "overruns": self._overruns,
            "xruns": self._overruns,
            "level_rms_dbfs": rms,
            "level_peak_dbfs": peak,
        }
