"""Behind a lossy link the sender's figures look fine and the viewer's do not: the agent in one
network namespace, an aiortc viewer in another, 10 % loss and 20 ms delay towards the viewer
(tests/support/linkemu.py). Measured: the device sends ~28-30 fps; the viewer needs ~30 NACKs in
12 s to keep video whole and hears ~10 audio gaps (~3 s of audio lost: Opus is not retransmitted).
The per-viewer qoe is what tells."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from device_agent.config import dump_toml
from tests.support.linkemu import ImpairedLink, LinkProfile, NamespaceLoop, netns_command
from tests.support.media import Viewer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TUN devices need root")
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "lossy-link-token"


async def _watch(base: str, seconds: float) -> tuple[dict, Viewer]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:  # the agent is still starting
            try:
                async with http.get(f"{base}/api/stats", headers=headers) as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "agent did not serve"
            await asyncio.sleep(0.3)
        viewer = Viewer(base, token=TOKEN)
        await viewer.connect(http, qoe_interval_s=2.0)
        await viewer.wait_frames(10, timeout=20)
        await asyncio.sleep(seconds)
        deadline = time.monotonic() + 15  # every figure there, including the SR-based delay
        while True:
            async with http.get(f"{base}/api/stats", headers=headers) as resp:
                stats = await resp.json()
            qoe = stats["viewers"]["sessions"][0]["qoe"]
            if qoe["e2e_delay_ms"] is not None and qoe["reports"] >= 4 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        await viewer.close(http)
    return stats, viewer


def test_lossy_link_shows_in_the_viewers_qoe_not_in_the_senders_fps(tmp_path: Path) -> None:
    with ImpairedLink(seed=3) as link:
        config = tmp_path / "agent.toml"
        config.write_text(
            dump_toml(
                {
                    "device": {"id": "lossy-cam", "state_dir": str(tmp_path / "state")},
                    "camera": {"width": 320, "height": 180, "fps": 30},
                    "ns": {"enabled": False},
                    "ota": {"root": str(tmp_path / "ota")},
                    "web": {"listen": f"{link.addr_a}:8080", "token": TOKEN},
                }
            )
        )
        log = open(tmp_path / "agent.log", "wb")
        agent = subprocess.Popen(
            netns_command(link.ns_a, [sys.executable, "-m", "tests.support.agent_proc", str(config)]),
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        viewer_ns = NamespaceLoop(link.ns_b)
        try:
            link.set(a_to_b=LinkProfile(loss=0.10, delay_ms=20), b_to_a=LinkProfile(delay_ms=20))
            stats, viewer = viewer_ns.run(_watch(f"http://{link.addr_a}:8080", 12.0), timeout=90)
        finally:
            viewer_ns.close()
            agent.terminate()
            agent.wait(15)
            log.close()
    session = stats["viewers"]["sessions"][0]
    qoe = session["qoe"]
    # what the device sent: looks healthy (~28-30; > 20 on a loaded machine)
    assert session["fps"] > 20, session
    # what the viewer lived through: video rescued by retransmissions it had to ask for, audio (no
    # retransmission) with audible gaps, and the link's delay in the end-to-end figure
    assert qoe["reports"] >= 4 and qoe["rejected"] == 0, qoe
    # the loss shows in the viewer's own figures: packets it never got, or asked for again (protective
    # RTX copies rescue many without a NACK: 3-15 NACKs and 30-45 lost seen in 12 s)
    assert qoe["nack_sent"] >= 1 and qoe["packets_lost"] + qoe["nack_sent"] > 5, qoe
    assert qoe["audio_freeze_count"] + qoe["packets_lost"] > 0, qoe  # gaps heard, or video loss left over
    assert qoe["e2e_delay_ms"] > 20, qoe  # at least the 20 ms one-way delay
