"""Small asyncio helpers for the HAL (and, re-exported by ``device_agent.tasks``, the agent)."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has really finished; its outcome is discarded."""
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
