"""Time from the WHEP POST to the first rendered frame in headless Chromium, 1 and 4 viewers joining at
once, for the agent and, in the same run, for aiortc with a naive WHEP handler (benchmarks.naive_whep).

The main figure is Chromium as it comes (no --use-fake-ui-for-media-stream or other permission
flags: what a user's browser does); the same rounds run again with the permission flags the test
suite uses. Each combination runs with the pages preloaded (open and idle, then all (re)join at
once: only the WHEP joins happen together) and with the page load (the pages open at once; POST ->
first frame and navigation -> first frame). Then one viewer behind the emulated link (200 ms RTT,
tests/support/linkemu.py; needs root), agent and naive peer. Each page reports
``postToFirstFrameMs`` (POST sent -> first ``requestVideoFrameCallback``) and ``postToAnswerMs``;
for the agent the breakdown also reads ``/api/stats``: per session ``connect_ms`` (answer created ->
ICE+DTLS connected, agent side) and ``first_keyframe_ms`` (track's first ``recv`` -> first IDR packet).

Run: .venv/bin/python -m benchmarks.media_first_frame [--rounds 6] [--viewers 1 4] [--no-link]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, async_playwright

from benchmarks._media_common import get_json, load, pct, server, summary

CHROMIUM = "/usr/bin/chromium"
PAGE_PARAMS = ""  # extra viewer-page query parameters (--page-params), e.g. "&trickle=0"
PLAIN_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
FLAGS = PLAIN_FLAGS + [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


# Browser-side timeline: when the POST left, ICE connected, DTLS connected (connectionState), per page.
TIMELINE_JS = """
window.__t = {};
const _fetch = window.fetch;
window.fetch = function (url, opts) {
  if (opts && opts.method === "POST" && window.__t.post === undefined) window.__t.post = performance.now();
  return _fetch.apply(this, arguments);
};
const _PC = window.RTCPeerConnection;
window.RTCPeerConnection = function (...args) {
  const pc = new _PC(...args);
  pc.addEventListener("iceconnectionstatechange", () => {
    if (pc.iceConnectionState === "connected" && window.__t.ice === undefined)
      window.__t.ice = performance.now();
  });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected" && window.__t.dtls === undefined)
      window.__t.dtls = performance.now();
  });
  pc.addEventListener("track", () => {
    if (window.__t.track === undefined) window.__t.track = performance.now();
  });
  return pc;
};
window.RTCPeerConnection.prototype = _PC.prototype;
"""
RESULT_JS = """({first: viewer.postToFirstFrameMs, answer: viewer.postToAnswerMs,
  ice: __t.ice - __t.post, dtls: __t.dtls - __t.post, nav: __t.post + viewer.postToFirstFrameMs,
  tl: viewer.timeline || null, session: viewer.session || null})"""
FIRST_STATS_JS = "!viewer.timeline || viewer.timeline.firstStats !== undefined"

# The join, phase by phase: (label, (side, step) from, (side, step) to); "page" steps are the viewer
# page's timeline (web/viewer.js), "agent" steps the session's join_ms (device_agent/media/join_timeline.py).
PHASES = [
    ("page: navigation -> connect() (page load)", ("page", "nav"), ("page", "connect")),
    ("page: connect() -> offer made", ("page", "connect"), ("page", "offer")),
    ("page: offer -> first local candidate", ("page", "offer"), ("page", "candidate")),
    ("page: offer -> ICE gathering done (before the POST)", ("page", "offer"), ("page", "gathered")),
    ("POST sent -> offer at the agent", ("page", "post"), ("agent", "offer")),
    ("agent: offer -> answer ready", ("agent", "offer"), ("agent", "answer")),
    ("answer ready -> page has it", ("agent", "answer"), ("page", "answer")),
    ("page: setRemoteDescription", ("page", "answer"), ("page", "remote")),
    ("page remote set -> first check at the agent", ("page", "remote"), ("agent", "ice_check")),
    ("first check -> first USE-CANDIDATE", ("agent", "ice_check"), ("agent", "ice_nominated")),
    ("USE-CANDIDATE -> agent ICE completed", ("agent", "ice_nominated"), ("agent", "ice_connected")),
    ("agent ICE completed -> DTLS connected", ("agent", "ice_connected"), ("agent", "dtls_connected")),
    ("DTLS connected -> track's first recv", ("agent", "dtls_connected"), ("agent", "subscribed")),
    ("first recv -> IDR handed to aiortc", ("agent", "subscribed"), ("agent", "first_packet")),
    ("IDR handed -> its first packet sent", ("agent", "first_packet"), ("agent", "idr_start")),
    ("IDR first -> last packet sent (pacing)", ("agent", "idr_start"), ("agent", "idr_end")),
    ("IDR last packet -> frame received (page)", ("agent", "idr_end"), ("page", "frameReceive")),
    ("frame received -> first rVFC (decode, render)", ("page", "frameReceive"), ("page", "frame")),
    ("total: POST sent -> first rVFC", ("page", "post"), ("page", "frame")),
    ("total: page connect() -> first rVFC (gathering included)", ("page", "connect"), ("page", "frame")),
    ("(page: POST -> ICE connected)", ("page", "post"), ("page", "ice")),
    ("(page: POST -> DTLS connected)", ("page", "post"), ("page", "dtls")),
]


def join_phases(tl: dict | None, join: dict | None) -> dict[str, float]:
    """One viewer's phases (ms) from its page timeline and the agent's join_ms, on the Unix clock."""
    if not tl or not join or tl.get("origin") is None or join.get("offer_unix_ms") is None:
        return {}

    def at(side: str, step: str) -> float | None:
        if side == "page":
            value = 0.0 if step == "nav" else tl.get(step)
            return None if value is None else tl["origin"] + value
        if step == "offer":
            return join["offer_unix_ms"]
        value = join.get(step)
        return None if value is None else join["offer_unix_ms"] + value

    out = {}
    for label, start, end in PHASES:
        a, b = at(*start), at(*end)
        if a is not None and b is not None:
            out[label] = b - a
    return out


async def one_viewer(browser: Browser, url: str, timeout_ms: int) -> tuple[dict, BrowserContext]:
    """Open the page in a fresh context and wait for its first frame; the caller closes the context."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.add_init_script(TIMELINE_JS)
    try:
        await page.goto(url)
        await page.wait_for_function(
            "window.viewer && window.viewer.postToFirstFrameMs !== null", timeout=timeout_ms
        )
        try:
            await page.wait_for_function(FIRST_STATS_JS, timeout=1000)
        except Exception:
            pass
        return await page.evaluate(RESULT_JS), context
    except Exception as exc:  # a viewer that never shows a frame is reported, not hidden
        state = await page.evaluate("window.viewer ? [viewer.state, viewer.error] : null")
        return {"first": None, "answer": None, "error": f"{type(exc).__name__}: {state}"}, context


