"""Connection time: mDNS host candidates (what a page without media permission offers) never delay
the answer. aioice resolves each ``.local`` name with a 1 s timeout inside aiortc's
``setRemoteDescription``; the session takes them out of the offer and resolves them in the background.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from device_agent.media.remote_candidates import split_mdns_candidates
from tests.support.agent_proc import AgentProcess
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, open_page_when_up
from tests.support.media import media_config, running_agent
from tests.support.mosquitto import free_port

# a name nobody answers: aioice waits its whole 1 s timeout for it
UNRESOLVABLE = "3f0c8a4e-1b2c-4d5e-8f90-123456789abc.local"
MDNS_LINE = f"a=candidate:1467250027 1 udp 2122260223 {UNRESOLVABLE} 54321 typ host generation 0"
ANSWER_BUDGET_MS = 300
# Chromium as it comes: the machine's flags without the media-permission ones (which make it offer plain IPs)
AS_IT_COMES = [
    a
    for a in CHROMIUM_ARGS
    if a not in ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
]


def _with_mdns_candidate(offer: str) -> str:
    """``offer`` with an unresolvable mDNS host candidate and end-of-candidates in its first section."""
    lines = offer.split("\r\n")
    sections = [i for i, line in enumerate(lines) if line.startswith("m=")]
    at = sections[1] if len(sections) > 1 else len(lines) - 1  # before the second section (or the last "")
    return "\r\n".join(lines[:at] + [MDNS_LINE, "a=end-of-candidates"] + lines[at:])


async def _warm_up(http: aiohttp.ClientSession, base: str) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(
            f"{base}/whep", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            location = resp.headers["Location"]
        async with http.delete(f"{base}{location}" if location.startswith("/") else location) as resp:
            assert resp.status == 200
    finally:
        await pc.close()


def test_split_takes_out_mdns_lines_and_end_of_candidates() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host\r\n" + MDNS_LINE + "\r\n"
        "a=end-of-candidates\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n"
    )
    split = split_mdns_candidates(offer)
    assert UNRESOLVABLE not in split.sdp and "end-of-candidates" not in split.sdp and "192.0.2.1" in split.sdp
    assert split.ended and [(c.ip, c.port, c.sdpMid, c.sdpMLineIndex) for c in split.deferred] == [
        (UNRESOLVABLE, 54321, "0", 0)
    ]
    plain = offer.replace(MDNS_LINE + "\r\n", "")
    assert split_mdns_candidates(plain).sdp == plain and split_mdns_candidates(plain).ended  # left as it was


async def test_offer_with_an_unresolvable_mdns_candidate_is_answered_at_once(tmp_path: Path) -> None:
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{agent.get('media').web.port}"
        await _warm_up(http, base)  # the agent's first answer pays for one-time set-up
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offer = _with_mdns_candidate(pc.localDescription.sdp)
            started = time.monotonic()
            async with http.post(
                f"{base}/whep", data=offer, headers={"Content-Type": "application/sdp"}
            ) as resp:
                answer = await resp.text()
                assert resp.status == 201, answer
                location = resp.headers["Location"]
            answer_ms = (time.monotonic() - started) * 1000
            assert answer_ms < ANSWER_BUDGET_MS, f"answer took {answer_ms:.0f} ms"
            # a trickled mDNS candidate is not waited for either
            started = time.monotonic()
            frag = f"a=mid:0\r\n{MDNS_LINE.replace('54321', '54322')}\r\n"
            async with http.patch(
                f"{base}{location}" if location.startswith("/") else location,
                data=frag,
                headers={"Content-Type": "application/trickle-ice-sdpfrag"},
            ) as resp:
                assert resp.status == 204, await resp.text()
            assert (time.monotonic() - started) * 1000 < ANSWER_BUDGET_MS
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            deadline = time.monotonic() + 10
            while pc.connectionState != "connected":
                assert time.monotonic() < deadline, pc.connectionState
                await asyncio.sleep(0.05)
            # the deferred candidates reach the ICE transport, end-of-candidates after them
            session = next(iter(agent.get("media").sessions.sessions.values()))
            deadline = time.monotonic() + 5
            while "a=end-of-candidates" not in session.pc.remoteDescription.sdp:
                assert time.monotonic() < deadline, session.pc.remoteDescription.sdp
                await asyncio.sleep(0.1)
            assert UNRESOLVABLE in session.pc.remoteDescription.sdp
        finally:
            await pc.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_chromium_as_it_comes_is_answered_fast_and_shows_a_frame(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    port = free_port()
    agent = AgentProcess(
        tmp_path / "agent",
        {
            "device": {"id": "connect-cam", "state_dir": str(tmp_path / "state")},
            "camera": {"width": 640, "height": 360, "fps": 30},
            "web": {"enabled": True, "listen": f"127.0.0.1:{port}"},
            "mqtt": {"url": ""},
        },
    ).start()
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=AS_IT_COMES, headless=True)
            try:
                page = browser.new_page()
                page.add_init_script("""window.__offers = []; const _f = window.fetch;
                  window.fetch = function (url, o) {
                    if (o && o.method === 'POST') window.__offers.push(o.body);
                    return _f.apply(this, arguments);
                  };""")
                open_page_when_up(page, f"http://127.0.0.1:{port}/", lambda: agent.log_text()[-3000:])
                answers, firsts = [], []
                for join in range(3):
                    if join:
                        page.evaluate(
                            "(async () => { await window.viewerControls.disconnect();"
                            " window.viewer.postToFirstFrameMs = null; window.viewer.postToAnswerMs = null;"
                            " await new Promise((r) => setTimeout(r, 500));"
                            " await window.viewerControls.connect(); })()"
                        )
                    page.wait_for_function("window.viewer.postToFirstFrameMs !== null", timeout=20000)
                    answers.append(page.evaluate("window.viewer.postToAnswerMs"))
                    firsts.append(page.evaluate("window.viewer.postToFirstFrameMs"))
                offers = page.evaluate("window.__offers")
            finally:
                browser.close()
    finally:
        agent.stop()
    assert offers and all(".local " in offer for offer in offers), (
        "Chromium as it comes offers mDNS host names"
    )
    report = f"POST -> answer {answers} ms, POST -> first frame {firsts} ms"
    assert statistics.median(answers) < ANSWER_BUDGET_MS and max(answers) < 2 * ANSWER_BUDGET_MS, report
    assert statistics.median(firsts) < 1000, report
