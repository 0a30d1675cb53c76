"""The WHEP endpoint end to end with real aiortc viewers on loopback."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from hal.camera.marker import read_stamp
from tests.support.media import Viewer, media_config, running_agent


def _base(agent) -> str:
    return f"http://127.0.0.1:{agent.get('media').web.port}"


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def _refused(
    http: aiohttp.ClientSession, method: str, url: str, body: bytes | str, content_type: str, status: int
) -> str:
    """Send a request that must be refused with ``status`` and a one-line text/plain reason."""
    async with http.request(method, url, data=body, headers={"Content-Type": content_type}) as resp:
        text = await resp.text()
        assert resp.status == status, (resp.status, text)
        assert resp.content_type == "text/plain" and text.endswith("\n") and "\n" not in text[:-1], text
        assert text.strip(), "the refusal says why"
        return text


async def _aiortc_offer(audio: bool = True) -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    return offer


async def _still_playing(viewer: Viewer) -> None:
    count = len(viewer.stamps)
    await viewer.wait_frames(count + 5)


async def test_viewer_gets_advancing_frames_and_audio(tmp_path: Path) -> None:
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        viewer = Viewer(_base(agent))
        await viewer.connect(http)
        await viewer.wait_frames(45)
        indexes = [index for _, index, _ in viewer.stamps]
        assert indexes == sorted(indexes) and indexes[-1] - indexes[0] >= 40  # the burnt-in counter advances
        assert len(set(indexes)) == len(indexes)
        assert viewer.stamps[0][2], "the first decoded frame must be a keyframe"
        assert viewer.audio_frames > 20
        health = agent.health.sample()["media"]
        session = health["viewers"]["sessions"][0]
        assert session["state"] == "connected" and health["fanout"]["viewers"] == 1
        assert health["encoder"]["backend"] == "libx264" and "software x264" in health["encoder"]["reason"]
        snapshot = await agent.get("media").capture_frame()  # raw frame for diagnostics, same camera
        assert snapshot is not None and snapshot.frame.width == 640
        assert read_stamp(snapshot.frame.to_ndarray(format="gray")).index >= indexes[-1]
        await viewer.close(http)
        assert agent.get("media").sessions.stats()["active"] == 0


async def test_late_joiner_gets_a_keyframe_within_200_ms(tmp_path: Path) -> None:
    config = media_config(tmp_path, encoder={"keyframe_interval_s": 60.0})  # no periodic IDR to lean on
    async with running_agent(config) as agent, aiohttp.ClientSession() as http:
        first = Viewer(_base(agent))
        await first.connect(http)
        await first.wait_frames(30)
        late = Viewer(_base(agent))
        await late.connect(http)
        await late.wait_frames(5)
        media = agent.get("media")
        track = next(
            s.video for s in media.sessions.sessions.values() if s.id == late.location.rsplit("/", 1)[1]
        )
        assert track.stats()["first_keyframe_ms"] < 200  # subscribed -> first (key) packet handed to aiortc
        assert late.stamps[0][2]  # and it decodes as a keyframe on the client
        assert late.stamps[0][0] - late.posted_at < 2.0
        # the first viewer kept going undisturbed, and only one IDR was forced for the newcomer
        count = len(first.stamps)
        await asyncio.sleep(0.3)
        assert len(first.stamps) > count
        await asyncio.gather(first.close(http), late.close(http))


async def test_http_errors_are_clear(tmp_path: Path) -> None:
    async with (
        running_agent(media_config(tmp_path, web={"max_viewers": 1})) as agent,
        aiohttp.ClientSession() as http,
    ):
        base = _base(agent)
        async with http.options(f"{base}/whep") as resp:
            assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "application/sdp" in resp.headers["Accept-Post"]
            assert "Location" in resp.headers["Access-Control-Expose-Headers"]
        async with http.post(f"{base}/whep", data="v=0", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
        async with http.post(
            f"{base}/whep", data="hello", headers={"Content-Type": "application/sdp"}
        ) as resp:
            assert resp.status == 400 and "SDP" in await resp.text()
        garbage = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nbroken"
        async with http.post(
            f"{base}/whep", data=garbage, headers={"Content-Type": "application/sdp"}
        ) as resp:
            assert resp.status == 400 and (await resp.text()).strip()
        async with http.delete(f"{base}/whep/nope") as resp:
            assert resp.status == 404
        async with http.patch(
            f"{base}/whep/nope", data="a=mid:0", headers={"Content-Type": "application/trickle-ice-sdpfrag"}
        ) as resp:
            assert resp.status == 404
        viewer = Viewer(base)
        await viewer.connect(http)
        second = Viewer(base)
        with pytest.raises(AssertionError, match="503"):
            await second.connect(http)
        async with http.post(
            f"{base}/whep", data=viewer.pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"].isdigit()
        await asyncio.gather(viewer.close(http), second.pc.close())
        assert agent.get("media").sessions.stats()["active"] == 0


async def test_offer_without_h264_is_refused(tmp_path: Path) -> None:
    from aiortc import RTCPeerConnection, RTCRtpSender

    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        pc = RTCPeerConnection()
        tx = pc.addTransceiver("video", direction="recvonly")
        tx.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP8"]
        )
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(
            f"{_base(agent)}/whep", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as resp:
            assert resp.status == 400 and "H.264" in await resp.text()
        await pc.close()
        assert agent.get("media").sessions.stats()["active"] == 0


async def test_bearer_token_is_required_when_configured(tmp_path: Path) -> None:
    async with (
        running_agent(media_config(tmp_path, web={"token": "s3cret"})) as agent,
        aiohttp.ClientSession() as http,
    ):
        base = _base(agent)
        async with http.post(f"{base}/whep", data="v=0", headers={"Content-Type": "application/sdp"}) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.post(
            f"{base}/whep",
            data="v=0",
            headers={"Content-Type": "application/sdp", "Authorization": "Bearer wrong"},
        ) as resp:
            assert resp.status == 401
        async with http.post(
            f"{base}/whep",
            data="v=0 bad",
            headers={"Content-Type": "application/sdp", "Authorization": "Bearer s3cret"},
        ) as resp:
            assert resp.status == 400  # authorised; now the offer itself is judged
        async with http.get(f"{base}/api/stats") as resp:
            assert resp.status == 401
        async with http.get(f"{base}/api/stats", headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200 and "viewers" in await resp.json()


def test_demo_on_the_network_gets_a_token() -> None:
    from device_agent.commands.run import demo_config

    assert demo_config("127.0.0.1:8080", None, use_broker=False).web.token == ""
    lan = demo_config("0.0.0.0:8080", None, use_broker=False)
    assert len(lan.web.token) >= 16


async def test_session_that_never_connects_is_dropped(tmp_path: Path) -> None:
    async with (
        running_agent(media_config(tmp_path, web={"session_timeout_s": 0.5})) as agent,
        aiohttp.ClientSession() as http,
    ):
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(
            f"{_base(agent)}/whep", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as resp:
            assert resp.status == 201, await resp.text()  # answered, but we never complete ICE
        await pc.close()
        sessions = agent.get("media").sessions
        deadline = time.monotonic() + 5
        while sessions.stats()["active"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sessions.stats()["active"] == 0
        assert sum(sessions.ended.values()) == 1


async def test_a_missing_microphone_is_alerted_not_restarted(tmp_path: Path) -> None:
    """No such capture device: a P1 alert, video keeps flowing, and the agent stays healthy (no watchdog
    restart)."""
    config = media_config(
        tmp_path, audio={"backend": "alsa", "device": "hw:CARD=NoSuchCard", "reopen_max_s": 0.5}
    )
    async with running_agent(config) as agent:
        await asyncio.sleep(6.0)  # longer than the 5 s freshness window the health check uses
        assert any(a.code == "microphone_unavailable" and a.severity == "P1" for a in agent.alerts.active())
        media = agent.get("media")
        assert media.health()["audio"]["source"]["state"] == "unavailable"
        assert media.healthy() and agent.healthy()


async def test_a_charset_other_than_utf8_is_415(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """W1: ``charset=bogus`` was a LookupError traceback and a 500."""
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        base = _base(agent)
        offer = await _aiortc_offer()
        for content_type in (
            "application/sdp; charset=bogus",
            "application/sdp; charset=utf-16",
            "application/sdp; charset=rot13",
        ):
            assert "charset" in await _refused(
                http, "POST", f"{base}/whep", offer.encode(), content_type, 415
            )
        async with http.post(
            f"{base}/whep", data=offer.encode(), headers={"Content-Type": "application/sdp; charset=UTF-8"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            location = resp.headers["Location"]
        async with http.delete(base + location) as resp:
            assert resp.status == 200
        assert agent.get("media").sessions.stats()["active"] == 0
    _no_tracebacks(caplog)


async def test_patch_looks_the_session_up_before_the_body(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """W2: a non-UTF-8 (or bogus-charset) PATCH body was decoded first: a UnicodeDecodeError 500."""
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        base = _base(agent)
        frag = "application/trickle-ice-sdpfrag"
        await _refused(http, "PATCH", f"{base}/whep/nosuch", b"\xff\xfe", frag, 404)
        await _refused(http, "PATCH", f"{base}/whep/nosuch", b"a=mid:0", frag + "; charset=bogus", 404)
        await _refused(http, "PATCH", f"{base}/whep/nosuch", b"\xff\xfe", "text/plain", 404)
        viewer = Viewer(base)
        await viewer.connect(http)
        await viewer.wait_frames(5)
        assert "UTF-8" in await _refused(http, "PATCH", base + viewer.location, b"\xff\xfe", frag, 400)
        assert "charset" in await _refused(
            http, "PATCH", base + viewer.location, b"a=mid:0", frag + "; charset=bogus", 415
        )
        await _still_playing(viewer)
        assert agent.get("media").sessions.stats()["sessions"][0]["state"] == "connected"
        await viewer.close(http)
    _no_tracebacks(caplog)


async def test_bad_candidate_lines_are_400(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """W3: short candidate lines failed an assert in aiortc's candidate_from_sdp: a 500."""
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        base = _base(agent)
        viewer = Viewer(base)
        await viewer.connect(http)
        await viewer.wait_frames(5)
        frag = "application/trickle-ice-sdpfrag"
        for line in (
            "a=candidate:garbage",
            "a=candidate:1 1 udp 1 127.0.0.1 9 typ",
            "a=candidate:",
            "a=candidate:1 1 udp x 127.0.0.1 9 typ host",
            "a=candidate:1 1 udp 1 no-such-host 9 typ host",
            "a=candidate:1 1 udp 1 127.0.0.1 99999 typ host",
            "a=candidate:1 1 udp 1 127.0.0.1 9 type host",
            "a=candidate:1 1 udp 1 127.0.0.1 9 typ host rport",
        ):
            assert "candidate" in await _refused(
                http, "PATCH", base + viewer.location, f"a=mid:0\r\n{line}\r\n", frag, 400
            )
        good = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host generation 0\r\n"
        async with http.patch(base + viewer.location, data=good, headers={"Content-Type": frag}) as resp:
            assert resp.status == 204, await resp.text()
        await _still_playing(viewer)
        await viewer.close(http)
    _no_tracebacks(caplog)


