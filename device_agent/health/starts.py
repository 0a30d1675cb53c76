"""How often the agent has started lately: the ``agent`` health section behind the ``crash_loop`` rule.

Each start appends its wall-clock time to ``{state_dir}/agent-starts.json`` (the newest
``KEEP`` kept, written atomically); the provider reports starts within the last 10 minutes and hour.
A missing or unreadable file counts as no earlier starts: it never stops the agent.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ota.atomic import write_atomic

log = logging.getLogger(__name__)

KEEP = 32


class StartHistory:
    """Records this start, then answers ``{"starts_10min", "starts_1h", "boot"}`` as a health provider."""

    def __init__(self, path: str | Path, boot: str = "", clock: Any = time.time) -> None:
        self.path = Path(path)
        self.boot = boot
        self.clock = clock
        self.starts: list[float] = []

    def _read(self) -> list[float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return (
            sorted(float(t) for t in data if isinstance(t, (int, float)) and not isinstance(t, bool))[-KEEP:]
            if isinstance(data, list)
            else []
        )

    def record(self) -> StartHistory:
        self.starts = (self._read() + [self.clock()])[-KEEP:]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.starts))
        except OSError as exc:
            log.warning("cannot record the agent start in %s: %s", self.path, exc)
        return self

    def __call__(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "boot": self.boot,
            "starts_10min": sum(1 for t in self.starts if now - t <= 600),
            "starts_1h": sum(1 for t in self.starts if now - t <= 3600),
        }
