"""Real headless Chromium watching the real agent through the emulated link (tests/support/linkemu.py).

A short version of benchmarks/media_impaired.py: busy content that needs more than a 1 Mbit/s
link, 5 % loss, 100 ms each way, 300 ms drop-tail queue; what the agent offers into the link
settles at or below the link, video keeps being presented, and PLIs do not become an IDR storm.
And a 5 s total outage, after which the viewer shows moving video within 2 s of the link's return.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.support.browser import CHROMIUM
from tests.support.impaired_media import PLAIN_FLAGS, busy_clip, chromium_wrapper, server_in_namespace, watch
from tests.support.linkemu import ImpairedLink, LinkProfile

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TUN devices need root"),
              pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium")]

WIDTH, HEIGHT, FPS = 640, 360, 30
LINK = LinkProfile(loss=0.05, delay_ms=100, rate_kbps=1000, queue_ms=300)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busy_clip(tmp_path_factory.mktemp("clip") / "busy.mp4", WIDTH, HEIGHT, FPS, seconds=6)


@pytest.mark.timeout(180)
async def test_lossy_thin_link_sender_fits_video_keeps_rendering_no_idr_storm(clip: Path, tmp_path: Path) -> None:
    with ImpairedLink(seed=3) as link:
        link.set_both(LINK)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(chromium_wrapper(link.ns_b, tmp_path)),
                                               args=PLAIN_FLAGS, headless=True)
            try:
                with server_in_namespace(link, "agent", clip, WIDTH, HEIGHT, FPS) as base:
                    res = await watch(browser, link, base, 15)
            finally:
                await browser.close()
    session = res.server["viewers"]["sessions"][0]
    report = (f"sender {res.sender_kbps(8)} kbit/s, fps/s {res.per_second}, inbound {res.inbound}, "
              f"session {session}")
    assert res.first_frame_ms is not None, report
    assert res.sender_kbps(8) <= 1000, report  # settled at or below the link (video + audio + RTX + RTCP)
    assert res.fps_median() >= 10 and sum(1 for n in res.per_second[2:] if n == 0) <= 2, report
    assert session["keyframes_sent"] <= 15 and session["idrs_by_cause"].get("pli", 0) <= 5, report  # GOP 2 s: ~8
    assert session["estimate_bps"] <= 1_000_000 and session["fraction_lost"] is not None, report


@pytest.mark.timeout(180)
async def test_moving_video_within_2_s_after_a_5_s_outage(clip: Path, tmp_path: Path) -> None:
    marks: dict[str, float] = {}
    with ImpairedLink(seed=4) as link:
        clean = LinkProfile(delay_ms=20, rate_kbps=2000, queue_ms=300)
        link.set_both(clean)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(chromium_wrapper(link.ns_b, tmp_path)),
                                               args=PLAIN_FLAGS, headless=True)
            try:
                with server_in_namespace(link, "agent", clip, WIDTH, HEIGHT, FPS) as base:
                    page_now: list = []

                    async def during(elapsed: float) -> None:
                        if "down" not in marks and elapsed > 8:
                            link.set_both(LinkProfile(down=True))
                            marks["down"] = time.monotonic()
                        elif "down" in marks and "up" not in marks and time.monotonic() - marks["down"] >= 5:
                            link.set_both(clean)
                            marks["up"] = time.monotonic()
                            page_now.append(True)

                    res = await watch(browser, link, base, 18, during=during, mark_page_time=page_now)
            finally:
                await browser.close()
    assert "up" in marks and res.page_marks, res
    back = res.page_marks[0]
    after = [t for t in res.presented if t > back]
    report = f"frames after the link returned (ms): {[round(t - back) for t in after[:40]]}; {res.inbound}"
    assert after and after[0] - back <= 2000, report
    assert sum(1 for t in after if t - back <= 3000) >= 15, report  # moving, not one frame
