"""Real Chromium watching a real agent (or the naive aiortc peer) through the emulated link.

The server runs in the link's namespace a (``ip netns exec``), listening on its address with a
``web.token`` (a non-loopback listen needs one); Chromium runs in namespace b through a wrapper
script (``ip netns exec NS /usr/bin/chromium "$@"``) given to Playwright as its executable
(Playwright talks to it over a pipe, which survives the exec). Everything between them crosses
the emulator (tests/support/linkemu.py): media a->b, RTCP and the page load in both directions.

``busy_clip`` writes a clip that needs more than a 1 Mbit/s link at 1280x720 (scrolling noise
texture, moving blocks, per-frame grain) for the file camera. ``watch`` opens the viewer page,
counts presented frames per second with ``requestVideoFrameCallback`` and returns the browser's
``getStats`` figures with the link's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.browser import CHROMIUM
from tests.support.linkemu import ImpairedLink, NamespaceLoop, netns_command

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "impaired-link-token"
PORT = 8480
# Chromium as it comes: no permission or autoplay flags (the viewer page plays muted video).
PLAIN_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

COUNT_FRAMES_JS = """
window.__presented = [];
window.__countFrames = () => {
  const v = document.getElementById('video');
  const tick = () => { window.__presented.push(performance.now()); v.requestVideoFrameCallback(tick); };
  v.requestVideoFrameCallback(tick);
};
"""
INBOUND_JS = """async () => {
  const pc = window.__pcs && window.__pcs[window.__pcs.length - 1];
  if (!pc) return {};
  const report = await pc.getStats();
  let s = {};
  report.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') s = {
      framesDecoded: r.framesDecoded, framesDropped: r.framesDropped, framesReceived: r.framesReceived,
      keyFramesDecoded: r.keyFramesDecoded, freezeCount: r.freezeCount,
      totalFreezesDuration: r.totalFreezesDuration, pauseCount: r.pauseCount, packetsLost: r.packetsLost,
      packetsReceived: r.packetsReceived, nackCount: r.nackCount, pliCount: r.pliCount, firCount: r.firCount,
      retransmittedPacketsReceived: r.retransmittedPacketsReceived,
      bytesReceived: r.bytesReceived, jitterBufferDelay: r.jitterBufferDelay,
      jitterBufferEmittedCount: r.jitterBufferEmittedCount, frameWidth: r.frameWidth,
      frameHeight: r.frameHeight};
  });
  return s;
}"""
KEEP_PCS_JS = """
window.__pcs = []; window.__t = {};
const _fetch = window.fetch;
window.fetch = function (url, opts) {
  if (opts && opts.method === "POST" && window.__t.post === undefined) window.__t.post = performance.now();
  return _fetch.apply(this, arguments);
};
const _PC = window.RTCPeerConnection;
window.RTCPeerConnection = function (...args) {
  const pc = new _PC(...args); window.__pcs.push(pc);
  pc.addEventListener("iceconnectionstatechange", () => {
    if (pc.iceConnectionState === "connected" && window.__t.ice === undefined)
      window.__t.ice = performance.now();
  });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected" && window.__t.dtls === undefined)
      window.__t.dtls = performance.now();
  });
  return pc;
};
window.RTCPeerConnection.prototype = _PC.prototype;
"""
TIMELINE_JS = """() => ({answer: window.viewer.postToAnswerMs, ice: window.__t.ice - window.__t.post,
  dtls: window.__t.dtls - window.__t.post, page_load_to_post: window.__t.post})"""


def busy_clip(path: Path, width: int = 1280, height: int = 720, fps: int = 30, seconds: float = 8.0) -> Path:
    """A clip no 1 Mbit/s link carries well at this size: a scrolling detailed texture, moving blocks."""
    import av
    import numpy as np

    rng = np.random.default_rng(5)
    cells = rng.integers(0, 256, (height // 4, width // 4), dtype=np.uint8)
    # 4x4-pixel detail, tiled for scrolling
    texture = np.tile(np.kron(cells, np.ones((4, 4), np.uint8)), (2, 2))
    chroma = np.kron(
        rng.integers(64, 192, (height // 16 + 1, width // 16 + 1), dtype=np.uint8), np.ones((8, 8), np.uint8)
    )[: height // 2, : width // 2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            dx, dy = (i * 5) % width, (i * 3) % height
            y = texture[dy : dy + height, dx : dx + width].copy()
            for k in range(6):  # moving inverted blocks
                bx = int((np.sin(i / 15 + k) + 1) / 2 * (width - width // 8))
                by = int((np.cos(i / 11 + 2 * k) + 1) / 2 * (height - height // 6))
                y[by : by + height // 6, bx : bx + width // 8] = (
                    255 - y[by : by + height // 6, bx : bx + width // 8]
                )
            u = np.roll(chroma, i * 2, axis=1)
            v = np.roll(chroma, -i, axis=0)
            planes = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(
                height * 3 // 2, width
            )
            for packet in stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _agent_toml(
    tmp: Path,
    addr: str,
    clip: Path | None,
    width: int,
    height: int,
    fps: int,
    extra: dict[str, str] | None = None,
) -> Path:
    """The agent's configuration; ``extra`` adds TOML lines to the ``camera`` and ``encoder`` sections."""
    extra = extra or {}
    camera = f'backend = "file"\npath = "{clip}"\n' if clip is not None else 'backend = "test-pattern"\n'
    path = tmp / "agent.toml"
    path.write_text(
        f'[device]\nid = "impaired"\nstate_dir = "{tmp / "state"}"\n\n'
        f"[camera]\n{camera}width = {width}\nheight = {height}\nfps = {fps}\n{extra.get('camera', '')}\n"
        f'[audio]\nbackend = "synthetic"\n\n[encoder]\nbackend = "libx264"\n{extra.get("encoder", "")}\n'
        f'[web]\nlisten = "{addr}:{PORT}"\ntoken = "{TOKEN}"\n\n[mqtt]\nurl = ""\n'
    )
    return path


