"""The viewer page sets its receivers' jitter buffer target from RTT and loss (real headless Chromium,
as it comes, against the real agent on loopback). The page's own getStats is wrapped to report an
injected RTT and loss (the link itself is clean); the page's policy and Chromium's
``RTCRtpReceiver.jitterBufferTarget`` are the real ones."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.agent_proc import AgentProcess
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, open_page_when_up
from tests.support.mosquitto import free_port

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

AS_IT_COMES = [
    a
    for a in CHROMIUM_ARGS
    if a not in ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
]
INJECT_JS = """
window.__pcs = []; window.__inject = null;
const _PC = window.RTCPeerConnection, _getStats = _PC.prototype.getStats;
let extraLost = 0, lastReceived = null;
_PC.prototype.getStats = async function (...args) {
  const report = await _getStats.apply(this, args);
  const inject = window.__inject;
  if (!inject || args.length) return report;
  const out = new Map();
  report.forEach((stat, id) => {
    const r = Object.assign({}, stat);
    if (r.type === 'inbound-rtp' && r.kind === 'video') {
      if (lastReceived !== null)
        extraLost += Math.max(0, r.packetsReceived - lastReceived) * inject.lossPct / (100 - inject.lossPct);
      lastReceived = r.packetsReceived;
      r.packetsLost = (r.packetsLost || 0) + Math.round(extraLost);
    }
    if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded')
      r.currentRoundTripTime = inject.rttMs / 1000;
    out.set(id, r);
  });
  return out;
};
window.RTCPeerConnection = function (...a) { const pc = new _PC(...a); window.__pcs.push(pc); return pc; };
window.RTCPeerConnection.prototype = _PC.prototype;
"""
TARGETS_JS = "window.__pcs[window.__pcs.length - 1].getReceivers().map((r) => r.jitterBufferTarget)"


def _wait_targets(page, predicate, timeout_s: float) -> list:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while True:
        targets = page.evaluate(TARGETS_JS)
        if predicate(targets):
            return targets
        assert time.monotonic() < deadline, (
            targets,
            page.evaluate("window.viewer.jitter"),
            page.evaluate("window.viewer.stats"),
        )
        time.sleep(0.2)


def test_jitter_buffer_target_follows_rtt_and_loss_and_returns_to_default(tmp_path: Path) -> None:
    port = free_port()
    agent = AgentProcess(
        tmp_path / "agent",
        {
            "device": {"id": "jitter-cam", "state_dir": str(tmp_path / "state")},
            "camera": {"width": 320, "height": 180, "fps": 30},
            "web": {"enabled": True, "listen": f"127.0.0.1:{port}"},
            "mqtt": {"url": ""},
        },
    ).start()
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=AS_IT_COMES, headless=True)
            try:
                page = browser.new_page()
                page.add_init_script(INJECT_JS)
                open_page_when_up(page, f"http://127.0.0.1:{port}/", lambda: agent.log_text()[-3000:])
                page.wait_for_function("(window.viewer.stats.framesDecoded || 0) > 30", timeout=20000)
                assert page.evaluate("window.viewer.jitter.supported"), (
                    "Chromium has RTCRtpReceiver.jitterBufferTarget"
                )
                clean = page.evaluate(TARGETS_JS)
                assert len(clean) == 2 and clean == [None, None], clean  # video and audio: the default

                page.evaluate("window.__inject = {rttMs: 200, lossPct: 5}")
                # 200 * 1.5 + one frame interval (33 ms at 30 fps; more when the loaded machine renders fewer)
                lossy = _wait_targets(page, lambda t: all(x is not None and x >= 300 for x in t), 6)
                assert len(set(lossy)) == 1 and 320 <= lossy[0] <= 400, lossy
                assert page.evaluate("window.viewer.jitter.targetMs") == lossy[0]

                page.evaluate("window.__inject = {rttMs: 600, lossPct: 5}")
                assert _wait_targets(page, lambda t: t == [400, 400], 6) == [400, 400]  # capped

                page.evaluate("window.__inject = {rttMs: 600, lossPct: 0}")  # the link is clean again
                cleaned_at = time.monotonic()
                time.sleep(4)
                assert page.evaluate(TARGETS_JS) == [400, 400]  # held
                _wait_targets(page, lambda t: t == [None, None], 12)
                assert time.monotonic() - cleaned_at >= 9  # not before the hold time (10 s)
                assert page.evaluate("window.viewer.jitter.targetMs") is None
            finally:
                browser.close()
    finally:
        agent.stop()
