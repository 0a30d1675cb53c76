"""Encoding layers with real aiortc viewers: the agent in namespace a, two clean viewers next to it,
one behind a thin emulated link (tests/support/linkemu.py) in namespace b.

The thin viewer is switched to the low layer at one of its IDRs and its frames then come at the low
resolution, while the clean viewers stay on the high layer at its bitrate; its PLIs then cause no
IDRs on the high layer; when its link recovers it is switched back up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

import aiohttp
import pytest

from tests.support.impaired_media import TOKEN, get_json, server_in_namespace
from tests.support.linkemu import CLEAN, ImpairedLink, LinkProfile, NamespaceLoop

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TUN devices need root")]

WIDTH, HEIGHT, FPS = 640, 360, 30
THIN = LinkProfile(delay_ms=20, rate_kbps=350, queue_ms=200)
EXTRA = {
    "camera": 'pattern = "busy"\n',
    "encoder": (
        "bitrate = 1000000\nmin_bitrate = 150000\nmax_bitrate = 1200000\nlayers = 2\nlow_layer_scale = 0.5\n"
    ),
}


async def watch_sizes(
    base: str, seconds: float, frames: list[tuple[float, int]], stop: threading.Event | None = None
) -> None:
    """A real aiortc viewer (video only, decoding) for ``seconds`` or until ``stop`` is set; appends
    (arrival, width) per frame."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    tasks: list[asyncio.Task[None]] = []

    async def pump(track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                frames.append((time.monotonic(), frame.width))

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(pump(track))))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/whep", data=pc.localDescription.sdp, headers=headers) as resp:
            answer = await resp.text()
            assert resp.status == 201, (resp.status, answer)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            await asyncio.sleep(0.2)
    await pc.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _sessions(stats: dict[str, Any]) -> list[dict[str, Any]]:
    return stats["viewers"]["sessions"]


@pytest.mark.timeout(240)
async def test_thin_viewer_moves_to_the_low_layer_and_back_clean_viewers_stay_high() -> None:
    with ImpairedLink(seed=7) as link:
        link.set_both(THIN)
        with server_in_namespace(link, "agent", None, WIDTH, HEIGHT, FPS, extra=EXTRA) as base:
            agent_ns, viewer_ns = NamespaceLoop(link.ns_a), NamespaceLoop(link.ns_b)
            clean: list[list[tuple[float, int]]] = [[], []]
            thin: list[tuple[float, int]] = []
            try:
                done = threading.Event()  # the viewers end once the figures are in
                watching = [agent_ns.submit(watch_sizes(base, 75, frames, done)) for frames in clean]
                time.sleep(3)  # the clean viewers set the reference first
                thin_watch = viewer_ns.submit(watch_sizes(base, 70, thin, done))
                stats = low_at = None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:  # until the thin viewer is on the low layer
                    time.sleep(1)
                    stats = agent_ns.run(get_json(base + "/api/stats"), timeout=10)
                    if any(s.get("layer") == 1 for s in _sessions(stats)):
                        low_at = time.monotonic()
                        break
                assert low_at is not None, stats
                time.sleep(6)
                on_low = agent_ns.run(get_json(base + "/api/stats"), timeout=10)
                time.sleep(6)
                later = agent_ns.run(get_json(base + "/api/stats"), timeout=10)
                link.set_both(CLEAN)  # the thin link recovers
                up_at = None
                deadline = time.monotonic() + 45
                while time.monotonic() < deadline and not thin_watch.done():
                    time.sleep(1)
                    final = agent_ns.run(get_json(base + "/api/stats"), timeout=10)
                    if any(s.get("layer_switches", 0) >= 2 for s in _sessions(final)):
                        up_at = time.monotonic()
                        break
                time.sleep(2)
                final = agent_ns.run(get_json(base + "/api/stats"), timeout=10)
                done.set()
                thin_watch.result(timeout=80)
                for w in watching:
                    w.result(timeout=80)
            finally:
                agent_ns.close()
                viewer_ns.close()
    report = f"on low {on_low}\nlater {later}\nfinal {final}"
    thin_low = [s for s in _sessions(on_low) if s.get("layer") == 1]
    clean_high = [s for s in _sessions(on_low) if s.get("layer") == 0]
    assert len(thin_low) == 1 and len(clean_high) == 2, report
    # its frames come at the low resolution after the switch, the high one before it
    assert any(w == WIDTH for t, w in thin if t < low_at - 1), thin[:5]
    assert {w for t, w in thin if low_at + 2 < t < low_at + 12} == {WIDTH // 2}, thin
    # the clean viewers keep the high layer, full size, and its bitrate does not drop to the thin link's
    assert all(w == WIDTH for frames in clean for t, w in frames if low_at < t < low_at + 12), report
    for stats in (on_low, later):  # the high layer follows the clean viewers, the low one the thin one
        high, low = stats["fanout"], stats["fanout"]["low_layer"]
        clean_budget = min(s["video_budget_bps"] for s in _sessions(stats) if s["layer"] == 0)
        thin_budget = [s["video_budget_bps"] for s in _sessions(stats) if s["layer"] == 1][0]
        assert high["target_bitrate"] >= 0.85 * clean_budget, report
        assert low["target_bitrate"] <= THIN.rate_kbps * 1000, report
    # and the clean viewers' ramp is not held down by the thin one (6 s after the switch they may still
    # be ramping from the start target: CI saw 376 kbit/s against the thin one's 276 then)
    thin_budget = [s["video_budget_bps"] for s in _sessions(later) if s["layer"] == 1][0]
    assert later["fanout"]["target_bitrate"] > 1.5 * thin_budget, report
    # PLIs of the thin viewer after its switch cause no IDR on the high layer
    pli_high = later["fanout"]["idrs_by_cause"].get("pli", 0) - on_low["fanout"]["idrs_by_cause"].get(
        "pli", 0
    )
    assert pli_high == 0, report
    # and back up once its link recovers
    assert up_at is not None, report
    assert [s for s in _sessions(final) if s["id"] == thin_low[0]["id"]][0]["layer"] == 0, report
    assert any(w == WIDTH for t, w in thin if t > up_at), thin[-5:]
