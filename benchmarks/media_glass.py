"""Glass-to-glass delay on clean loopback: capture time burnt into the frame -> the frame rendered in
headless Chromium (as it comes, no permission flags), for the agent and, in the same run, for aiortc
with a naive WHEP handler (benchmarks.naive_whep).

Both servers draw the test pattern (hal/camera/test_pattern.py), which burns a stamp into every
frame (hal/camera/marker.py): the frame index and the wall-clock time in ms (mod 2**32) taken as
the frame is drawn, before it is encoded. The shipped viewer page plays the stream; a script this
benchmark adds to the page (nothing of it is in the product) hangs a ``requestVideoFrameCallback``
chain on the page's ``<video>``: in every callback it takes the video's current frame (``new
VideoFrame(video)``), draws its stamp corner to a canvas and reads each block's centre luma (Y =
0.299 R + 0.587 G + 0.114 B, thresholded at mid-grey; a block within ``MARGIN`` of mid-grey fails
the read). The current frame is not always the one the callback describes (a late page: the next
frame is already there, up to ~1 % of callbacks here), so a read is matched to the callback whose
``metadata.mediaTime`` is that frame's timestamp; a presented frame whose own pixels were never
read counts as a failed read. Recorded per presented frame, on the same wall clock (one machine):

- glass-to-glass: ``performance.timeOrigin + metadata.expectedDisplayTime`` (when the compositor
  expects to show the frame) minus the stamp's capture time (mod 2**32), the main figure;
- at the callback: the callback's ``now`` minus the capture time;
- to receipt: ``metadata.receiveTime`` (last packet of the frame received) minus the capture time.

The page clock is lined up with ``Date.now()`` at every callback (``performance.timeOrigin`` drifts
from the wall clock in a long-lived page). The first ``--warmup`` seconds after the first frame are
not counted (join, first IDR, the rate ramp). A stamp is also a failed read when a block is ambiguous,
or the figure is outside -100 ms .. 10 s (a wrong bit in the time row). Each server's figures come
with Chromium's own counters over the same window (jitter buffer, decode, dropped frames, codec).

Three measurements by default: ``agent`` (the shipped page as it is: video and audio, so Chromium
lip-syncs and may hold video back to match audio), ``agent-video`` (the same page with ``audio=0``)
and ``naive`` (the peer sends no audio track, so its page is video only too). Each round opens a
new session per measurement (order reversed every other round, as the load drifts); within a
session Chromium holds the delay nearly constant, between sessions it moves by tens of ms, so the
pooled figures need several rounds.

Run: .venv/bin/python -m benchmarks.media_glass [--seconds 20] [--width 1280 --height 720 --fps 30]
     [--rounds 3] [--servers agent agent-video naive] [--json per-frame.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, async_playwright

from benchmarks._media_common import get_json, load, pct, server
from tests.support.browser import CHROMIUM

PLAIN_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TARGET_P95_MS = 100.0
# what is measured: (server process, extra viewer-page parameters). The naive peer sends no audio;
# "agent-video" is the agent with the page's audio=0, video only like the peer (no lip-sync wait).
SERVERS = {"agent": ("agent", ""), "agent-video": ("agent", "&audio=0"), "naive": ("naive", "")}
MARGIN = 40  # a block's centre luma must be this far from mid-grey (128) to count as read

# Keeps the page's peer connection for getStats (the page does not expose it).
KEEP_PC_JS = """(() => { const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args); window.__pc = pc; return pc; };
  window.RTCPeerConnection.prototype = Original.prototype; })();"""

# The stamp reader, started on the shipped page's <video> once it shows frames.
COLLECT_JS = """(margin) => {
  const video = document.getElementById("video");
  const M = 4294967296, BITS = 32;
  const g = window.__g2g = { frames: [], running: true, errors: 0, ahead: 0 };
  const canvas = document.createElement("canvas");
  const reads = new Map(); // drawn frame's media timestamp (us) -> its stamp
  let ctx = null, size = 0;
  const wrap = (ms) => { let d = ((ms % M) + M) % M; return d >= M / 2 ? d - M : d; };
  // The stamp of the video's current frame, keyed by that frame's timestamp: the current frame may
  // already be newer than the one the callback describes (the page was late), so reads are matched
  // to callbacks by media time, never assumed to be the callback's frame.
  const readCurrent = (width) => {
    const s = Math.max(2, Math.min(16, Math.floor(Math.floor(width / (BITS + 2)) / 2) * 2));
    if (s !== size) {
      size = s; canvas.width = BITS * s; canvas.height = 2 * s;
      ctx = canvas.getContext("2d", { willReadFrequently: true });
    }
    const frame = new VideoFrame(video);
    const key = frame.timestamp;
    try { ctx.drawImage(frame, 0, 0, BITS * s, 2 * s, 0, 0, BITS * s, 2 * s); } finally { frame.close(); }
    const px = ctx.getImageData(0, 0, BITS * s, 2 * s).data;
    const values = [0, 0];
    let ambiguous = 0;
    for (let row = 0; row < 2; row++) {
      for (let i = 0; i < BITS; i++) {
        const p = ((row * s + (s >> 1)) * BITS * s + i * s + (s >> 1)) * 4;
        const y = 0.299 * px[p] + 0.587 * px[p + 1] + 0.114 * px[p + 2];
        if (Math.abs(y - 128) < margin) ambiguous += 1;
        values[row] = values[row] * 2 + (y > 128 ? 1 : 0);
      }
    }
    reads.set(key, { index: values[0], capture: values[1], ambiguous });
    if (reads.size > 64) reads.delete(reads.keys().next().value);
    return key;
  };
  const tick = (now, meta) => {
    if (!g.running) return;
    video.requestVideoFrameCallback(tick);
    try {
      const wall = performance.timeOrigin + (Date.now() - (performance.timeOrigin + performance.now()));
      const width = meta.width || video.videoWidth;
      const drawn = readCurrent(width);
      const mine = Math.round(meta.mediaTime * 1e6);
      if (drawn !== mine) g.ahead += 1;
      const read = reads.get(mine);
      const rec = { matched: read !== undefined, w: width, h: meta.height || video.videoHeight,
                    presented: meta.presentedFrames, rtp: meta.rtpTimestamp, media_us: mine };
      if (read) {
        Object.assign(rec, read, {
          display_ms: wrap(wall + meta.expectedDisplayTime - read.capture),
          callback_ms: wrap(wall + now - read.capture),
          receive_ms: meta.receiveTime === undefined ? null : wrap(wall + meta.receiveTime - read.capture),
        });
      }
      g.frames.push(rec);
    } catch (err) { g.errors += 1; g.lastError = String(err); }
  };
  video.requestVideoFrameCallback(tick);
}"""

# Chromium's inbound video counters (cumulative), for the window's averages.
STATS_JS = """async () => {
  if (!window.__pc) return null;
  const report = await window.__pc.getStats();
  let out = null, audio = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") out = {
      jbd: s.jitterBufferDelay, jbt: s.jitterBufferTargetDelay, jbm: s.jitterBufferMinimumDelay,
      emitted: s.jitterBufferEmittedCount, decoded: s.framesDecoded, decode: s.totalDecodeTime,
      dropped: s.framesDropped, freezes: s.freezeCount, lost: s.packetsLost, nack: s.nackCount,
      bytes: s.bytesReceived, assembly: s.totalAssemblyTime, codecId: s.codecId, t: s.timestamp };
    else if (s.type === "inbound-rtp" && s.kind === "audio") audio = { jbd: s.jitterBufferDelay,
      jbm: s.jitterBufferMinimumDelay, emitted: s.jitterBufferEmittedCount };
  });
  if (out) out.audio = audio;
  if (out && out.codecId) { const c = report.get(out.codecId); out.codec = c ? c.mimeType : null; }
  return out; }"""


def read_ok(frame: dict[str, Any]) -> bool:
    """A presented frame's stamp counts when its own pixels were read (see ``COLLECT_JS``), no block
    was near mid-grey and the figure is plausible."""
    return bool(frame["matched"]) and frame["ambiguous"] == 0 and -100.0 <= frame["display_ms"] <= 10_000.0


def window_stats(before: dict | None, after: dict | None) -> dict[str, Any]:
    """Chromium's receiver over the window: per-frame jitter buffer, target, decode; drops; codec."""
    if not before or not after:
        return {}
    emitted = (after.get("emitted") or 0) - (before.get("emitted") or 0)
    decoded = (after.get("decoded") or 0) - (before.get("decoded") or 0)
    span = max(1e-3, (after["t"] - before["t"]) / 1000)

    def per(key: str, count: int) -> float | None:
        if count <= 0 or after.get(key) is None or before.get(key) is None:
            return None
        return 1000 * (after[key] - before[key]) / count

    return {
        "codec": after.get("codec"),
        "jitter_buffer_ms": per("jbd", emitted),
        "jitter_buffer_target_ms": per("jbt", emitted),
        "jitter_buffer_minimum_ms": per("jbm", emitted),
        "decode_ms": per("decode", decoded),
        "assembly_ms": per("assembly", decoded),
        "decoded_fps": decoded / span,
        "dropped": (after.get("dropped") or 0) - (before.get("dropped") or 0),
        "freezes": (after.get("freezes") or 0) - (before.get("freezes") or 0),
        "lost": (after.get("lost") or 0) - (before.get("lost") or 0),
        "kbps": 8 * ((after.get("bytes") or 0) - (before.get("bytes") or 0)) / 1000 / span,
        "audio_jitter_buffer_ms": _audio_jb(before.get("audio"), after.get("audio")),
    }


