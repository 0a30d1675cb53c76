"""Run CPU-heavy diagnostics work (filtering, redacting, gzipping tens of MB) off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_in_worker_process(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a short-lived spawned process and return its result.

    A process, not a thread: redacting 50 MB in a thread of the agent holds the GIL and stalls
    the event loop (and live media with it) for hundreds of milliseconds at a time.
    """
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        return await loop.run_in_executor(pool, fn, *args)
    finally:
        pool.shutdown(wait=False)
