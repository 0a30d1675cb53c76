"""RTCP sender reports dated by the capture clock, so viewers line audio up with video as captured.

An RTCP sender report (SR) pairs an NTP wall-clock time with the RTP timestamp the stream's clock
reads at that instant; receivers map every packet to the sender's wall clock through it, and a
browser plays audio and video of one media stream (one ``msid``: aiortc gives every track of a
peer the same) so that packets of the same mapped time are heard and seen together. libwebrtc's
sender dates that pair by the *capture* time of the stream's latest frame. aiortc's
(``RTCRtpSender._run_rtcp``) pairs the RTP timestamp of the last packet it sent with the time it
sent it, so each stream's mapping is late by its own capture -> send delay: about 30-40 ms for
audio (a 20 ms Opus frame, the encoder's look-ahead, the 10 ms capture period), encode, queueing
and pacing for video, which varies with load by tens to hundreds of ms. A viewer then aligns send
times instead of capture times, and its lip-sync estimator (Chromium's fits a line through the
last SRs) chases that noise.

``attach_capture_clock`` rewrites, at the viewer's RTP send seam (``transport._send_rtp``, the
one ``pacing.py`` uses; aiortc is pinned, ``tests/test_aiortc_seams.py`` and
``tests/test_capture_clock.py`` fail if it moves), the RTP timestamp of each of the sender's SRs
so that the pair means "the stream's clock read this at that wall time" in capture terms: from the
stream's last sent packet (its RTP timestamp and its capture time, read from the track as the
packet goes out) ``rtp = rtp_last + (ntp - capture_last) * rate``. The NTP field is left as it is
(receivers echo it in their reports, and the agent's RTT comes from that).

The same packets give the **A/V skew at the source**: per stream, how far its RTP clock has run
from its capture clock since the session's first packets (``drift_ms``: the median over recent
packets of ``rtp / rate - capture time``, less its median over the first ones). A sound card whose
sample clock is 0.1 % off the system clock drifts 3.6 s an hour; a camera whose frame times do not
follow its timestamps likewise. :func:`source_sync` reports both streams and their difference
(``av_skew_ms``, + = audio early, as ``av_sync_ms``); the SR rewrite hides it from viewers at every
SR, so this is where a drifting clock shows.
"""

from __future__ import annotations

import statistics
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtp import is_rtcp

SEND_SEAM = "_send_rtp"  # RTCDtlsTransport._send_rtp(data): every plain RTP/RTCP packet of a peer
RTCP_SR = 200
NTP_UNIX_OFFSET_S = 2208988800
DRIFT_WINDOW = 64  # packets whose RTP-minus-capture offsets make one drift reading (and the baseline)
DRIFT_JUMP_S = 1.0  # a larger step is a discontinuity of the timeline (re-based, counted), not drift


@dataclass
class CaptureClock:
    """One sender's SR rewriting: its counts and the last shift applied (capture -> send, ms)."""

    rate: int
    rewritten: int = 0
    skipped: int = 0  # SRs before the stream's first packet with a capture time
    shift_ms: float | None = None
    rebased: int = 0  # RTP timeline discontinuities (jumps over DRIFT_JUMP_S)
    _rtp: int | None = None
    _capture_wall: float | None = None
    _rtp_unwrapped: int = 0
    _jumps: float = 0.0  # sum of the discontinuities taken out of the offsets
    _base: float | None = None  # median RTP-minus-capture offset of the first DRIFT_WINDOW packets
    _offsets: deque[float] = field(default_factory=lambda: deque(maxlen=DRIFT_WINDOW))

    def observe(self, rtp: int, capture_wall: float) -> None:
        """One sent RTP packet: its timestamp and its capture time (wall clock)."""
        if self._rtp is not None:
            step = (rtp - self._rtp) & 0xFFFFFFFF
            self._rtp_unwrapped += step - (1 << 32) if step >= 1 << 31 else step
        self._rtp, self._capture_wall = rtp, capture_wall
        offset = self._rtp_unwrapped / self.rate - capture_wall - self._jumps
        if self._offsets and abs(offset - self._offsets[-1]) > DRIFT_JUMP_S:
            self.rebased += 1  # a new timeline: keep the drift read so far, measure on from here
            self._jumps += offset - self._offsets[-1]
            offset = self._offsets[-1]
        self._offsets.append(offset)
        if self._base is None and len(self._offsets) == DRIFT_WINDOW:
            self._base = statistics.median(self._offsets)

    def drift_ms(self) -> float | None:
        """How far the RTP clock has run ahead of the capture clock since the start (ms), or None."""
        if self._base is None:
            return None
        return (statistics.median(self._offsets) - self._base) * 1000.0

    def stats(self) -> dict[str, Any]:
        drift = self.drift_ms()
        return {
            "sr_rewritten": self.rewritten,
            "sr_skipped": self.skipped,
            "sr_shift_ms": None if self.shift_ms is None else round(self.shift_ms, 1),
            "drift_ms": None if drift is None else round(drift, 1),
            "rebased": self.rebased,
        }