async def test_offer_structure_is_checked_before_aiortc(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """W4: an offer whose video section has no a=mid made createAnswer raise, then pc.close() too: a 500."""
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        base = _base(agent)
        viewer = Viewer(base)
        await viewer.connect(http)
        await viewer.wait_frames(5)
        offer = await _aiortc_offer()
        assert "a=mid:0\r\n" in offer and "a=mid:1\r\n" in offer and "a=group:BUNDLE 0 1" in offer
        h264 = next(line.split()[0].split(":")[1] for line in offer.splitlines() if "H264/90000" in line)
        broken = {  # the reason the answer must give -> the offer
            "0 a=mid lines": offer.replace("a=mid:0\r\n", ""),  # the reported case
            "repeats a=mid": offer.replace("a=mid:1\r\n", "a=mid:0\r\n"),
            "BUNDLE": offer.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 7"),
            "a=rtpmap": offer.replace(f"a=rtpmap:{h264} ", "a=rtpmap:111 "),
            "a=setup": offer.replace("a=setup:actpass", "a=setup:sideways"),
            "a=ice-ufrag": "\r\n".join(
                line for line in offer.split("\r\n") if not line.startswith("a=ice-ufrag")
            ),
            "media kind": offer.replace("m=audio", "m=text"),
        }
        for reason, sdp in broken.items():
            text = await _refused(http, "POST", f"{base}/whep", sdp, "application/sdp", 400)
            assert reason in text, (reason, text)
        assert agent.get("media").sessions.stats()["active"] == 1
        await _still_playing(viewer)
        await viewer.close(http)
    _no_tracebacks(caplog)


async def test_a_half_negotiated_peer_still_closes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """W4: closing a session whose negotiation left aiortc inconsistent raised AttributeError out of
    close()."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from device_agent.media.sessions import ViewerSession
    from device_agent.media.tracks import FanoutVideoTrack

    async with running_agent(media_config(tmp_path)) as agent:
        sessions = agent.get("media").sessions
        offer = (await _aiortc_offer()).replace("a=mid:0\r\n", "")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        video = FanoutVideoTrack(sessions.fanout, sessions.latency, name="half")
        pc.addTransceiver(video, direction="sendonly")
        pc.addTransceiver("audio", direction="sendrecv")
        # aiortc takes it as it is
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        assert None in [
            t.receiver.transport for t in pc.getTransceivers()
        ]  # the audio one, bundled to nothing
        sessions.sessions["half"] = ViewerSession(id="half", kind="whep", pc=pc, video=video, audio=None)
        assert await sessions.close("half", "negotiation failed")
        assert "half" not in sessions.sessions and sessions.ended["negotiation failed"] == 1
        for transceiver in pc.getTransceivers():
            dtls = transceiver.receiver.transport
            # the ICE transport (its sockets) is stopped
            assert dtls is None or dtls.transport.state == "closed"
    _no_tracebacks(caplog)


async def test_malformed_http_is_a_warning_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzzer: a request aiohttp's parser refuses (a lowercase method after a first request on
    the connection, or a body left unread) was logged as an ERROR with a traceback."""
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        base = _base(agent)
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.get("media").web.port)
        writer.write(b"OPTIONS /whep HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # 204: no body
        writer.write(b"get /whep HTTP/1.1\r\nHost: x\r\n\r\n")  # the second request on the connection
        answer = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection after the 400
        writer.close()
        assert first.startswith(b"HTTP/1.1 204") and answer.startswith(b"HTTP/1.0 400"), (first, answer)
        async with http.put(f"{base}/whep", data=b"v=0") as resp:  # aiohttp's own refusals keep CORS
            assert resp.status == 405 and resp.headers["Access-Control-Allow-Origin"] == "*"
    _no_tracebacks(caplog)
    assert any(
        r.name == "device_agent.media.whep.http" and r.levelno == logging.WARNING for r in caplog.records
    )


async def test_aiortc_connect_task_errors_are_handled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzzer (once in about 900 sessions made and deleted): aiortc's own connect task raised
    InvalidStateError('RTCIceTransport is closed') for a peer closed under it, and asyncio logged 'Task
    exception was never retrieved' as an ERROR with a traceback. The same failure, made deterministic here by
    closing the ICE transport before setLocalDescription starts that task, must reach the session's handler
    instead."""
    import gc

    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.exceptions import InvalidStateError

    from device_agent.media.sessions import guard_connect

    offer = await _aiortc_offer(audio=False)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    caught: list[BaseException] = []
    guard_connect(pc, caught.append)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    answer = await pc.createAnswer()
    await pc.getTransceivers()[0].receiver.transport.transport.stop()  # closed under the peer
    await pc.setLocalDescription(answer)  # gathers, then starts aiortc's connect task
    await asyncio.sleep(0.2)
    await pc.close()
    gc.collect()
    await asyncio.sleep(0.05)
    assert [type(exc) for exc in caught] == [InvalidStateError]
    _no_tracebacks(caplog)
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        viewer = Viewer(_base(agent))  # and every session's peer is guarded
        await viewer.connect(http)
        session = next(iter(agent.get("media").sessions.sessions.values()))
        assert "guard_connect" in session.pc._RTCPeerConnection__connect.__qualname__
        await viewer.wait_frames(5)
        await viewer.close(http)
