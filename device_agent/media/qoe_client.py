"""The aiortc side of receiver reports: what an aiortc viewer renders, sent to the device.

Used by the test viewer (``tests/support/media.py``) and ``fleetctl view`` (``fleet/live_view.py``),
the Python twins of ``viewer.js``. Create the probe before the offer (it adds the ``qoe`` data
channel), call ``frame(kind, frame)`` for every decoded frame, and ``start()`` once connected.

Clock mapping: every RTCP sender report the device sends pairs its NTP wall clock with the RTP
timestamp of the packet it just sent. A decoded frame's ``pts`` is its RTP timestamp, so its
*sender time* is ``ntp + (pts - rtp) / clock_rate``; a stream's playout position at any instant
is now plus the median, over its frames of the last ``POSITION_FRAMES``, of sender time minus
arrival time (the latest frame alone would make a burst of frames after a scheduling stall look
like a jump of the stream against the other). ``av_ms`` is audio's position minus
video's (+ = audio early) and ``play_ms`` is the sender's clock now (SR NTP + time since the SR
arrived) minus video's position: send -> render without the one-way delay the device adds from
its RTT. aiortc exposes neither the SR's RTP timestamp nor NACK/PLI counts, so the receivers'
RTCP/RTP handlers are wrapped per instance, and a frame's ``pts`` is the RTP timestamp minus the
stream's first one (``TIMESTAMP_MAPPER_ATTR``), read back here (aiortc is pinned;
``tests/test_qoe.py`` fails if either seam moves).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtp import RtcpSrPacket

from device_agent.media.qoe import (
    AUDIO_FREEZE_GAP_S,
    CHANNEL_LABEL,
    REPORT_INTERVAL_S,
    SCHEMA_VERSION,
    FreezeCounter,
)

TIMESTAMP_MAPPER_ATTR = "_RTCRtpReceiver__timestamp_mapper"  # aiortc 1.x: pts = RTP timestamp - origin
POSITION_FRAMES = 60  # frames a stream's playout position is the median over (1.2 s of audio, 2 s of video)


@dataclass
class _Clock:
    """One stream's latest SR mapping and latest frame position, in sender seconds."""

    rate: int
    sr_ntp: float | None = None
    sr_rtp: int = 0
    sr_at: float = 0.0  # local wall time the SR arrived
    mapper: Any = None  # the receiver's TimestampMapper (its ``_origin`` turns pts back into RTP time)
    lags: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=POSITION_FRAMES))

    def sender_time(self, rtp: int) -> float | None:
        if self.sr_ntp is None:
            return None
        diff = (rtp - self.sr_rtp) & 0xFFFFFFFF
        if diff >= 1 << 31:
            diff -= 1 << 32
        return self.sr_ntp + diff / self.rate

    def add(self, pos: float, at: float) -> None:
        """One frame of sender time ``pos`` played at local wall time ``at``."""
        self.lags.append(pos - at)

    def position(self, now: float) -> float | None:
        """The sender time playing at ``now`` (module docstring)."""
        return None if not self.lags else now + statistics.median(self.lags)