def _audio_jb(before: dict | None, after: dict | None) -> float | None:
    """Audio's mean jitter-buffer delay (ms per sample) over the window, if the page receives audio."""
    if not before or not after or not after.get("emitted") or after.get("jbd") is None:
        return None
    emitted = after["emitted"] - (before.get("emitted") or 0)
    return 1000 * (after["jbd"] - (before.get("jbd") or 0)) / emitted if emitted > 0 else None


async def measure(
    browser: Browser, base: str, seconds: float, warmup: float, query: str = ""
) -> dict[str, Any]:
    """Open the shipped page on ``base`` (extra ``query`` parameters), read every presented frame's
    stamp for ``seconds``."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.add_init_script(KEEP_PC_JS)
        await page.goto(f"{base}/?whep={base}/whep{query}")
        await page.wait_for_function(
            "window.viewer && window.viewer.postToFirstFrameMs !== null", timeout=20000
        )
        await page.evaluate(COLLECT_JS, MARGIN)
        await asyncio.sleep(warmup)
        await page.evaluate("window.__g2g.frames = []; window.__g2g.ahead = 0")
        before = await page.evaluate(STATS_JS)
        started = time.monotonic()
        await asyncio.sleep(seconds)
        frames = await page.evaluate(
            "(() => { window.__g2g.running = false; return window.__g2g.frames; })()"
        )
        span = time.monotonic() - started
        after = await page.evaluate(STATS_JS)
        errors = await page.evaluate(
            "[window.__g2g.errors, window.__g2g.lastError || null, window.__g2g.ahead]"
        )
        await page.evaluate("window.viewerControls && window.viewerControls.disconnect()")
        return {
            "frames": frames,
            "span_s": span,
            "chromium": window_stats(before, after),
            "js_errors": errors,
        }
    finally:
        await context.close()


def _fmt(values: list[float]) -> str:
    if not values:
        return "no samples"
    return f"p50 {pct(values, 0.5):6.1f}  p95 {pct(values, 0.95):6.1f}  max {max(values):6.1f}"


def report(kind: str, runs: list[dict[str, Any]], agent_stats: list[dict]) -> dict[str, Any]:
    """Print one server's figures (all rounds pooled); returns the pooled figures."""
    frames = [f for run in runs for f in run["frames"]]
    good = [f for f in frames if read_ok(f)]
    failed = len(frames) - len(good)
    unread = sum(1 for f in frames if not f["matched"])
    ahead = sum(run["js_errors"][2] or 0 for run in runs)
    g2g = [f["display_ms"] for f in good]
    cb = [f["callback_ms"] for f in good]
    recv = [f["receive_ms"] for f in good if f["receive_ms"] is not None]
    span = sum(run["span_s"] for run in runs)
    gaps = 0  # stamp index jumps within each run: skipped at the source or never presented
    for run in runs:
        indices = [f["index"] for f in run["frames"] if read_ok(f)]
        gaps += sum(max(0, b - a - 1) for a, b in zip(indices, indices[1:], strict=False) if 0 < b - a < 1000)
    share = failed / len(frames) if frames else 1.0
    print(
        f"{kind}  ({len(frames)} frames presented in {span:.0f} s, {len(frames) / max(span, 1e-3):.1f} fps)"
    )
    print(f"  glass-to-glass (capture -> expected display)   {_fmt(g2g)} ms")
    print(f"  capture -> rVFC callback                       {_fmt(cb)} ms")
    print(f"  capture -> frame received (receiveTime)        {_fmt(recv)} ms")
    print(
        f"  stamp reads failed: {failed} of {len(frames)} ({100 * share:.1f} %), of which {unread} "
        f"never read (the video already had a newer frame in {ahead} callbacks); index gaps: {gaps} "
        "(frames skipped by the camera or sender, never presented or never read)"
    )
    for i, run in enumerate(runs):
        ok = [f for f in run["frames"] if read_ok(f)]
        to_display = [f["display_ms"] - f["receive_ms"] for f in ok if f["receive_ms"] is not None]
        print(
            f"  round {i + 1}: glass-to-glass {_fmt([f['display_ms'] for f in ok])} ms; "
            f"received -> display p50 {pct(to_display, 0.5) if to_display else float('nan'):.1f} ms"
        )
        c = run["chromium"]
        if c:
            print(
                f"  Chromium (round {i + 1}): {c['codec']}, {c['kbps']:.0f} kbit/s, "
                f"decoded {c['decoded_fps']:.1f} fps, "
                f"jitter buffer {_ms(c['jitter_buffer_ms'])} (target {_ms(c['jitter_buffer_target_ms'])}, "
                f"minimum {_ms(c['jitter_buffer_minimum_ms'])}), decode {_ms(c['decode_ms'])}, "
                f"dropped {c['dropped']}, freezes {c['freezes']}, lost {c['lost']}; "
                f"audio jitter buffer {_ms(c['audio_jitter_buffer_ms'])}"
            )
        if run["js_errors"][0]:
            print(f"  page script errors: {run['js_errors']}")
    for i, stats in enumerate(agent_stats):
        video = stats.get("video") or {}
        lat = video.get("capture_to_packet") or {}
        cam = video.get("camera") or {}
        print(
            f"  agent (round {i + 1}): capture -> packet p50 {lat.get('p50_ms')} p95 {lat.get('p95_ms')} ms, "
            f"encode {video.get('encode_ms')} ms, camera skipped {cam.get('skipped')}"
        )
    return {"g2g": g2g, "failed_share": share, "frames": len(frames)}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


