"""Guards for the aiortc private API the fan-out relies on (device_agent/media/rtcp_feedback.py).

If aiortc is upgraded and these fail, the seam moved: re-read RTCRtpSender/RTCDtlsTransport and
adapt rtcp_feedback.py before changing the pin in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder as AiortcH264

from device_agent.media.rtcp_feedback import SEAM
from tests.support.media import Viewer, media_config, running_agent


def test_aiortc_is_the_pinned_version() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    pinned = re.search(r'"aiortc==([^"]+)"', pyproject)
    assert pinned, "aiortc must be pinned exactly in pyproject.toml"
    assert version("aiortc") == pinned.group(1)


def test_seam_signatures() -> None:
    handler = getattr(RTCRtpSender, SEAM)
    assert inspect.iscoroutinefunction(handler)
    assert list(inspect.signature(handler).parameters) == ["self", "packet"]
    assert callable(AiortcH264.pack)  # the passthrough path for av.Packet tracks
    source = inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert ".pack(" in source and "isinstance(data, Frame)" in source


async def _wait(predicate, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _watched(tmp_path: Path) -> AsyncIterator[tuple[Any, Any, Viewer, aiohttp.ClientSession]]:
    """An agent (no periodic IDR) with one video-only aiortc viewer that has decoded 10 frames:
    yields the media component, the viewer's session in it, the viewer and its HTTP session."""
    async with (
        running_agent(media_config(tmp_path, encoder={"keyframe_interval_s": 60.0})) as agent,
        aiohttp.ClientSession() as http,
    ):
        viewer = Viewer(f"http://127.0.0.1:{agent.get('media').web.port}")
        await viewer.connect(http, audio=False)
        await viewer.wait_frames(10)
        media = agent.get("media")
        yield media, next(iter(media.sessions.sessions.values())), viewer, http


async def test_pli_and_remb_from_a_real_receiver_reach_the_fanout(tmp_path: Path) -> None:
    async with _watched(tmp_path) as (media, session, viewer, http):
        forced = media.fanout.idrs_forced
        receiver = viewer.pc.getTransceivers()[0].receiver
        ssrc = next(iter(receiver._RTCRtpReceiver__remote_streams))  # the sender's SSRC as the viewer sees it
        await receiver._send_rtcp_pli(ssrc)
        await _wait(lambda: session.feedback["pli"] >= 1)
        await _wait(lambda: media.fanout.idrs_forced > forced)
        keyframes_before = sum(1 for _, _, key in viewer.stamps if key)
        await _wait(lambda: sum(1 for _, _, key in viewer.stamps if key) > keyframes_before)
        # aiortc's receiver estimates bandwidth and sends REMB by itself
        await _wait(lambda: session.control.estimator.remb is not None)
        assert media.fanout.target_bitrate is not None
        await viewer.close(http)


def test_pacing_and_retransmission_seams() -> None:
    """device_agent/media/pacing.py wraps RTCDtlsTransport._send_rtp and RTCRtpSender._retransmit."""
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    from device_agent.media.pacing import RETRANSMIT_SEAM, SEND_SEAM

    send = getattr(RTCDtlsTransport, SEND_SEAM)
    assert inspect.iscoroutinefunction(send) and list(inspect.signature(send).parameters) == ["self", "data"]
    retransmit = getattr(RTCRtpSender, RETRANSMIT_SEAM)
    assert inspect.iscoroutinefunction(retransmit)
    assert list(inspect.signature(retransmit).parameters) == ["self", "sequence_number"]
    # every video packet and every retransmission goes through the transport attribute, looked up per call
    assert "await self.transport._send_rtp(packet_bytes)" in inspect.getsource(RTCRtpSender._run_rtp)
    rtx_source = inspect.getsource(RTCRtpSender._retransmit)
    assert (
        "ssrc=self._rtx_ssrc" in rtx_source and "await self.transport._send_rtp(packet_bytes)" in rtx_source
    )
    # NACKs reach _retransmit through the instance (so the wrapper sees them); SSRCs are plain attributes
    assert "await self._retransmit(seq)" in inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    init = inspect.getsource(RTCRtpSender.__init__)
    assert "self._ssrc = " in init and "self._rtx_ssrc = " in init
    # receiver reports reach _handle_rtcp_packet with the report blocks the estimator reads
    from aiortc.rtp import RtcpReceiverInfo

    assert {"fraction_lost", "lsr", "dlsr", "ssrc"} <= set(inspect.signature(RtcpReceiverInfo).parameters)


async def test_nack_from_a_real_receiver_is_retransmitted_or_suppressed_by_age(tmp_path: Path) -> None:
    async with _watched(tmp_path) as (media, session, viewer, http):
        receiver = viewer.pc.getTransceivers()[0].receiver
        streams = receiver._RTCRtpReceiver__remote_streams
        ssrc = next(iter(streams))
        old = streams[ssrc].max_seq
        await asyncio.sleep(1.5)
        await viewer.wait_frames(len(viewer.stamps) + 2)
        recent = (streams[ssrc].max_seq - 1) % 65536
        await receiver._send_rtcp_nack(ssrc, [recent])
        await _wait(lambda: session.control.stats()["rtx_sent"] >= 1)
        await receiver._send_rtcp_nack(ssrc, [old])
        await _wait(lambda: session.control.stats()["rtx_suppressed_by_reason"].get("too_old", 0) >= 1)
        assert session.feedback["nack"] == 2
        # the first IDR went out as the join burst, unpaced; a later IDR waits (the PLI test above)
        assert session.control.pacer.initial_burst == 0 and session.control.first_keyframe_bytes
        await viewer.close(http)