DISCONNECT_JS = """(async () => { await window.viewerControls.disconnect();
  window.viewer.postToFirstFrameMs = null; window.viewer.postToAnswerMs = null; window.__t = {}; })()"""


async def _wait_first(page, timeout_ms: int) -> dict:  # noqa: ANN001
    try:
        await page.wait_for_function("window.viewer.postToFirstFrameMs !== null", timeout=timeout_ms)
        try:  # the first frame's getStats snapshot is taken just after it
            await page.wait_for_function(FIRST_STATS_JS, timeout=1000)
        except Exception:
            pass
        result = await page.evaluate(RESULT_JS)
        if result["first"] > 1000:  # an outlier: say what the browser's receiver saw
            print(f"  slow viewer {result}: getStats {await page.evaluate('viewer.stats')}")
        return result
    except Exception as exc:
        return {
            "first": None,
            "answer": None,
            "error": f"{type(exc).__name__}: {await page.evaluate('viewer.state')}",
        }


async def close_viewer(context: BrowserContext) -> None:
    for page in context.pages:
        await page.evaluate("window.viewerControls && window.viewerControls.disconnect()")
    await context.close()


async def run_rounds(
    browser: Browser,
    base: str,
    page_base: str,
    rounds: int,
    viewers: int,
    agent: bool,
    preloaded: bool = False,
    query: str = "",
) -> dict[str, list[float]]:
    url = f"{page_base}/?whep={base}/whep{query}{PAGE_PARAMS}"
    out: dict[str, list[float]] = {
        "first": [],
        "answer": [],
        "slowest": [],
        "connect": [],
        "keyframe": [],
        "ice": [],
        "dtls": [],
        "failed": [],
        "nav": [],
        "slowest_nav": [],
    }
    phases: dict[str, list[float]] = {label: [] for label, _, _ in PHASES}
    for r in range(rounds + 1):  # round 0 warms up (browser, codecs, page cache) and is not counted
        opened = await asyncio.gather(*(one_viewer(browser, url, 15000) for _ in range(viewers)))
        results = [res for res, _ in opened]
        if preloaded:  # pages already loaded and idle: only the WHEP joins happen at once
            pages = [ctx.pages[0] for _, ctx in opened]
            await asyncio.gather(*(p.evaluate(DISCONNECT_JS) for p in pages))
            await asyncio.sleep(1.0)
            await asyncio.gather(*(p.evaluate("window.viewerControls.connect()") for p in pages))
            results = list(await asyncio.gather(*(_wait_first(p, 15000) for p in pages)))
        stats = await get_json(base + "/api/stats") if agent else {}
        await asyncio.gather(*(close_viewer(ctx) for _, ctx in opened))
        if r == 0:
            await asyncio.sleep(1.0)
            continue
        firsts = [x["first"] for x in results if x["first"] is not None]
        out["failed"].extend(1.0 for x in results if x["first"] is None)
        for x in results:
            if x.get("error"):
                print("  viewer failed:", x["error"])
        out["first"] += firsts
        out["answer"] += [x["answer"] for x in results if x["answer"] is not None]
        out["ice"] += [x["ice"] for x in results if x.get("ice") is not None]
        out["dtls"] += [x["dtls"] for x in results if x.get("dtls") is not None]
        navs = [x["nav"] for x in results if x.get("nav") is not None]
        if not preloaded:
            out["nav"] += navs
        if len(firsts) == viewers:
            out["slowest"].append(max(firsts))
            if not preloaded and len(navs) == viewers:
                out["slowest_nav"].append(max(navs))
        joins = {}
        for s in (stats.get("viewers") or {}).get("sessions", []):
            joins[s.get("id")] = s.get("join_ms")
            if s.get("connect_ms") is not None:
                out["connect"].append(s["connect_ms"])
            if s.get("first_keyframe_ms") is not None:
                out["keyframe"].append(s["first_keyframe_ms"])
        for x in results:
            if x.get("first") is None:
                continue
            for label, value in join_phases(x.get("tl"), joins.get(x.get("session"))).items():
                phases[label].append(value)
            first_stats = (x.get("tl") or {}).get("firstStats") or {}
            for key in ("jitterBufferMs", "decodeMs", "assemblyMs"):
                if first_stats.get(key) is not None:
                    phases.setdefault(f"(page getStats at first frame: {key})", []).append(first_stats[key])
        await asyncio.sleep(1.0)  # sessions end (DELETE) before the next round
    out.update({f"phase: {k}": v for k, v in phases.items()})
    return out