async def main_async(args: argparse.Namespace) -> None:
    print(
        f"media_glass: {args.width}x{args.height} {args.fps} fps, {args.seconds:.0f} s per server and round "
        f"({args.rounds} round(s), {args.warmup:.0f} s warm-up), Chromium as it comes, loopback; {load()}"
    )
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.servers}
    agent_stats: dict[str, list[dict]] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=PLAIN_FLAGS, headless=True)
        try:
            for r in range(args.rounds):
                order = args.servers if r % 2 == 0 else args.servers[::-1]  # alternate: load drifts
                for kind in order:
                    process, query = SERVERS[kind]
                    with server(process, args.width, args.height, args.fps) as (base, _pid):
                        await asyncio.sleep(1.0)
                        run = await measure(browser, base, args.seconds, args.warmup, query)
                        if process == "agent":
                            with contextlib.suppress(Exception):
                                agent_stats.setdefault(kind, []).append(await get_json(base + "/api/stats"))
                    runs[kind].append(run)
                    print(f"  ({kind} round {r + 1}: {len(run['frames'])} frames; {load()})", flush=True)
        finally:
            await browser.close()
    print()
    pooled = {
        kind: report(kind, runs[kind], agent_stats[kind] if kind in agent_stats else [])
        for kind in args.servers
    }
    print()
    for kind, res in pooled.items():
        if res["g2g"]:
            p95 = pct(res["g2g"], 0.95)
            verdict = "met" if p95 <= TARGET_P95_MS and res["failed_share"] < 0.05 else "MISSED"
            print(f"{kind}: glass-to-glass p95 {p95:.1f} ms (target <= {TARGET_P95_MS:.0f} ms: {verdict})")
    for kind in ("agent", "agent-video"):
        if kind in pooled and "naive" in pooled and pooled[kind]["g2g"] and pooled["naive"]["g2g"]:
            a, n = pooled[kind]["g2g"], pooled["naive"]["g2g"]
            print(
                f"{kind}/naive: p50 {pct(a, 0.5) / pct(n, 0.5):.2f}x  "
                f"p95 {pct(a, 0.95) / pct(n, 0.95):.2f}x  max {max(a) / max(n):.2f}x"
            )
    print(load())
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "width": args.width,
                    "height": args.height,
                    "fps": args.fps,
                    "runs": runs,
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first frame not counted")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="each round measures every server once")
    parser.add_argument(
        "--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS), help="what to measure, in order"
    )
    parser.add_argument("--json", default="", help="write every frame's figures to this JSON file")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
