"""A viewer's join, step by step (device_agent/media/join_timeline.py), and the two things that make it
shorter: the fan-out prepares the first IDR when the viewer's ICE checks arrive (``PacketFanout.prepare``),
and the agent answers as the DTLS server (``prefer_dtls_server``), so the browser's ClientHello is
already waiting when our side of ICE completes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from device_agent.media.fanout import WARM_S, PacketFanout
from device_agent.media.join_timeline import STEPS, JoinTimeline
from tests.support.media import Viewer, media_config, running_agent
from tests.test_media_units import RecordingEncoder, _packet


def test_timeline_keeps_the_first_time_of_each_step() -> None:
    now = [10.0]
    timeline = JoinTimeline(clock=lambda: now[0], wall=lambda: 1000.0 + now[0])
    now[0] = 10.05
    timeline.mark("answer")
    now[0] = 10.2
    timeline.mark("answer")  # a later time for the same step is ignored
    timeline.mark("ice_check", at=10.1)
    figures = timeline.figures()
    assert figures["offer_unix_ms"] == 1_010_000.0
    assert figures["answer"] == 50.0 and figures["ice_check"] == 100.0
    assert all(figures[step] is None for step in STEPS if step not in ("offer", "answer", "ice_check"))


async def test_prepare_asks_once_keeps_the_encoder_running_and_the_joiner_replays() -> None:
    now = [100.0]
    enc = RecordingEncoder()
    fan = PacketFanout(enc, idr_min_interval=0.25, clock=lambda: now[0])
    assert not fan.active  # nobody watches: the encoder idles
    fan.prepare()
    assert enc.forced == 1 and fan.active and fan.prepared_joins == 1
    now[0] += 0.05
    fan.prepare()  # a second viewer joining at once: the same IDR serves it
    assert enc.forced == 1 and fan.prepared_joins == 1
    fan.publish(_packet(1, True))
    fan.publish(_packet(2, False))
    now[0] += 0.1  # DTLS done: the viewer subscribes and starts from the prepared IDR
    sub = fan.subscribe("joiner")
    assert enc.forced == 1 and fan.replayed_joins == 1
    assert [(await sub.get()).frame_index for _ in range(2)] == [1, 2]
    fan.unsubscribe(sub)
    assert fan.active  # still within WARM_S of the last prepare
    now[0] += WARM_S
    assert not fan.active
    assert fan.idrs_by_cause == {"viewer joining": 1}


async def test_subscribers_before_the_idr_is_out_ride_on_it() -> None:
    now = [100.0]
    enc = RecordingEncoder()
    fan = PacketFanout(enc, idr_min_interval=0.25, clock=lambda: now[0])
    fan.prepare()  # the first viewer's checks arrived
    now[0] += 0.03
    subs = [fan.subscribe(name) for name in "abc"]  # DTLS done before the encoder delivered the IDR
    assert enc.forced == 1 and fan.pending_joins == 3  # no second IDR 250 ms later for them
    fan.publish(_packet(1, True))
    assert [(await s.get()).frame_index for s in subs] == [1, 1, 1]
    now[0] += 2.0  # long after: a newcomer asks for its own
    fan.subscribe("d")
    assert enc.forced == 2


async def test_a_forced_idr_that_never_came_does_not_hold_a_newcomer() -> None:
    now = [100.0]
    enc = RecordingEncoder()
    fan = PacketFanout(enc, idr_min_interval=0.25, clock=lambda: now[0])
    fan.request_keyframe("pli")
    now[0] += 1.5  # the encoder never delivered it (restarted, camera lost...)
    fan.subscribe("late")
    assert enc.forced == 2


async def test_the_first_idr_goes_out_as_one_burst_then_pacing_applies() -> None:
    from device_agent.media.pacing import Pacer

    now = [0.0]
    pacer = Pacer(1_000_000, initial_burst=12_000, clock=lambda: now[0])
    waits = [pacer._book(1200) for _ in range(10)]  # a 12 KB IDR, ten packets
    assert waits == [0.0] * 10 and pacer.initial_burst == 0
    waits = [pacer._book(1200) for _ in range(10)]  # then at 1 Mbit/s: 9.6 ms a packet after the burst
    assert waits[0] == 0.0 and waits[-1] > 0.07


async def _answer_setup(http: aiohttp.ClientSession, base: str, offer_setup: str) -> tuple[str, Viewer]:
    """Join with the offer's ``a=setup`` set to ``offer_setup``; returns the answer's setup and the viewer."""
    viewer = Viewer(base)
    pc = viewer.pc
    pc.addTransceiver("video", direction="recvonly")
    pc.on("track", viewer._on_track)
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp.replace("a=setup:actpass", f"a=setup:{offer_setup}")
    async with http.post(f"{base}/whep", data=offer, headers={"Content-Type": "application/sdp"}) as resp:
        answer = await resp.text()
        assert resp.status == 201, answer
        viewer.location = resp.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    setups = {line for line in answer.splitlines() if line.startswith("a=setup:")}
    assert len(setups) == 1, setups
    return setups.pop(), viewer


async def test_a_join_is_timed_step_by_step_with_the_agent_as_dtls_server(tmp_path: Path) -> None:
    config = media_config(tmp_path, encoder={"keyframe_interval_s": 60.0})  # no periodic IDR to lean on
    async with running_agent(config) as agent, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{agent.get('media').web.port}"
        setup, viewer = await _answer_setup(http, base, "actpass")
        assert setup == "a=setup:passive"  # the offer let us choose: we are the DTLS server
        await viewer.wait_frames(3)
        media = agent.get("media")
        session = next(iter(media.sessions.sessions.values()))
        deadline = time.monotonic() + 5
        while session.summary()["join_ms"]["idr_end"] is None:
            assert time.monotonic() < deadline, session.summary()["join_ms"]
            await asyncio.sleep(0.02)
        join = session.summary()["join_ms"]
        steps = [join[step] for step in STEPS[1:]]
        assert all(v is not None for v in steps), join
        order = [s for s in STEPS[1:] if s != "ice_nominated"]  # aiortc nominates on its own timing
        assert [join[s] for s in order] == sorted(join[s] for s in order), join
        assert abs(join["offer_unix_ms"] / 1000 - time.time()) < 60
        fanout = media.fanout.stats()
        # the first check prepared the IDR; the subscription started from it or (slow DTLS) asked again
        assert fanout["prepared_joins"] == 1 and fanout["idrs_by_cause"]["viewer joining"] == 1
        assert fanout["replayed_joins"] + fanout["keyframe_requests"].get("new viewer", 0) == 1
        assert viewer.stamps[0][2], "the first decoded frame must be a keyframe"
        await viewer.close(http)


async def test_an_offer_that_fixes_the_dtls_role_keeps_it(tmp_path: Path) -> None:
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{agent.get('media').web.port}"
        setup, viewer = await _answer_setup(http, base, "passive")  # the viewer wants to be the server
        assert setup == "a=setup:active"
        await viewer.wait_frames(3)
        await viewer.close(http)


async def test_answering_as_dtls_server_costs_no_time_in_isolation() -> None:
    """aiortc-to-aiortc on loopback, no agent: the handshake completes in either role (a guard that
    the server role does not wait for a retransmission timer)."""
    for role in ("server", "client"):
        offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            offerer.createDataChannel("x")
            await offerer.setLocalDescription(await offerer.createOffer())
            await answerer.setRemoteDescription(offerer.localDescription)
            if role == "server":
                from device_agent.media.sessions import prefer_dtls_server

                assert prefer_dtls_server(answerer, offerer.localDescription.sdp)
            await answerer.setLocalDescription(await answerer.createAnswer())
            assert ("a=setup:passive" in answerer.localDescription.sdp) == (role == "server")
            started = time.monotonic()
            await offerer.setRemoteDescription(answerer.localDescription)
            while answerer.connectionState != "connected" or offerer.connectionState != "connected":
                assert time.monotonic() - started < 5, (role, answerer.connectionState)
                await asyncio.sleep(0.01)
            assert time.monotonic() - started < 0.9, role  # no 1 s DTLS retransmission on the way
        finally:
            await offerer.close()
            await answerer.close()