def report(label: str, res: dict[str, list[float]]) -> None:
    print(f"{label}")
    print(f"  POST -> first frame, per viewer      {summary(res['first'])} ms")
    print(f"  POST -> first frame, slowest/round   {summary(res['slowest'])} ms")
    if res["nav"]:
        print(f"  page load -> first frame, per viewer {summary(res['nav'])} ms")
        print(f"  page load -> first frame, slowest    {summary(res['slowest_nav'])} ms")
    print(f"  POST -> answer (201)                 {summary(res['answer'])} ms")
    print(f"  POST -> ICE connected (browser)      {summary(res['ice'])} ms")
    print(f"  POST -> DTLS connected (browser)     {summary(res['dtls'])} ms")
    if res["connect"]:
        print(f"  answer -> ICE+DTLS connected (agent) {summary(res['connect'])} ms")
        print(f"  first recv -> first IDR packet       {summary(res['keyframe'])} ms")
    if res["failed"]:
        print(f"  viewers without a frame: {len(res['failed'])}")
    if any(v for k, v in res.items() if k.startswith("phase: ")):
        print("  where the time goes, per viewer (ms; page and agent clocks lined up, one machine):")
        for key, values in res.items():
            if key.startswith("phase: ") and values:
                print(f"    {key[7:]:48s} {summary(values)}")


def _p(values: list[float], q: float) -> str:
    return f"{pct(values, q):6.0f}" if values else "     -"