class QoeProbe:
    """Measures what an aiortc viewer renders and reports it over the ``qoe`` data channel."""

    def __init__(
        self, pc: RTCPeerConnection, client: str = "aiortc", interval_s: float = REPORT_INTERVAL_S
    ) -> None:
        self.pc = pc
        self.client = client
        self.interval_s = interval_s
        self.channel = pc.createDataChannel(CHANNEL_LABEL)
        self.video = FreezeCounter()
        self.audio = FreezeCounter(gap_s=AUDIO_FREEZE_GAP_S, min_fps=0.0)
        self.clocks = {"video": _Clock(90000), "audio": _Clock(48000)}
        self.nack = 0
        self.pli = 0
        self.video_bytes = 0
        self.sent_reports = 0
        self.sent_bytes = 0
        self.first_frame_ms: float | None = None
        self.started_at = time.monotonic()
        self._last_bytes = (0, time.monotonic())
        self._task: asyncio.Task[None] | None = None
        self._wrapped: set[int] = set()

    # -- taps ----------------------------------------------------------------------------------
    def _wrap(self, receiver: Any, kind: str) -> None:
        if id(receiver) in self._wrapped:
            return
        self._wrapped.add(id(receiver))
        clock = self.clocks[kind]
        clock.mapper = getattr(receiver, TIMESTAMP_MAPPER_ATTR, None)
        on_rtcp, on_rtp = receiver._handle_rtcp_packet, receiver._handle_rtp_packet
        send_nack, send_pli = receiver._send_rtcp_nack, receiver._send_rtcp_pli

        async def rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                clock.sr_ntp = (ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32)
                clock.sr_rtp = packet.sender_info.rtp_timestamp
                clock.sr_at = time.time()
            await on_rtcp(packet)

        async def rtp(packet: Any, arrival_time_ms: int) -> None:
            if kind == "video":
                self.video_bytes += len(packet.payload) + 12
            await on_rtp(packet, arrival_time_ms=arrival_time_ms)

        async def nack(media_ssrc: int, lost: list[int]) -> None:
            self.nack += 1
            await send_nack(media_ssrc, lost)

        async def pli(media_ssrc: int) -> None:
            self.pli += 1
            await send_pli(media_ssrc)

        receiver._handle_rtcp_packet, receiver._handle_rtp_packet = rtcp, rtp
        receiver._send_rtcp_nack, receiver._send_rtcp_pli = nack, pli

    def attach(self) -> None:
        """Wrap every receiver of the peer (call after ``setLocalDescription``, before media flows)."""
        for tx in self.pc.getTransceivers():
            if tx.kind in self.clocks:
                self._wrap(tx.receiver, tx.kind)

    def frame(self, kind: str, frame: Any) -> None:
        """One decoded (= rendered, for an aiortc viewer) frame of ``kind``."""
        now_m, now_w = time.monotonic(), time.time()
        counter = self.video if kind == "video" else self.audio
        counter.frame(now_m)
        if kind == "video" and self.first_frame_ms is None:
            self.first_frame_ms = (now_m - self.started_at) * 1000
        clock = self.clocks.get(kind)
        pts = getattr(frame, "pts", None)
        origin = getattr(clock.mapper, "_origin", None) if clock is not None else None
        if clock is not None and isinstance(pts, int) and isinstance(origin, int):
            pos = clock.sender_time((pts + origin) & 0xFFFFFFFF)
            if pos is not None:
                clock.add(pos, now_w)

    # -- reports -------------------------------------------------------------------------------
    async def report(self) -> dict[str, Any]:
        """The report as it goes on the wire (``device_agent.media.qoe.REPORT_FIELDS``)."""
        now_m, now_w = time.monotonic(), time.time()
        out: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "client": self.client,
            "frames": self.video.frames,
            "fps": round(self.video.fps(now_m), 2),
            "freezes": self.video.freezes,
            "freeze_ms": round(self.video.frozen_s * 1000),
            "nack": self.nack,
            "pli": self.pli,
            "stall_ms": round(self.video.stall_s(now_m) * 1000),
            "freeze_max_ms": round(self.video.take_longest(now_m) * 1000),
            "afreezes": self.audio.freezes,
            "afreeze_ms": round(self.audio.frozen_s * 1000),
        }
        if self.first_frame_ms is not None:
            out["ttff_ms"] = round(self.first_frame_ms, 1)
        last_bytes, last_t = self._last_bytes
        if now_m > last_t:
            out["kbps"] = round((self.video_bytes - last_bytes) * 8 / 1000 / (now_m - last_t), 1)
        self._last_bytes = (self.video_bytes, now_m)
        with contextlib.suppress(Exception):  # a closing peer
            for stat in (await self.pc.getStats()).values():
                if stat.type == "inbound-rtp" and stat.kind == "video":
                    out["recv"], out["lost"] = stat.packetsReceived, max(0, stat.packetsLost)
        video, audio = self.clocks["video"], self.clocks["audio"]
        pv, pa = video.position(now_w), audio.position(now_w)
        if pv is not None and pa is not None and self.audio.frames:
            out["av_ms"] = round((pa - pv) * 1000, 1)
        if pv is not None and video.sr_ntp is not None:
            out["play_ms"] = round((video.sr_ntp + (now_w - video.sr_at) - pv) * 1000, 1)
        return out

    async def send_report(self) -> int:
        """Send one report now if the channel is open; returns the bytes sent (0 if not)."""
        if self.channel.readyState != "open":
            return 0
        text = json.dumps(await self.report(), separators=(",", ":"))
        self.channel.send(text)
        self.sent_reports += 1
        self.sent_bytes += len(text)
        return len(text)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.send_report()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
