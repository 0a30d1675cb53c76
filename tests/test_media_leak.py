"""Connect/disconnect cycles leave no growth in tasks, file descriptors or memory."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

import aiohttp
import pytest

from tests.support.media import Viewer, media_config, running_agent

CYCLES = 200


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _cycle(base: str, http: aiohttp.ClientSession, how: str) -> None:
    viewer = Viewer(base)
    await viewer.connect(http)
    await viewer.wait_frames(1)
    await viewer.close(http if how == "delete" else None)  # "drop": the viewer just vanishes


@pytest.mark.slow
async def test_200_cycles_leave_nothing_behind(tmp_path: Path) -> None:
    config = media_config(tmp_path, camera={"width": 320, "height": 180}, web={"session_timeout_s": 5.0})
    async with running_agent(config) as agent, aiohttp.ClientSession() as http:
        media = agent.get("media")
        base = f"http://127.0.0.1:{media.web.port}"
        for _ in range(20):  # warm-up: codecs, thread pools, caches
            await _cycle(base, http, "delete")
        await asyncio.sleep(0.5)
        gc.collect()
        tasks0, fds0, rss0 = len(asyncio.all_tasks()), _fds(), _rss_mb()
        for i in range(CYCLES):
            await _cycle(base, http, "delete" if i % 4 else "drop")
        # dropped viewers end by ICE consent failure or the DELETE-less timeout
        deadline = asyncio.get_running_loop().time() + 40
        while media.sessions.stats()["active"] and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        gc.collect()
        tasks1, fds1, rss1 = len(asyncio.all_tasks()), _fds(), _rss_mb()
        assert media.sessions.stats()["active"] == 0
        assert media.fanout.subscribers == 0 and media.audio.stats()["viewers"] == 0
        assert tasks1 <= tasks0 + 2, (tasks0, tasks1)
        assert fds1 <= fds0 + 4, (fds0, fds1)
        assert rss1 - rss0 < 40, (rss0, rss1)
        ended = media.sessions.stats()["ended"]
        assert sum(ended.values()) == CYCLES + 20
