"""Frame pacing for cameras that produce frames on their own schedule (test pattern, file)."""

from __future__ import annotations

import asyncio
import time


class FrameClock:
    """Frame slots at ``fps`` from the monotonic clock. A late reader skips the slots it missed
    (counted in ``skipped``) instead of building up latency."""

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self.start = 0.0
        self.index = 0  # the next slot
        self.skipped = 0

    def restart(self) -> None:
        self.start = time.monotonic()
        self.index = 0

    async def next_slot(self) -> int:
        """Wait for the next slot and return its index."""
        due = self.start + self.index / self.fps
        now = time.monotonic()
        if now - due > 1.0 / self.fps:  # late by more than a frame: jump to the current slot
            behind = int((now - self.start) * self.fps) - self.index
            self.skipped += behind
            self.index += behind
        else:
            await asyncio.sleep(max(0.0, due - now))
        index = self.index
        self.index += 1
        return index
