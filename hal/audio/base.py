"""Audio HAL interfaces: sources deliver timestamped int16 chunks, sinks play them."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class AudioChunk:
    """Interleaved signed 16-bit samples, shape ``(frames, channels)``."""

    samples: np.ndarray
    rate: int
    timestamp: float  # time.monotonic() when the first sample was captured

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])


class AudioSourceError(RuntimeError):
    """The capture device is gone or unusable (reported, retried with backoff)."""


class AudioSource(abc.ABC):
    """A microphone-like source. ``read()`` awaits the next period; blocking I/O runs in a thread."""

    rate: int
    channels: int
    period_frames: int

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def read(self) -> AudioChunk: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        """Counters for health: xruns, reopen attempts, device state, input level."""
        return {}


class AudioSink(abc.ABC):
    """A speaker-like sink for talkback audio."""

    rate: int
    channels: int

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def write(self, chunk: AudioChunk) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        return {}
