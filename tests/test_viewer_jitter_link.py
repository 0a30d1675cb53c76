"""Through the emulated link (5 % loss, 50 ms each way; tests/support/linkemu.py), the viewer page in
real headless Chromium (as it comes) raises its receivers' jitter buffer target to about
RTT * 1.5 + one frame interval, measured from its own getStats (no injection)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.support.browser import CHROMIUM
from tests.support.impaired_media import (
    KEEP_PCS_JS,
    PLAIN_FLAGS,
    TOKEN,
    chromium_wrapper,
    server_in_namespace,
)
from tests.support.linkemu import ImpairedLink, LinkProfile

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TUN devices need root"),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium"),
]

TARGETS_JS = (
    "window.__pcs.length ? window.__pcs[window.__pcs.length - 1].getReceivers()"
    ".map((r) => r.jitterBufferTarget) : []"
)


@pytest.mark.timeout(120)
async def test_lossy_link_raises_the_jitter_buffer_target_from_rtt(tmp_path: Path) -> None:
    with ImpairedLink(seed=7) as link:
        link.set_both(LinkProfile(loss=0.05, delay_ms=50))
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(chromium_wrapper(link.ns_b, tmp_path)), args=PLAIN_FLAGS, headless=True
            )
            try:
                with server_in_namespace(link, "agent", None, 320, 180, 30) as base:
                    page = await browser.new_page()
                    await page.add_init_script(KEEP_PCS_JS)
                    await page.goto(f"{base}/?token={TOKEN}&whep={base}/whep")
                    deadline = time.monotonic() + 45  # ICE and DTLS over the lossy link, on a loaded machine
                    while True:
                        targets = await page.evaluate(TARGETS_JS)
                        stats = await page.evaluate("window.viewer.stats")
                        if targets and all(t is not None for t in targets):
                            break
                        assert time.monotonic() < deadline, (
                            targets,
                            stats,
                            await page.evaluate("[window.viewer.state, window.viewer.error]"),
                        )
                        await asyncio.sleep(0.5)
                    jitter = await page.evaluate("window.viewer.jitter")
            finally:
                await browser.close()
    report = f"targets {targets}, jitter {jitter}, stats {stats}"
    assert len(targets) == 2 and len(set(targets)) == 1, report  # video and audio alike
    assert 90 <= jitter["rttMs"] <= 200, report  # 100 ms of emulated delay + the loaded machine
    frame_ms = 1000 / 30
    assert (
        jitter["rttMs"] * 1.5 + frame_ms - 15 <= targets[0] <= min(jitter["rttMs"] * 1.5 + 1000 / 5, 400)
    ), report
