"""The audio pipeline's processing-stage slot (noise suppression plugs in here)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

PIPELINE_RATE = 16000  # the pipeline's processing rate: capture is resampled to this
HOP_FRAMES = 160  # 10 ms at 16 kHz


class AudioStage(Protocol):
    """A streaming mono 16 kHz int16 processor.

    ``process`` is blocking (it runs in a worker thread), takes any whole number of hops and
    returns exactly as many samples as it was given (a stage with algorithmic latency delays
    its output instead of shortening it). ``enabled`` may be switched at run time.
    """

    name: str
    enabled: bool

    def process(self, samples: np.ndarray) -> np.ndarray: ...

    def stats(self) -> dict[str, Any]: ...