async def main_async(args: argparse.Namespace) -> None:
    print(
        f"media_first_frame: {args.viewers} viewers at once, {args.rounds} rounds, "
        f"{args.width}x{args.height} {args.fps} fps; {load()}"
    )
    table: list[tuple[str, dict[str, list[float]]]] = []
    async with async_playwright() as pw:
        if args.agent_url:  # an agent already running (e.g. under py-spy): measure only that
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=PLAIN_FLAGS, headless=True)
            try:
                res = await run_rounds(
                    browser,
                    args.agent_url,
                    args.agent_url,
                    args.rounds,
                    args.viewers[-1],
                    agent=True,
                    preloaded=args.preloaded,
                )
                report("agent at " + args.agent_url, res)
                if args.json:
                    Path(args.json).write_text(json.dumps({"agent at " + args.agent_url: res}))
            finally:
                await browser.close()
            return
        browsers = {
            "as it comes": await pw.chromium.launch(
                executable_path=CHROMIUM, args=PLAIN_FLAGS, headless=True
            ),
            "permission flags": await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True),
        }
        try:
            with contextlib.ExitStack() as stack:
                bases = {
                    kind: stack.enter_context(server(kind, args.width, args.height, args.fps))[0]
                    for kind in args.servers
                }
                await asyncio.sleep(2.0)
                for flavour, browser in browsers.items():
                    if flavour not in args.flavours:
                        continue
                    for viewers in args.viewers:
                        for preloaded in [m == "preloaded" for m in args.modes]:
                            for kind, base in bases.items():
                                started = time.monotonic()
                                res = await run_rounds(
                                    browser,
                                    base,
                                    base,
                                    args.rounds,
                                    viewers,
                                    agent=kind == "agent",
                                    preloaded=preloaded,
                                )
                                label = (
                                    f"{kind:5s} | Chromium {flavour:16s} | {viewers} viewer(s) | "
                                    f"{'pages preloaded' if preloaded else 'with page load'}"
                                )
                                report(f"{label}  ({time.monotonic() - started:.0f} s; {load()})", res)
                                table.append((label, res))
        finally:
            for browser in browsers.values():
                await browser.close()
        if not args.no_link and os.geteuid() == 0 and "as it comes" in args.flavours:
            table += await behind_link(pw, args)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(table)))
    print(
        "\nPOST -> first frame (ms), per viewer p50/p95, slowest/round p95; page load -> first frame p50/p95"
        " (targets, 4 viewers: p95 <= 300 preloaded, <= 500 with the page load)"
    )
    for label, res in table:
        print(
            f"  {label}  POST p50 {_p(res['first'], 0.5)} p95 {_p(res['first'], 0.95)} slowest p95 "
            f"{_p(res['slowest'], 0.95)} | load p50 {_p(res['nav'], 0.5)} p95 {_p(res['nav'], 0.95)}"
            f"{'  (' + str(len(res['failed'])) + ' without a frame)' if res['failed'] else ''}"
        )


async def behind_link(pw, args: argparse.Namespace) -> list[tuple[str, dict[str, list[float]]]]:  # noqa: ANN001
    """One viewer (Chromium as it comes) behind the emulated link, 100 ms each way, for both servers."""
    from tests.support.impaired_media import TOKEN, chromium_wrapper, server_in_namespace
    from tests.support.linkemu import ImpairedLink, LinkProfile

    out = []
    with tempfile.TemporaryDirectory(prefix="first-frame-link-") as tmp:
        for kind in args.servers:
            with ImpairedLink(seed=2) as link:
                link.set_both(LinkProfile(delay_ms=100))
                browser = await pw.chromium.launch(
                    executable_path=str(chromium_wrapper(link.ns_b, Path(tmp))),
                    args=PLAIN_FLAGS,
                    headless=True,
                )
                try:
                    with server_in_namespace(link, kind, None, args.width, args.height, args.fps) as base:
                        res = await run_rounds(
                            browser, base, base, args.rounds, 1, agent=False, query=f"&token={TOKEN}"
                        )
                finally:
                    await browser.close()
            label = f"{kind:5s} | Chromium as it comes, behind the link (200 ms RTT) | 1 viewer | page load"
            report(f"{label}  ({load()})", res)
            out.append((label, res))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--viewers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument(
        "--page-params", default="", help='extra viewer-page parameters, e.g. "&trickle=0&audio=0"'
    )
    parser.add_argument(
        "--preloaded", action="store_true", help="with --agent-url: pages preloaded, then (re)join"
    )
    parser.add_argument("--no-link", action="store_true", help="skip the viewer behind the emulated link")
    parser.add_argument("--servers", nargs="+", default=["agent", "naive"], choices=["agent", "naive"])
    parser.add_argument(
        "--flavours", nargs="+", default=["as it comes", "permission flags"], help="Chromium launch flavours"
    )
    parser.add_argument("--json", default="", help="also write every figure, per viewer, to this JSON file")
    parser.add_argument("--modes", nargs="+", default=["preloaded", "load"], choices=["preloaded", "load"])
    parser.add_argument("--agent-url", default="", help="measure an agent already running at this URL only")
    args = parser.parse_args()
    global PAGE_PARAMS
    PAGE_PARAMS = args.page_params
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
