"""The glass-to-glass benchmark's stamp read-back in real headless Chromium, against `device-agent demo`."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._media_common import server
from benchmarks.media_glass import PLAIN_FLAGS, measure, read_ok
from tests.support.browser import CHROMIUM

playwright = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


async def test_stamp_read_back_in_chromium() -> None:
    fps = 30
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=PLAIN_FLAGS, headless=True)
        try:
            with server("agent", 640, 360, fps) as (base, _pid):
                run = await measure(browser, base, seconds=3.0, warmup=1.0)
        finally:
            await browser.close()
    frames = run["frames"]
    good = [f for f in frames if read_ok(f)]
    assert len(frames) >= 30, (len(frames), run)
    assert len(good) >= 0.95 * len(frames), [f for f in frames if not read_ok(f)][:5]
    assert all(f["w"] == 640 and f["h"] == 360 for f in good)
    # the index row counts up frame by frame, and the time row agrees with it: one frame interval
    # per index step (the test pattern draws on a fixed schedule), so both rows were read right
    steps = list(zip(good, good[1:], strict=False))
    backwards = [(a, b) for a, b in steps if b["index"] <= a["index"]]
    assert not backwards, backwards
    on_schedule = [
        abs((b["capture"] - a["capture"]) - (b["index"] - a["index"]) * 1000 / fps) <= 20 for a, b in steps
    ]
    assert sum(on_schedule) >= 0.9 * len(steps), on_schedule
    # capture before display, on one wall clock; loopback: well under a second
    assert all(0 < f["display_ms"] < 1000 for f in good), [f["display_ms"] for f in good]
    assert all(f["receive_ms"] is None or f["receive_ms"] <= f["display_ms"] for f in good)