@contextlib.contextmanager
def server_in_namespace(
    link: ImpairedLink,
    kind: str,
    clip: Path | None,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    extra: dict[str, str] | None = None,
) -> Iterator[str]:
    """The agent (``kind="agent"``, ``device-agent run``; ``extra``: see ``_agent_toml``) or the naive
    peer in namespace a; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="impaired-") as tmp_name:
        tmp = Path(tmp_name)
        if kind == "agent":
            argv = [
                str(ROOT / ".venv/bin/device-agent"),
                "run",
                "--config",
                str(_agent_toml(tmp, link.addr_a, clip, width, height, fps, extra)),
            ]
        else:
            argv = [
                sys.executable,
                "-m",
                "benchmarks.naive_whep",
                "--listen",
                f"{link.addr_a}:{PORT}",
                "--width",
                str(width),
                "--height",
                str(height),
                "--fps",
                str(fps),
            ]
            if clip is not None:
                argv += ["--clip", str(clip)]
        log = open(tmp / "server.log", "w+")
        proc = subprocess.Popen(
            netns_command(link.ns_a, argv),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        base = f"http://{link.addr_a}:{PORT}"
        probe = NamespaceLoop(link.ns_a)
        try:
            deadline = time.monotonic() + 40
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{kind} exited with {proc.returncode}:\n{log.read()[-3000:]}")
                try:
                    probe.run(get_json(base + "/api/stats"), timeout=5)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            yield base
        except BaseException:
            log.flush()
            log.seek(0)
            # shown with the failure
            print(f"--- {kind} log (tail) ---\n{log.read()[-4000:]}", file=sys.stderr)
            raise
        finally:
            probe.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            return await resp.json()


def chromium_wrapper(namespace: str, directory: Path) -> Path:
    """A script that runs Debian's Chromium inside ``namespace`` (Playwright's executable_path)."""
    path = directory / f"chromium-{namespace}"
    path.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} "$@"\n')
    path.chmod(0o755)
    return path


@dataclass
class WatchResult:
    first_frame_ms: float | None
    per_second: list[int]  # presented frames in each second after the first frame
    inbound: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)  # (t, link bytes a->b) once a second
    server: dict[str, Any] = field(default_factory=dict)
    presented: list[float] = field(default_factory=list)  # page time (ms) of every presented frame
    page_marks: list[float] = field(default_factory=list)  # page time (ms) when ``during`` marked
    # POST -> answer, ICE, DTLS (ms); page start -> POST
    timeline: dict[str, Any] = field(default_factory=dict)

    def fps_median(self) -> float | None:
        return statistics.median(self.per_second) if self.per_second else None

    def fps_p5(self) -> float | None:
        if not self.per_second:
            return None
        ordered = sorted(self.per_second)
        return ordered[int(0.05 * len(ordered))]

    def sender_kbps(self, after_s: float) -> float | None:
        """What the server offered into the link (a->b bytes) from ``after_s`` to the end, kbit/s."""
        late = [s for s in self.samples if s["t"] >= after_s]
        if len(late) < 2:
            return None
        return (late[-1]["bytes"] - late[0]["bytes"]) * 8 / 1000 / (late[-1]["t"] - late[0]["t"])

    def max_window_kbps(self, after_s: float, window_s: float = 5.0) -> float | None:
        late = [s for s in self.samples if s["t"] >= after_s]
        best = None
        for i, a in enumerate(late):
            for b in late[i + 1 :]:
                if b["t"] - a["t"] >= window_s:
                    rate = (b["bytes"] - a["bytes"]) * 8 / 1000 / (b["t"] - a["t"])
                    best = rate if best is None else max(best, rate)
                    break
        return best


async def open_viewer_page(browser: Any, base: str) -> tuple[Any, Any]:
    """The shipped viewer page of ``base`` in a new context of ``browser``, counting presented frames
    (``window.__presented``) and keeping its peer connections (``INBOUND_JS``); returns (context, page)."""
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.add_init_script(COUNT_FRAMES_JS + KEEP_PCS_JS)
        await page.goto(f"{base}/?token={TOKEN}&whep={base}/whep")
        await page.evaluate("window.__countFrames()")
    except BaseException:
        await context.close()
        raise
    return context, page


async def close_viewer_page(context: Any, page: Any) -> None:
    """Disconnect the page's viewer (DELETE of its session) and close its context."""
    with contextlib.suppress(Exception):
        await page.evaluate("window.viewerControls && window.viewerControls.disconnect()")
    await context.close()


