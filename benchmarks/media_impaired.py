"""One headless Chromium viewer behind an emulated impaired link, for the agent and the naive aiortc peer.

The link (tests/support/linkemu.py, both directions): ``--loss`` random loss, ``--delay-ms`` each
way, ``--rate-kbps`` bottleneck with a ``--queue-ms`` drop-tail queue. Content that needs more than
the link: a busy moving clip (tests/support/impaired_media.busy_clip) through the file camera at
1280x720 30 fps, or the test pattern with ``--pattern``. The agent (``device-agent run``) and the
naive peer (benchmarks.naive_whep, aiortc encoding per viewer) run in the link's namespace a;
Chromium, as it comes (no permission flags), in namespace b. Each runs ``--seconds`` after the
first frame; printed per server and loss rate: presented fps (requestVideoFrameCallback) median and
5th percentile per second, freezeCount and totalFreezesDuration (getStats), what the server offered
into the link after the first 10 s, first frame time, IDRs (keyframes decoded; the agent's by
cause), RTX sent/suppressed, and the emulator's queue drops. Needs root (namespaces, TUN).

Run: .venv/bin/python -m benchmarks.media_impaired [--seconds 60] [--loss 0.05 0.15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from benchmarks._media_common import add_impaired_link_args, load
from tests.support.impaired_media import (
    PLAIN_FLAGS,
    WatchResult,
    busy_clip,
    chromium_wrapper,
    server_in_namespace,
    watch,
)
from tests.support.linkemu import ImpairedLink, LinkProfile

TARGETS = (
    "targets at 5 % loss: fps median >= 25, p5 >= 20, <= 3 freezes and <= 2 s frozen per minute, "
    "sender <= 1000 kbit/s after 10 s, first frame <= 1000 ms; at 15 % loss: fps median >= 15"
)


def figures(res: WatchResult, seconds: float) -> dict[str, Any]:
    inbound, server = res.inbound, res.server
    per_min = 60.0 / seconds
    out: dict[str, Any] = {
        "first_frame_ms": None if res.first_frame_ms is None else round(res.first_frame_ms),
        "fps_median": res.fps_median(),
        "fps_p5": res.fps_p5(),
        "freezes_per_min": None
        if inbound.get("freezeCount") is None
        else round(inbound["freezeCount"] * per_min, 1),
        "frozen_s_per_min": None
        if inbound.get("totalFreezesDuration") is None
        else round(inbound["totalFreezesDuration"] * per_min, 2),
        "sender_kbps_after_10s": None if res.sender_kbps(10) is None else round(res.sender_kbps(10)),
        "sender_kbps_max_5s_after_10s": None
        if res.max_window_kbps(10) is None
        else round(res.max_window_kbps(10)),
        "keyframes_decoded": inbound.get("keyFramesDecoded"),
        "pli_sent": inbound.get("pliCount"),
        "nack_sent": inbound.get("nackCount"),
        "rtx_received": inbound.get("retransmittedPacketsReceived"),
        "frames_decoded": inbound.get("framesDecoded"),
        "frames_dropped": inbound.get("framesDropped"),
        "queue_drops": res.samples[-1]["queue_drops"] - res.samples[0]["queue_drops"]
        if res.samples
        else None,
        "post_to": {k: None if v is None else round(v) for k, v in res.timeline.items()},
    }
    video = server.get("video") or {}
    if video:
        out["server_video"] = {
            k: video.get(k)
            for k in ("fps", "frames", "keyframes", "skipped", "encode_ms", "capture_to_packet")
            if k in video
        }
    sessions = (server.get("viewers") or {}).get("sessions") or []
    if sessions:
        s = sessions[0]
        fan = server.get("fanout") or {}
        out.update(
            {
                "idrs_forced": fan.get("idrs_forced"),
                "idrs_by_cause": s.get("idrs_by_cause"),
                "keyframes_sent": s.get("keyframes_sent"),
                "first_keyframe_bytes": s.get("first_keyframe_bytes"),
                "rtx_sent": s.get("rtx_sent"),
                "rtx_protective": s.get("rtx_protective"),
                "rtx_suppressed": s.get("rtx_suppressed_by_reason"),
                "estimate_kbps": (s.get("estimate_bps") or 0) // 1000,
                "target_kbps": (fan.get("target_bitrate") or 0) // 1000,
                "pli_handling": s.get("pli_handling"),
            }
        )
    return out


async def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="media-impaired-") as tmp_name:
        tmp = Path(tmp_name)
        clip = None if args.pattern else busy_clip(tmp / "busy.mp4", args.width, args.height, args.fps)
        for loss in args.loss:
            profile = LinkProfile(
                loss=loss, delay_ms=args.delay_ms, rate_kbps=args.rate_kbps, queue_ms=args.queue_ms
            )
            for kind in args.servers:
                with ImpairedLink(seed=11) as link:
                    link.set_both(profile)
                    async with async_playwright() as pw:
                        browser = await pw.chromium.launch(
                            executable_path=str(chromium_wrapper(link.ns_b, tmp)),
                            args=PLAIN_FLAGS,
                            headless=True,
                        )
                        try:
                            with server_in_namespace(
                                link, kind, clip, args.width, args.height, args.fps
                            ) as base:
                                res = await watch(
                                    browser, link, base, args.seconds, server_stats=kind == "agent"
                                )
                        finally:
                            await browser.close()
                label = f"{kind} loss={loss:.0%}"
                results[label] = figures(res, args.seconds)
                print(f"{label}: {json.dumps(results[label])}  ({load()})", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--loss", type=float, nargs="+", default=[0.05, 0.15])
    add_impaired_link_args(parser)
    parser.add_argument("--pattern", action="store_true", help="the test pattern instead of the busy clip")
    args = parser.parse_args()
    print(
        f"media_impaired: {args.width}x{args.height} {args.fps} fps, {args.seconds:.0f} s, loss {args.loss}, "
        f"{args.delay_ms:.0f} ms each way, {args.rate_kbps:.0f} kbit/s, {args.queue_ms:.0f} ms queue; "
        f"{load()}"
    )
    print(TARGETS)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
