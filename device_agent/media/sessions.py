"""Viewer sessions: one aiortc peer per viewer, fed by the shared video fan-out and Opus packets.

A session is created from an SDP offer (WHEP, or MQTT signaling for ``fleetctl view``) and ends on
DELETE/bye, ICE or DTLS failure, a connection that never completes within ``connect_timeout_s``,
or shutdown. Ending a session stops its tracks (unsubscribing them), closes the peer and drops
every reference, so connect/disconnect cycles leave nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from device_agent.media.audio_pipeline import AudioPipeline, BroadcastAudioTrack, Talkback
from device_agent.media.capture_clock import CaptureClock, attach_capture_clock, source_sync
from device_agent.media.fanout import PacketFanout
from device_agent.media.join_timeline import JoinTimeline, watch_ice_checks
from device_agent.media.layers import LayerSet
from device_agent.media.qoe import RecentEvents, ViewerQoe, accept_channel
from device_agent.media.remote_candidates import RemoteCandidates, split_mdns_candidates
from device_agent.media.sdp_answer import with_opus_fec
from device_agent.media.sdp_checks import SdpError, check_candidate, check_offer, excerpt
from device_agent.media.session_record import OnSessionEnd
from device_agent.media.tracks import FanoutVideoTrack, LatencyWindow
from device_agent.media.viewer_control import ViewerControl

log = logging.getLogger(__name__)


class OfferError(ValueError):
    """The offer cannot be answered (bad SDP, no H.264, ...); the message says why."""


class CapacityError(RuntimeError):
    """The viewer limit is reached."""


class SessionNotFound(KeyError):
    pass


def _h264_preferences() -> list[Any]:
    """aiortc's Constrained Baseline H.264 (42e01f) with its RTX, in aiortc's order."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    h264 = [c for c in codecs if c.mimeType.lower() == "video/h264"]
    rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"]
    return h264 + rtx


async def close_peer(pc: RTCPeerConnection) -> None:
    """Close ``pc``, even one a failed negotiation left half set up; never raises.

    aiortc's ``close`` assumes every transceiver has a transport; when it raises anyway, the
    transceivers and transports it can reach are stopped one by one and its listeners dropped.
    """
    try:
        await pc.close()
        return
    except Exception as exc:  # aiortc's own state is inconsistent; stop what is there below
        log.warning(
            "peer did not close cleanly (%s: %s); stopping its transports one by one", type(exc).__name__, exc
        )
    parts: list[Any] = list(pc.getTransceivers())
    dtls = {t.receiver.transport for t in parts} | {t.sender.transport for t in parts}
    if pc.sctp is not None:
        parts.append(pc.sctp)
        dtls.add(pc.sctp.transport)
    parts += [d for d in dtls if d is not None] + [d.transport for d in dtls if d is not None]
    for part in parts:  # senders/receivers, then DTLS, then ICE, as aiortc's close does
        with contextlib.suppress(Exception):
            await part.stop()
    pc.remove_all_listeners()


def guard_connect(pc: RTCPeerConnection, on_error: Callable[[BaseException], None]) -> None:
    """Hand ``on_error`` what aiortc's connect task raises instead of leaving it unretrieved.

    ``setRemoteDescription`` and ``setLocalDescription`` start ``RTCPeerConnection.__connect`` as a
    task nobody awaits; a peer closed while it runs (the viewer left mid-connect, ICE failed) makes
    it raise (``InvalidStateError: RTCIceTransport is closed``), which asyncio then logs as an ERROR
    with a traceback. The method is looked up on the instance, so wrapping it there catches that.
    """
    connect = pc._RTCPeerConnection__connect  # type: ignore[attr-defined]

    async def guarded() -> None:
        try:
            await connect()
        except Exception as exc:  # aiortc's own task: nobody else would ever see this
            on_error(exc)

    pc._RTCPeerConnection__connect = guarded  # type: ignore[attr-defined]