async def watch(
    browser: Any,
    link: ImpairedLink,
    base: str,
    seconds: float,
    *,
    server_stats: bool = True,
    during: Any = None,
    mark_page_time: list[Any] | None = None,
) -> WatchResult:
    """Open the viewer page in ``browser`` (running in namespace b) for ``seconds`` after its first frame.

    ``during(elapsed_s)`` is awaited once a second (e.g. to change the link); each item it appends to
    ``mark_page_time`` records the page's clock then (``page_marks``). Returns what was seen.
    """
    started = time.monotonic()
    context, page = await open_viewer_page(browser, base)
    probe: NamespaceLoop | None = None
    try:
        probe = NamespaceLoop(link.ns_a) if server_stats else None
        samples: list[dict[str, Any]] = []
        first: float | None = None
        first_at: float | None = None
        marks: list[float] = []
        while True:
            now = time.monotonic() - started
            counters = link.stats()["a_to_b"]
            samples.append(
                {
                    "t": now,
                    "bytes": counters["bytes"],
                    "queue_drops": counters["queue_drops"],
                    "lost": counters["lost"],
                }
            )
            if first is None:
                first = await page.evaluate("window.viewer && window.viewer.postToFirstFrameMs")
                if first is not None:
                    first_at = now
            if during is not None:
                await during(now)
                while mark_page_time is not None and len(marks) < len(mark_page_time):
                    marks.append(await page.evaluate("performance.now()"))
            if first_at is not None and now - first_at >= seconds:
                break
            if first_at is None and now > seconds + 15:
                break  # never a frame: report it
            await asyncio.sleep(1.0 - (time.monotonic() - started) % 1.0)
        inbound = await page.evaluate(INBOUND_JS)
        timeline = await page.evaluate(TIMELINE_JS)
        presented = await page.evaluate("window.__presented")
        server = await probe.run_async(get_json(base + "/api/stats")) if probe is not None else {}
    finally:
        if probe is not None:
            probe.close()
        await close_viewer_page(context, page)
    per_second: list[int] = []
    if presented:
        origin = presented[0]
        per_second = [0] * max(1, int(seconds))
        for t in presented:
            index = int((t - origin) / 1000)
            if index < len(per_second):
                per_second[index] += 1
    return WatchResult(first, per_second, inbound, samples, server, presented or [], marks, timeline)


async def aiortc_watch(base: str, seconds: float) -> list[float]:
    """A real aiortc viewer (video only, decoding) for ``seconds``; returns each decoded frame's arrival time.

    Run it on a ``NamespaceLoop`` of namespace b so its sockets are behind the link.
    """
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    arrivals: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    async def pump(track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                arrivals.append(time.monotonic())

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(pump(track))))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/whep", data=pc.localDescription.sdp, headers=headers) as resp:
            answer = await resp.text()
            assert resp.status == 201, (resp.status, answer)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await asyncio.sleep(seconds)
    await pc.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return arrivals
