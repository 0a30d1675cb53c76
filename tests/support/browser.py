"""Headless Chromium (Debian's) through Playwright, with the flags this machine needs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-component-update",
    "--no-first-run",
]

# Reads the burnt-in frame counter (hal/camera/marker.py) from the playing <video> in the page.
READ_STAMP_JS = """() => {
  const v = document.getElementById('video');
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d'); g.drawImage(v, 0, 0);
  const size = Math.max(2, Math.min(16, Math.floor(Math.floor(v.videoWidth / 34) / 2) * 2));
  const row = g.getImageData(0, Math.floor(size / 2), 32 * size, 1).data;
  let value = 0;
  for (let i = 0; i < 32; i++) {
    const p = (i * size + Math.floor(size / 2)) * 4;
    const luma = 0.299 * row[p] + 0.587 * row[p + 1] + 0.114 * row[p + 2];
    value = value * 2 + (luma > 128 ? 1 : 0);
  }
  return value;
}"""


def open_page_when_up(page: Any, url: str, diagnostics: Callable[[], str], timeout: float = 30.0) -> None:
    """``page.goto(url)``, retried until the agent that serves it answers; ``diagnostics()`` on time-out."""
    from playwright.sync_api import Error

    deadline = time.monotonic() + timeout
    while True:
        try:
            page.goto(url)
            return
        except Error:
            assert time.monotonic() < deadline, diagnostics()
            time.sleep(0.3)