async def test_a_packet_sent_before_the_latest_idr_is_still_repaired(tmp_path: Path) -> None:
    """aiortc's receiver assembles frames in sequence order: a packet lost before an IDR blocks it
    until 128 more have arrived. Its NACK for such a packet (under RTX_MAX_AGE_S) is answered."""
    async with _watched(tmp_path) as (_media, session, viewer, http):
        receiver = viewer.pc.getTransceivers()[0].receiver
        streams = receiver._RTCRtpReceiver__remote_streams
        ssrc = next(iter(streams))
        await asyncio.sleep(0.5)  # past the PLI guard's interval after the join's IDR
        before_idr, keyframes = streams[ssrc].max_seq, session.control.stats()["keyframes_sent"]
        await receiver._send_rtcp_pli(ssrc)
        await _wait(lambda: session.control.stats()["keyframes_sent"] > keyframes)
        await viewer.wait_frames(len(viewer.stamps) + 1)
        await receiver._send_rtcp_nack(ssrc, [before_idr])
        await _wait(lambda: session.control.stats()["rtx_before_idr"] >= 1)
        stats = session.control.stats()
        assert stats["rtx_sent"] >= 1 and not stats["rtx_suppressed_by_reason"], stats
        await viewer.close(http)


def test_remote_candidate_behaviour_remote_candidates_relies_on() -> None:
    """device_agent/media/remote_candidates.py: aiortc awaits every offered candidate inside
    setRemoteDescription (so an mDNS one, resolved by aioice with a timeout, delays the answer), and
    drops candidates that arrive after end-of-candidates (so end-of-candidates goes last)."""
    from aioice.mdns import is_mdns_hostname
    from aiortc import RTCIceTransport, RTCPeerConnection
    from aiortc.rtcpeerconnection import add_remote_candidates

    assert "addRemoteCandidate" in inspect.getsource(add_remote_candidates)
    assert "add_remote_candidates(" in inspect.getsource(RTCPeerConnection.setRemoteDescription)
    source = inspect.getsource(RTCIceTransport.addRemoteCandidate)
    assert "if not self.__iceGatherer._remote_candidates_end:" in source
    assert is_mdns_hostname("3f0c8a4e-1b2c-4d5e-8f90-123456789abc.local") and not is_mdns_hostname(
        "192.0.2.1"
    )


async def test_aiortc_answers_opus_without_fmtp_and_keeps_the_one_we_add() -> None:
    """device_agent/media/sdp_answer.py: aiortc's Opus has no parameters, so its answer has no Opus
    fmtp; one added to the answer's text before setLocalDescription stays in localDescription."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from device_agent.media.sdp_answer import with_opus_fec

    offerer, answerer = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    try:
        offerer.addTransceiver("audio", direction="recvonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        answerer.addTransceiver("audio", direction="sendonly")
        await answerer.setRemoteDescription(offerer.localDescription)
        answer = await answerer.createAnswer()
        assert "a=fmtp:" not in answer.sdp.split("m=audio", 1)[1]
        await answerer.setLocalDescription(
            RTCSessionDescription(sdp=with_opus_fec(answer.sdp), type="answer")
        )
        assert "useinbandfec=1" in answerer.localDescription.sdp
    finally:
        await offerer.close()
        await answerer.close()


async def test_protective_copies_go_out_as_rtx_and_the_viewer_keeps_decoding(tmp_path: Path) -> None:
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        viewer = Viewer(f"http://127.0.0.1:{agent.get('media').web.port}")
        await viewer.connect(http, audio=False)
        await viewer.wait_frames(10)
        session = next(iter(agent.get("media").sessions.sessions.values()))
        assert not session.control.protecting()
        frames = len(viewer.stamps)
        deadline = time.monotonic() + 8
        while session.control.stats()["rtx_protective"] < 20:
            session.control.estimator.last_loss = (
                0.05  # as a lossy link's receiver reports set it (loopback: 0)
            )
            assert session.control.protecting()
            assert time.monotonic() < deadline, session.control.stats()
            await asyncio.sleep(0.05)
        stats = session.control.stats()
        assert stats["rtx_sent"] >= stats["rtx_protective"]  # the copies are RTX packets, through the seam
        await viewer.wait_frames(frames + 10)  # duplicates are harmless to the receiver
        await viewer.close(http)


def test_join_seams_ice_checks_and_dtls_role() -> None:
    """device_agent/media/join_timeline.py wraps aioice's ``Connection.request_received`` on the
    instance behind ``RTCIceTransport._connection`` (every incoming check goes through it);
    sessions.prefer_dtls_server sets ``RTCDtlsTransport._set_role("server")`` while ``_role`` is still
    "auto", and aiortc's createAnswer then answers with the configured role (a=setup:passive)."""
    from aioice import ice
    from aiortc import RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCPeerConnection

    from device_agent.media.join_timeline import ICE_SEAM

    handler = getattr(ice.Connection, ICE_SEAM)
    assert list(inspect.signature(handler).parameters) == ["self", "message", "addr", "protocol"]
    assert "self.receiver.request_received(message, addr, self)" in inspect.getsource(
        ice.StunProtocol.datagram_received
    )
    assert "self._connection = Connection(" in inspect.getsource(RTCIceGatherer.__init__)
    assert "self._connection = gatherer._connection" in inspect.getsource(RTCIceTransport.__init__)
    assert list(inspect.signature(RTCDtlsTransport._set_role).parameters) == ["self", "role"]
    assert 'self._role = "auto"' in inspect.getsource(RTCDtlsTransport.__init__)
    create_answer = inspect.getsource(RTCPeerConnection.createAnswer)
    assert 'if dtlsTransport._role == "auto":' in create_answer
    assert "media.dtls.role = dtlsTransport._role" in create_answer