def prefer_dtls_server(pc: RTCPeerConnection, offer_sdp: str) -> bool:
    """Answer ``a=setup:passive`` (we are the DTLS server) when the offer let us choose (``actpass``).

    Call after ``setRemoteDescription``, before ``createAnswer``. aiortc would answer ``active`` and
    send its ClientHello only once its own ICE check of the pair succeeded; as the server it finds
    the browser's ClientHello already waiting (the browser sends it as soon as its side of ICE is
    writable, earlier), which saves about one round trip of the handshake. An offer that fixed the
    role (``active`` or ``passive`` in any section) is left as aiortc set it. Returns whether the
    role was set. Private API (``RTCDtlsTransport._role``/``_set_role``, which aiortc's
    ``createAnswer`` keeps): guarded by tests/test_aiortc_seams.py.
    """
    setups = {line.strip() for line in offer_sdp.splitlines() if line.startswith("a=setup:")}
    if setups != {"a=setup:actpass"}:
        return False
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    transports.discard(None)
    if {getattr(t, "_role", None) for t in transports} != {"auto"}:
        return False
    for transport in transports:
        transport._set_role("server")
    return True


def offered_video_codecs(offer_sdp: str) -> set[str]:
    """Codec names in the offer's first video section (upper case), e.g. ``{"VP8", "H264", "RTX"}``."""
    names: set[str] = set()
    in_video = False
    for line in offer_sdp.splitlines():
        if line.startswith("m="):
            if in_video:
                break
            in_video = line.startswith("m=video")
        elif in_video and line.startswith("a=rtpmap:"):
            parts = line.split(" ", 1)
            if len(parts) == 2:
                names.add(parts[1].split("/", 1)[0].upper())
    return names


@dataclass
class ViewerSession:
    id: str
    kind: str  # "whep" | "mqtt"
    pc: RTCPeerConnection
    video: FanoutVideoTrack
    audio: BroadcastAudioTrack | None
    created: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    feedback: collections.Counter[str] = field(default_factory=collections.Counter)
    control: ViewerControl | None = None  # estimate, pacing, RTX budget, keyframe guard
    candidates: RemoteCandidates | None = None  # remote ICE candidates, mDNS ones in the background
    last_stats: dict[str, Any] = field(default_factory=dict)
    _stats_at: float = 0.0
    _stats_bytes: int = 0
    _stats_packets: int = 0
    timeout: asyncio.TimerHandle | None = None
    qoe: ViewerQoe = field(default_factory=ViewerQoe)  # what the viewer reports it sees
    clocks: dict[str, CaptureClock] = field(default_factory=dict)  # SR dating per kind (capture_clock.py)
    join: JoinTimeline = field(default_factory=JoinTimeline)  # where the time to the first frame went

    def join_figures(self) -> dict[str, float | None]:
        """The join's steps in ms after the offer (join_timeline.py), the track's and pacer's included."""
        video, control = self.video, self.control
        for step, at in (
            ("dtls_connected", self.connected_at),
            ("subscribed", video.subscribed_at),
            ("first_packet", video.first_packet_at),
            ("idr_start", None if control is None else control.first_idr_at),
            ("idr_end", None if control is None else control.first_idr_done_at),
        ):
            if at is not None:
                self.join.mark(step, at)
        return self.join.figures()

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.pc.connectionState,
            "age_s": round(time.monotonic() - self.created, 1),
            "connect_ms": None
            if self.connected_at is None
            else round((self.connected_at - self.created) * 1000, 1),
            "join_ms": self.join_figures(),
            "pli": self.feedback["pli"],
            "fir": self.feedback["fir"],
            "nack": self.feedback["nack"],
            **(self.control.stats() if self.control is not None else {}),
            **self.video.stats(),
            **self.last_stats,
            "qoe": self.qoe.figures(self.last_stats.get("rtt_ms")),  # SRs dated by capture: no sender delay
            "source_sync": source_sync(self.clocks),  # A/V skew at the source (capture_clock.py)
        }


