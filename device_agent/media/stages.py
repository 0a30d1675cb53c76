"""The audio pipeline's processing-stage slot (noise suppression plugs in here)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

import numpy as np

PIPELINE_RATE = 16000  # the pipeline's processing rate: capture is resampled to this
HOP_FRAMES = 160  # 10 ms at 16 kHz


class StageAlert(Enum):
    """What a stage can alert about; the value is the agent alert code (unchanged since 0.1)."""

    OVER_BUDGET = "ns_over_budget"  # behind its real-time budget: bypassing until it catches up
    UNAVAILABLE = "ns_unavailable"  # could not be built (model missing or corrupt): passing audio through

    @property
    def code(self) -> str:
        """The alert code the agent raises and clears (``agent.alerts``)."""
        return self.value

    @property
    def severity(self) -> str:
        """Both are P2: audio still flows, only its processing is degraded."""
        return "P2"


StageAlertFn = Callable[[StageAlert, str], None]  # (which alert, human message); may run on the audio thread


class AudioStage(Protocol):
    """A streaming mono 16 kHz int16 processor.

    ``process`` is blocking (it runs in a worker thread), takes any whole number of hops and
    returns exactly as many samples as it was given (a stage with algorithmic latency delays
    its output instead of shortening it). ``enabled`` may be switched at run time.

    ``fell_back`` is True while the stage bypasses itself on its own (it fell behind its budget);
    ``reset_fallback()`` makes it try again now. ``error`` is why the stage is not working at all
    (None when it is). A stage that never falls back keeps ``fell_back`` False and makes
    ``reset_fallback`` a no-op. Alerts go through the :data:`StageAlertFn` the stage was built with.
    """

    name: str
    enabled: bool
    latency: int  # samples of delay the stage adds, enabled or not

    @property
    def fell_back(self) -> bool: ...

    @property
    def error(self) -> str | None: ...

    def process(self, samples: np.ndarray) -> np.ndarray: ...

    def reset_fallback(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...