SOURCE_SYNC_KEYS = (
    "av_skew_ms",
    "video_drift_ms",
    "audio_drift_ms",
    "video_sr_shift_ms",
    "audio_sr_shift_ms",
)


def source_sync(clocks: dict[str, CaptureClock]) -> dict[str, float | None]:
    """A session's A/V skew at the source (module docstring); ``None`` where a stream has no figure."""
    out: dict[str, float | None] = dict.fromkeys(SOURCE_SYNC_KEYS)
    for kind in ("video", "audio"):
        clock = clocks.get(kind)
        if clock is not None:
            st = clock.stats()
            out[f"{kind}_drift_ms"], out[f"{kind}_sr_shift_ms"] = st["drift_ms"], st["sr_shift_ms"]
    video, audio = out["video_drift_ms"], out["audio_drift_ms"]
    if video is not None and audio is not None:
        out["av_skew_ms"] = round(video - audio, 1)  # audio's clock ahead = audio mapped late
    return out


def capture_dated_sr(data: bytes, ssrc: int, state: CaptureClock) -> bytes:
    """``data`` (a plain RTCP compound packet) with the SR of ``ssrc`` dated by the capture clock."""
    if len(data) < 20 or data[1] != RTCP_SR or struct.unpack_from("!I", data, 4)[0] != ssrc:
        return data
    if state._rtp is None or state._capture_wall is None:
        state.skipped += 1
        return data
    ntp = struct.unpack_from("!Q", data, 8)[0]
    ntp_wall = (ntp >> 32) - NTP_UNIX_OFFSET_S + (ntp & 0xFFFFFFFF) / (1 << 32)
    shift = ntp_wall - state._capture_wall
    rtp = (state._rtp + round(shift * state.rate)) & 0xFFFFFFFF
    state.rewritten += 1
    state.shift_ms = shift * 1000.0
    return data[:16] + struct.pack("!I", rtp) + data[20:]


def attach_capture_clock(
    sender: Any,
    rate: int,
    capture_ts: Callable[[], float | None],
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> CaptureClock:
    """Date ``sender``'s SRs by capture time (module docstring).

    ``capture_ts()`` is the capture time (``clock``'s, i.e. ``time.monotonic``) of the packet the
    track handed out last: aiortc sends each packet of it before it asks the track for the next,
    so it is that of the RTP packet going out. Call after ``setRemoteDescription`` (BUNDLE may
    replace the transport before).
    """
    transport: Any = sender.transport
    original_send = getattr(transport, SEND_SEAM)
    state = CaptureClock(rate)
    ssrc = sender._ssrc

    async def send(data: bytes) -> None:
        if is_rtcp(data):
            data = capture_dated_sr(data, ssrc, state)
        elif len(data) >= 12 and struct.unpack_from("!I", data, 8)[0] == ssrc:
            captured = capture_ts()
            if captured is not None:
                state.observe(struct.unpack_from("!I", data, 4)[0], wall() - (clock() - captured))
        await original_send(data)

    setattr(transport, SEND_SEAM, send)
    return state