class SessionManager:
    """Creates, tracks and ends viewer sessions."""

    def __init__(
        self,
        fanout: PacketFanout,
        audio: AudioPipeline | None,
        talkback: Talkback | None,
        *,
        latency: LatencyWindow,
        max_viewers: int = 8,
        connect_timeout_s: float = 30.0,
        ice_servers: list[str] | None = None,
        layers: LayerSet | None = None,
    ) -> None:
        self.fanout = fanout  # the high layer's: every viewer starts there
        self.layers = layers  # the encoding layers, when there is more than one (layers.py)
        self.audio = audio
        self.talkback = talkback
        self.latency = latency
        self.max_viewers = max_viewers
        self.connect_timeout_s = connect_timeout_s
        self.ice_servers = list(ice_servers or [])
        self.sessions: dict[str, ViewerSession] = {}
        self.ended: collections.Counter[str] = collections.Counter()
        self._closing: set[str] = set()
        self.failed_connects = RecentEvents()  # sessions that ended before they connected
        self.on_end: OnSessionEnd | None = None  # the component's end-of-session record

    def _configuration(self) -> RTCConfiguration:
        # An explicit (possibly empty) list: aiortc's default would query a public STUN server.
        return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in self.ice_servers])

    async def create(
        self,
        offer_sdp: str,
        kind: str = "whep",
        session_id: str | None = None,
        received_at: float | None = None,
    ) -> tuple[ViewerSession, str]:
        """Answer ``offer_sdp`` (received at ``received_at``, ``time.monotonic``; default now); returns
        the session and the answer SDP."""
        received_at = time.monotonic() if received_at is None else received_at
        if len(self.sessions) >= self.max_viewers:
            raise CapacityError(f"viewer limit of {self.max_viewers} reached")
        try:
            check_offer(offer_sdp)
        except SdpError as exc:
            raise OfferError(f"invalid SDP offer: {exc}") from None
        if "m=video" not in offer_sdp:
            raise OfferError("the offer has no video media section")
        if "H264" not in offered_video_codecs(offer_sdp):
            raise OfferError(
                "the offer's video section has no H.264; this device sends H.264 Constrained "
                "Baseline (profile-level-id 42e01f)"
            )
        sid = session_id or secrets.token_urlsafe(12)
        if sid in self.sessions:
            raise OfferError(f"session {sid!r} already exists")
        pc = RTCPeerConnection(self._configuration())
        video = FanoutVideoTrack(self.fanout, self.latency, name=sid)
        audio = BroadcastAudioTrack(self.audio, name=sid) if self.audio is not None else None
        session = ViewerSession(
            id=sid, kind=kind, pc=pc, video=video, audio=audio, join=JoinTimeline(received_at)
        )
        self.sessions[sid] = session
        try:
            answer = await self._negotiate(session, offer_sdp)
        except Exception as exc:
            await self.close(sid, "negotiation failed")
            if isinstance(exc, (OfferError, CapacityError)):
                raise
            raise OfferError(f"cannot answer the offer: {exc}") from exc
        session.timeout = asyncio.get_running_loop().call_later(
            self.connect_timeout_s, lambda: self._on_timeout(sid)
        )
        log.info(
            "viewer session %s (%s) created; %d active", sid, kind, len(self.sessions), extra={"session": sid}
        )
        return session, answer

    async def _negotiate(self, session: ViewerSession, offer_sdp: str) -> str:
        pc = session.pc

        def on_connect_error(exc: BaseException) -> None:
            if session.id in self.sessions and session.id not in self._closing:
                log.warning(
                    "viewer session %s: connecting failed (%s: %s)",
                    session.id,
                    type(exc).__name__,
                    exc,
                    extra={"session": session.id},
                )
                asyncio.ensure_future(self.close(session.id, "connection failed"))
            else:  # closed while connecting: expected, the viewer left
                log.info(
                    "viewer session %s: connecting stopped by close (%s)",
                    session.id,
                    exc,
                    extra={"session": session.id},
                )

        guard_connect(pc, on_connect_error)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected" and session.connected_at is None:
                session.connected_at = time.monotonic()
                if session.timeout is not None:
                    session.timeout.cancel()
                    session.timeout = None
            elif state in ("failed", "closed"):
                await self.close(session.id, f"connection {state}")

        @pc.on("iceconnectionstatechange")
        def on_ice_state() -> None:
            if pc.iceConnectionState == "completed":
                session.join.mark("ice_connected")

        pc.on("datachannel", lambda channel: accept_channel(session.qoe, channel))  # receiver reports

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and self.talkback is not None:
                self.talkback.attach(session.id, track)

        # Transceivers and codec preferences must exist before the offer is applied: aiortc fixes
        # the negotiated codec list (and so the payload type it sends with) in setRemoteDescription.
        video_tx = pc.addTransceiver(session.video, direction="sendonly")
        video_tx.setCodecPreferences(_h264_preferences())
        video_sender = video_tx.sender
        audio_tx = None
        if session.audio is not None and "\nm=audio" in offer_sdp:
            # the viewer's microphone = talkback
            audio_tx = pc.addTransceiver(session.audio, direction="sendrecv")
        # mDNS host candidates (a page without media permission) would be resolved inside
        # setRemoteDescription, up to 1 s each: they are applied in the background instead.
        offer = split_mdns_candidates(offer_sdp)
        session.candidates = RemoteCandidates(pc, session.id)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise OfferError(f"invalid SDP offer: {exc}") from exc
        for candidate in offer.deferred:
            await session.candidates.add(candidate)
        if offer.deferred and offer.ended:
            await session.candidates.end()
        if video_tx.mid is None:
            raise OfferError("the offer has no video media section")
        join = session.join

        def on_check(use_candidate: bool) -> None:
            if "ice_check" not in join.marks:  # the viewer is reachable: DTLS, then its first recv, follow
                session.video.fanout.prepare()
            join.mark("ice_check")
            if use_candidate:
                join.mark("ice_nominated")

        watch_ice_checks(pc, on_check)
        prefer_dtls_server(pc, offer_sdp)

        session.control = ViewerControl(
            self.fanout, session.id, layers=self.layers, switch_layer=session.video.switch_to
        )
        session.video.hooks = session.control
        session.feedback = session.control.attach(video_sender)
        # sender reports dated by capture, not send, time: viewers line audio up with video as captured
        video, audio = session.video, session.audio
        session.clocks["video"] = attach_capture_clock(video_sender, 90000, lambda: video.last_capture_ts)
        if audio_tx is not None and audio is not None:
            session.clocks["audio"] = attach_capture_clock(
                audio_tx.sender, 48000, lambda: audio.last_capture_ts
            )
        answer = await pc.createAnswer()
        if answer is None or "H264" not in answer.sdp:
            raise OfferError("the offer does not accept H.264 Constrained Baseline (42e01f) video")
        # aiortc's Opus answer has no fmtp: say that we decode in-band FEC (sdp_answer.py)
        await pc.setLocalDescription(RTCSessionDescription(sdp=with_opus_fec(answer.sdp), type="answer"))
        session.join.mark("answer")
        return pc.localDescription.sdp

    async def add_candidates(self, session_id: str, sdpfrag: str) -> int:
        """Trickled remote candidates (WHEP PATCH, ``application/trickle-ice-sdpfrag``)."""
        session = self.get(session_id)
        mid: str | None = None
        added = 0
        for raw in sdpfrag.splitlines():
            line = raw.strip()
            if line.startswith("a=mid:"):
                mid = line[6:]
            elif line.startswith("a=candidate:"):
                value = line.split(":", 1)[1]
                try:
                    check_candidate(value)
                    candidate = candidate_from_sdp(value)
                except (ValueError, IndexError, AssertionError) as exc:  # SdpError is a ValueError
                    raise OfferError(f"bad candidate line {excerpt(line)}: {exc}") from None
                candidate.sdpMid = mid
                candidate.sdpMLineIndex = 0 if mid is None else None
                await self._candidates(session).add(candidate)  # an mDNS one resolves in the background
                added += 1
            elif line == "a=end-of-candidates":
                await self._candidates(session).end()  # after the candidates still resolving
        return added

    @staticmethod
    def _candidates(session: ViewerSession) -> RemoteCandidates:
        if session.candidates is None:
            session.candidates = RemoteCandidates(session.pc, session.id)
        return session.candidates

    def get(self, session_id: str) -> ViewerSession:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise SessionNotFound(session_id) from None

    def _on_timeout(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None and session.connected_at is None:
            asyncio.ensure_future(self.close(session_id, "not connected in time"))

    async def close(self, session_id: str, reason: str) -> bool:
        """End a session; idempotent. Returns False when it did not exist."""
        session = self.sessions.get(session_id)
        if session is None or session_id in self._closing:
            return False
        self._closing.add(session_id)
        try:
            if session.timeout is not None:
                session.timeout.cancel()
            if session.candidates is not None:
                await session.candidates.close()  # nothing resolving for a peer about to close
            session.video.stop()
            if session.control is not None:
                session.control.close()
            if session.audio is not None:
                session.audio.stop()
            await close_peer(session.pc)
        finally:
            self.sessions.pop(session_id, None)
            self._closing.discard(session_id)
        self.ended[reason] += 1
        if session.connected_at is None and reason in ("connection failed", "not connected in time"):
            self.failed_connects.add()
        if self.on_end is not None:
            try:
                self.on_end(session, reason)
            except Exception:  # the record is a report: it must never keep a session alive
                log.exception("session %s: end-of-session record failed", session_id)
        log.info(
            "viewer session %s ended: %s; %d active",
            session_id,
            reason,
            len(self.sessions),
            extra={"session": session_id},
        )
        return True

    async def close_all(self, reason: str = "shutdown") -> None:
        await asyncio.gather(*(self.close(sid, reason) for sid in list(self.sessions)))

    async def refresh_stats(self) -> None:
        """RTT, jitter and loss from RTCP receiver reports; bitrate and fps from what we sent."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if session.pc.connectionState != "connected":
                continue
            sender = next(
                (t.sender for t in session.pc.getTransceivers() if t.sender.track is session.video), None
            )
            remote: dict[str, Any] = {}
            if sender is not None:
                try:
                    report = await sender.getStats()
                except Exception:  # the peer may be closing under us
                    continue
                for stat in report.values():
                    if stat.type == "remote-inbound-rtp":
                        remote = {
                            "rtt_ms": None
                            if stat.roundTripTime is None
                            else round(stat.roundTripTime * 1000, 1),
                            "jitter": stat.jitter,
                            "packets_lost": stat.packetsLost,
                            "fraction_lost": stat.fractionLost,
                        }
            dt = now - session._stats_at if session._stats_at else 0.0
            stats = session.video.stats()
            if dt > 0:
                remote["bitrate_bps"] = int((stats["bytes"] - session._stats_bytes) * 8 / dt)
                remote["fps"] = round((stats["packets"] - session._stats_packets) / dt, 2)
            session._stats_at, session._stats_bytes, session._stats_packets = (
                now,
                stats["bytes"],
                stats["packets"],
            )
            session.last_stats = remote

    def stats(self) -> dict[str, Any]:
        return {
            "active": len(self.sessions),
            "max": self.max_viewers,
            "ended": dict(self.ended),
            "failed_connects_10min": self.failed_connects.count(600),
            "sessions": [s.summary() for s in self.sessions.values()],
        }
