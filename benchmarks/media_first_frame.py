"""Time from the WHEP POST to the first rendered frame in headless Chromium, 4 viewers joining at once,
for the agent and, in the same run, for aiortc with a naive WHEP handler (benchmarks.naive_whep).

Each round opens 4 pages of the viewer page concurrently; each page reports ``postToFirstFrameMs``
(POST sent -> first ``requestVideoFrameCallback``) and ``postToAnswerMs``. For the agent the
breakdown also reads ``/api/stats``: per session ``connect_ms`` (answer created -> ICE+DTLS
connected, agent side) and ``first_keyframe_ms`` (track's first ``recv`` -> first IDR packet).

Run: .venv/bin/python -m benchmarks.media_first_frame [--rounds 8] [--viewers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from playwright.async_api import Browser, BrowserContext, async_playwright

from benchmarks._media_common import get_json, load, server, summary

CHROMIUM = "/usr/bin/chromium"
PAGE_PARAMS = ""  # extra viewer-page query parameters (--page-params), e.g. "&trickle=0"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         "--autoplay-policy=no-user-gesture-required"]


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
    if (pc.iceConnectionState === "connected" && window.__t.ice === undefined) window.__t.ice = performance.now();
  });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected" && window.__t.dtls === undefined) window.__t.dtls = performance.now();
  });
  pc.addEventListener("track", () => { if (window.__t.track === undefined) window.__t.track = performance.now(); });
  return pc;
};
window.RTCPeerConnection.prototype = _PC.prototype;
"""
RESULT_JS = """({first: viewer.postToFirstFrameMs, answer: viewer.postToAnswerMs,
  ice: __t.ice - __t.post, dtls: __t.dtls - __t.post})"""


async def one_viewer(browser: Browser, url: str, timeout_ms: int) -> tuple[dict, BrowserContext]:
    """Open the page in a fresh context and wait for its first frame; the caller closes the context."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.add_init_script(TIMELINE_JS)
    try:
        await page.goto(url)
        await page.wait_for_function("window.viewer && window.viewer.postToFirstFrameMs !== null",
                                     timeout=timeout_ms)
        return await page.evaluate(RESULT_JS), context
    except Exception as exc:  # a viewer that never shows a frame is reported, not hidden
        state = await page.evaluate("window.viewer ? [viewer.state, viewer.error] : null")
        return {"first": None, "answer": None, "error": f"{type(exc).__name__}: {state}"}, context


DISCONNECT_JS = """(async () => { await window.viewerControls.disconnect();
  window.viewer.postToFirstFrameMs = null; window.viewer.postToAnswerMs = null; window.__t = {}; })()"""


async def _wait_first(page, timeout_ms: int) -> dict:  # noqa: ANN001
    try:
        await page.wait_for_function("window.viewer.postToFirstFrameMs !== null", timeout=timeout_ms)
        result = await page.evaluate(RESULT_JS)
        if result["first"] > 1000:  # an outlier: say what the browser's receiver saw
            print(f"  slow viewer {result}: getStats {await page.evaluate('viewer.stats')}")
        return result
    except Exception as exc:
        return {"first": None, "answer": None, "error": f"{type(exc).__name__}: {await page.evaluate('viewer.state')}"}


async def close_viewer(context: BrowserContext) -> None:
    for page in context.pages:
        await page.evaluate("window.viewerControls && window.viewerControls.disconnect()")
    await context.close()


async def run_rounds(browser: Browser, base: str, page_base: str, rounds: int, viewers: int,
                     agent: bool, preloaded: bool = False) -> dict[str, list[float]]:
    url = f"{page_base}/?whep={base}/whep{PAGE_PARAMS}"
    out: dict[str, list[float]] = {"first": [], "answer": [], "slowest": [], "connect": [], "keyframe": [],
                                   "ice": [], "dtls": [], "failed": []}
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
        if len(firsts) == viewers:
            out["slowest"].append(max(firsts))
        for s in (stats.get("viewers") or {}).get("sessions", []):
            if s.get("connect_ms") is not None:
                out["connect"].append(s["connect_ms"])
            if s.get("first_keyframe_ms") is not None:
                out["keyframe"].append(s["first_keyframe_ms"])
        await asyncio.sleep(1.0)  # sessions end (DELETE) before the next round
    return out


def report(label: str, res: dict[str, list[float]]) -> None:
    print(f"{label}")
    print(f"  POST -> first frame, per viewer      {summary(res['first'])} ms")
    print(f"  POST -> first frame, slowest/round   {summary(res['slowest'])} ms")
    print(f"  POST -> answer (201)                 {summary(res['answer'])} ms")
    print(f"  POST -> ICE connected (browser)      {summary(res['ice'])} ms")
    print(f"  POST -> DTLS connected (browser)     {summary(res['dtls'])} ms")
    if res["connect"]:
        print(f"  answer -> ICE+DTLS connected (agent) {summary(res['connect'])} ms")
        print(f"  first recv -> first IDR packet       {summary(res['keyframe'])} ms")
    if res["failed"]:
        print(f"  viewers without a frame: {len(res['failed'])}")


async def main_async(args: argparse.Namespace) -> None:
    print(f"media_first_frame: {args.viewers} viewers at once, {args.rounds} rounds, "
          f"{args.width}x{args.height} {args.fps} fps; {load()}")
    results = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            if args.agent_url:  # an agent already running (e.g. under py-spy): measure only that
                results["agent"] = await run_rounds(browser, args.agent_url, args.agent_url, args.rounds,
                                                    args.viewers, agent=True, preloaded=args.preloaded)
                report("agent at " + args.agent_url, results["agent"])
                return
            for kind in ("agent", "naive"):
                with server(kind, args.width, args.height, args.fps) as (base, _pid):
                    await asyncio.sleep(2.0)
                    started = time.monotonic()
                    results[kind] = await run_rounds(browser, base, base, args.rounds, args.viewers,
                                                     agent=kind == "agent", preloaded=args.preloaded)
                    print(f"({kind}: {time.monotonic() - started:.0f} s; {load()})", flush=True)
        finally:
            await browser.close()
    report("agent (device-agent demo)", results["agent"])
    report("aiortc naive WHEP handler", results["naive"])
    a, n = results["agent"], results["naive"]
    if a["first"] and n["first"]:
        from benchmarks._media_common import pct
        print(f"\np50 per viewer: agent {pct(a['first'], .5):.0f} ms vs naive {pct(n['first'], .5):.0f} ms "
              f"-> naive/agent {pct(n['first'], .5) / pct(a['first'], .5):.1f}x; "
              f"p95 slowest/round: agent {pct(a['slowest'], .95):.0f} ms (target < 300 ms), "
              f"naive {pct(n['slowest'], .95):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--page-params", default="", help='extra viewer-page parameters, e.g. "&trickle=0&audio=0"')
    parser.add_argument("--preloaded", action="store_true",
                        help="open the pages first, then make them all (re)join at once: no page loads in the way")
    parser.add_argument("--agent-url", default="", help="measure an agent already running at this URL only")
    args = parser.parse_args()
    global PAGE_PARAMS
    PAGE_PARAMS = args.page_params
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
