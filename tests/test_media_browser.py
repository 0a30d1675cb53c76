"""The viewer page in real headless Chromium against `device-agent demo`: video, audio, talkback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.alsa import AlsaTestConfig
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, READ_STAMP_JS
from tests.support.mosquitto import free_port

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"demo exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"demo did not listen on {port}")


@pytest.fixture
def demo(tmp_path: Path):
    """`device-agent demo` in a subprocess, with talkback to an ALSA file PCM."""
    alsa = AlsaTestConfig(tmp_path / "alsa")
    speaker = alsa.add_playback("speaker")
    alsa.write()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nstate_dir = "{tmp_path / "state"}"\n'
        "[camera]\nwidth = 640\nheight = 360\n"
        '[audio]\nplayback_device = "speaker"\nplayback_rate = 16000\n'
    )
    port = free_port()
    env = {**os.environ, **alsa.env}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device_agent.cli",
            "demo",
            "--listen",
            f"127.0.0.1:{port}",
            "--config",
            str(config),
            "--no-broker",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}", speaker
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert proc.returncode == 0, out[-3000:]


def _wait_for(page, expression: str, timeout_ms: int = 20000) -> None:
    page.wait_for_function(expression, timeout=timeout_ms)


def test_viewer_page_plays_video_and_audio_and_talks_back(demo) -> None:
    url, speaker = demo
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            _wait_for(page, "window.viewer.state === 'connected'")
            _wait_for(
                page,
                "(window.viewer.stats.framesDecoded || 0) > 30 "
                "&& (window.viewer.stats.audioPackets || 0) > 25",
            )
            stats = page.evaluate("window.viewer.stats")
            assert stats["frameWidth"] == 640 and stats["frameHeight"] == 360
            assert page.evaluate("window.viewer.postToFirstFrameMs") > 0
            first = page.evaluate(READ_STAMP_JS)
            page.wait_for_timeout(1000)
            second = page.evaluate(READ_STAMP_JS)
            # ~30 fps, burnt-in counter
            assert first is not None and 15 <= second - first <= 45, (first, second)
            # the page's stats line is filled in for a person too
            assert "kbit/s" in page.inner_text("#bitrate") and "fps" in page.inner_text("#fps")

            size_before = speaker.stat().st_size if speaker.exists() else 0
            talk = page.locator("#talk")
            talk.dispatch_event("pointerdown")
            _wait_for(page, "document.getElementById('talk').classList.contains('active')")
            page.wait_for_timeout(2000)
            talk.dispatch_event("pointerup")
            media = page.evaluate("fetch('/api/stats').then(r => r.json())")
            assert media["talkback"]["frames_played"] > 50
            written = np.fromfile(speaker, dtype="<i2")[size_before // 2 :]
            assert written.size > 16000  # > 1 s at 16 kHz of Chromium's fake microphone (a beep)
            assert np.abs(written.astype(np.int32)).max() > 1000
        finally:
            browser.close()
