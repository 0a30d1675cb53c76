"""A/V offset as headless Chromium plays the agent's stream, second by second, with its lip-sync's state.

The agent as a process (320x180 30 fps test pattern, synthetic microphone ``--delay-ms`` late, dated
at capture) and the shipped page in Chromium as it comes, on loopback. Every second, from the
page's peer connection: audio minus video ``estimatedPlayoutTimestamp`` (what the page reports as
``av_ms``; + = audio early), and per stream the jitter-buffer delay and the minimum delay
Chromium's synchroniser imposed (``jitterBufferMinimumDelay``) over that second. The median of the
last half of the run is printed at the end.

Run: .venv/bin/python -m benchmarks.av_sync_chromium [--seconds 30] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.support.agent_proc import AgentProcess
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, open_page_when_up
from tests.support.mosquitto import free_port

KEEP_PC_JS = """(() => { const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args); window.__pc = pc; return pc; };
  window.RTCPeerConnection.prototype = Original.prototype; })();"""
STATS_JS = """async () => {
  if (!window.__pc) return null;
  const out = {};
  (await window.__pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp') out[s.kind] = {ept: s.estimatedPlayoutTimestamp, jbd: s.jitterBufferDelay,
      jbm: s.jitterBufferMinimumDelay, n: s.jitterBufferEmittedCount};
  });
  return out; }"""


def per_emitted(now: dict[str, Any], before: dict[str, Any], key: str) -> float | None:
    count = (now.get("n") or 0) - (before.get("n") or 0)
    if count <= 0 or now.get(key) is None or before.get(key) is None:
        return None
    return round(1000 * (now[key] - before[key]) / count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--delay-ms", type=int, default=0, help="audio.synthetic_delay_ms of the agent")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="av-sync-"))
    port = free_port()
    agent = AgentProcess(
        work / "agent",
        {
            "device": {"id": "av-chromium", "state_dir": str(work / "state")},
            "camera": {"width": 320, "height": 180, "fps": 30},
            "audio": {"synthetic_delay_ms": args.delay_ms},
            "web": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        },
    ).start()
    offsets: list[float] = []
    try:
        with sync_playwright() as pw:
            flags = [a for a in CHROMIUM_ARGS if "fake" not in a]  # as it comes
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)
            page = browser.new_page()
            page.add_init_script(KEEP_PC_JS)
            open_page_when_up(page, f"http://127.0.0.1:{port}/", lambda: agent.log_text()[-3000:])
            page.wait_for_function("window.viewer.state === 'connected'", timeout=30000)
            before: dict[str, Any] = {}
            print("  s   av_ms  audio_jb  audio_min  video_jb  video_min")
            for second in range(args.seconds):
                page.wait_for_timeout(1000)
                now = page.evaluate(STATS_JS) or {}
                audio, video = now.get("audio") or {}, now.get("video") or {}
                av = None
                if audio.get("ept") and video.get("ept") and before:
                    av = audio["ept"] - video["ept"]
                    if second >= args.seconds // 2:
                        offsets.append(av)
                cells = [
                    per_emitted(audio, before.get("audio") or {}, "jbd"),
                    per_emitted(audio, before.get("audio") or {}, "jbm"),
                    per_emitted(video, before.get("video") or {}, "jbd"),
                    per_emitted(video, before.get("video") or {}, "jbm"),
                ]
                print(f"{second:3d} {'-' if av is None else av:>7} " + " ".join(f"{c!s:>9}" for c in cells))
                before = now
            browser.close()
    finally:
        agent.stop()
    if offsets:
        print(f"median A/V offset over the last {len(offsets)} s: {statistics.median(offsets):.0f} ms")


if __name__ == "__main__":
    main()
