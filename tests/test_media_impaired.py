"""Real headless Chromium watching the real agent through the emulated link (tests/support/linkemu.py).

A short version of benchmarks/media_impaired.py, with Chromium and with a real aiortc viewer: busy
content that needs more than a 1 Mbit/s link, 5 % loss, 100 ms each way, 300 ms drop-tail queue; what
the agent offers into the link settles at or below the link, video keeps being presented, and PLIs do
not become an IDR storm.
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
from tests.support.impaired_media import (
    PLAIN_FLAGS,
    aiortc_watch,
    busy_clip,
    chromium_wrapper,
    get_json,
    server_in_namespace,
    watch,
)
from tests.support.linkemu import ImpairedLink, LinkProfile, NamespaceLoop

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TUN devices need root"),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium"),
]

WIDTH, HEIGHT, FPS = 640, 360, 30
LINK = LinkProfile(loss=0.05, delay_ms=100, rate_kbps=1000, queue_ms=300)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busy_clip(tmp_path_factory.mktemp("clip") / "busy.mp4", WIDTH, HEIGHT, FPS, seconds=6)


@pytest.mark.timeout(180)
async def test_lossy_thin_link_sender_fits_video_keeps_rendering_no_idr_storm(
    clip: Path, tmp_path: Path
) -> None:
    with ImpairedLink(seed=3) as link:
        link.set_both(LINK)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(chromium_wrapper(link.ns_b, tmp_path)), args=PLAIN_FLAGS, headless=True
            )
            try:
                with server_in_namespace(link, "agent", clip, WIDTH, HEIGHT, FPS) as base:
                    res = await watch(browser, link, base, 15)
            finally:
                await browser.close()
    session = res.server["viewers"]["sessions"][0]
    report = (
        f"sender {res.sender_kbps(8)} kbit/s, fps/s {res.per_second}, inbound {res.inbound}, "
        f"session {session}"
    )
    assert res.first_frame_ms is not None, report
    assert res.sender_kbps(8) <= 1000, report  # settled at or below the link (video + audio + RTX + RTCP)
    assert res.fps_median() >= 10 and sum(1 for n in res.per_second[2:] if n == 0) <= 2, report
    # GOP 2 s: ~8
    assert session["keyframes_sent"] <= 15 and session["idrs_by_cause"].get("pli", 0) <= 5, report
    assert session["estimate_bps"] <= 1_000_000 and session["fraction_lost"] is not None, report


@pytest.mark.timeout(180)
async def test_moving_video_within_2_s_after_a_5_s_outage(clip: Path, tmp_path: Path) -> None:
    marks: dict[str, float] = {}
    with ImpairedLink(seed=4) as link:
        clean = LinkProfile(delay_ms=20, rate_kbps=2000, queue_ms=300)
        link.set_both(clean)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(chromium_wrapper(link.ns_b, tmp_path)), args=PLAIN_FLAGS, headless=True
            )
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


@pytest.mark.timeout(180)
async def test_aiortc_viewer_on_a_lossy_thin_link_loss_reaches_the_estimate(clip: Path) -> None:
    with ImpairedLink(seed=5) as link:
        link.set_both(LINK)
        with server_in_namespace(link, "agent", clip, WIDTH, HEIGHT, FPS) as base:
            viewer_ns, agent_ns = NamespaceLoop(link.ns_b), NamespaceLoop(link.ns_a)
            try:
                started = time.monotonic()
                watching = viewer_ns.submit(aiortc_watch(base, 16))
                before = None
                while not watching.done():
                    if before is None and time.monotonic() - started >= 8:
                        before = (time.monotonic(), link.stats()["a_to_b"]["bytes"])
                        stats = agent_ns.run(get_json(base + "/api/stats"), timeout=10)
                    time.sleep(0.2)
                after = (time.monotonic(), link.stats()["a_to_b"]["bytes"])
                arrivals = watching.result()
            finally:
                viewer_ns.close()
                agent_ns.close()
    assert before is not None
    sender_kbps = (after[1] - before[1]) * 8 / 1000 / (after[0] - before[0])
    session = stats["viewers"]["sessions"][0]
    late = [t for t in arrivals if t >= started + 8]
    report = (
        f"sender {sender_kbps:.0f} kbit/s, {len(arrivals)} frames ({len(late)} after 8 s), session {session}"
    )
    assert sender_kbps <= 1000, report
    assert len(late) >= 8 * 10, report  # >= 10 fps decoded in the last 8 s
    assert session["nack"] > 0 and session["rtx_sent"] > 0, report  # NACKs answered (or crossed by copies)
    assert session["rtx_protective"] > 0, report  # 5 % loss: protective copies on
    # reports were read
    assert session["fraction_lost"] is not None and session["estimate_bps"] <= 1_000_000, report
    assert session["keyframes_sent"] <= 12, report
