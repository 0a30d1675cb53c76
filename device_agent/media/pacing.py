"""Video packet pacing and the retransmission budget, at aiortc's RTP send seam.

aiortc's sender sends a frame's RTP packets back to back (``await self.transport._send_rtp(...)``
per packet in ``RTCRtpSender._run_rtp``) and answers every NACK at once (``_retransmit``), with no
budget: a 1280x720 IDR is a burst of tens of packets into whatever queue the path has, and
retransmissions of packets the receiver can no longer use compete with new video.

``attach_pacing`` wraps two things per viewer (aiortc is pinned; tests/test_aiortc_seams.py fails
if the seams move):

- ``transport._send_rtp`` on the viewer's DTLS transport (one per peer; audio and RTCP share it):
  the video SSRC's packets wait for the ``Pacer`` (``PACING_FACTOR`` x the larger of the viewer's
  estimate and the shared target, so a frame is spread over about half a frame interval and an
  IDR over a few); the RTX SSRC's
  packets go out at once but are charged to the pacer, so new video yields to them; audio and
  RTCP pass untouched. Each video packet's send time is logged by sequence number, and our
  sender reports' NTP timestamps by send time (for RTT from LSR/DLSR).
- ``sender._retransmit(seq)``: a NACKed packet is retransmitted only when the receiver can still
  use it (sent less than ``RTX_MAX_AGE_S`` ago) and the ``RtxBudget`` (``RTX_SHARE`` of the
  viewer's estimate) has room; otherwise it is counted in ``rtx_suppressed`` by reason. A packet
  sent before the latest IDR is still retransmitted (counted in ``rtx_before_idr``): Chromium
  stops asking for those once it has the IDR, but a receiver that assembles frames in sequence
  order (aiortc's jitter buffer: ``fleetctl view``, our test viewer) waits for the missing packet
  until 128 later ones have arrived, and then for a PLI's IDR: seconds of frozen picture.

While the viewer's link shows random loss (``PacedLink.protecting()``), each video packet that is
not part of an IDR is also sent as RTX ``COPY_DELAY_S`` later (``rtx_protective``): the receiver
then rarely waits a NACK round trip, which on a 200 ms RTT is longer than its jitter buffer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiortc import RTCRtpSender
from aiortc.rtp import is_rtcp

SEND_SEAM = "_send_rtp"  # RTCDtlsTransport._send_rtp(data): every RTP/RTCP packet of a peer
RETRANSMIT_SEAM = "_retransmit"  # RTCRtpSender._retransmit(sequence_number): one NACKed packet
PACING_FACTOR = 2.5
BURST_S = 0.005  # an idle pacer lets this much sending time through at once
JOIN_BURST_BYTES = 12_000  # a new viewer's first packets (its first IDR) go out unpaced up to this much
MAX_DELAY_S = 0.25  # a packet never waits longer than this: an encoder overshoot is sent faster, not queued
RTX_SHARE = 0.25
RTX_BUCKET_S = 1.0  # the budget's depth, in seconds of its rate (an IDR's repairs come in a burst)
RTX_MAX_AGE_S = 1.0
RTX_MIN_DEPTH = 12_000  # bytes: ten full packets
SENT_LOG = 1024  # video packets remembered (aiortc keeps 128 in its history)
RTCP_SR = 200
COPY_DELAY_S = 0.02  # a protective copy follows its packet this much later (past a short loss burst)


class Pacer:
    """A leaky bucket over time: ``wait(size)`` returns when ``size`` bytes may go out at ``rate_bps``.

    The backlog is capped at ``max_delay_s``: when the encoder produces more than the pacing rate
    for a while, packets go out faster rather than queueing without bound (the fan-out would
    otherwise drop the viewer's queue and force an IDR). The first ``initial_burst`` bytes go out
    at once (a join: the path's queues are empty, and the first IDR is what the viewer waits for).
    """

    def __init__(
        self,
        rate_bps: float,
        *,
        burst_s: float = BURST_S,
        max_delay_s: float = MAX_DELAY_S,
        initial_burst: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_bps = max(1.0, rate_bps)
        self.initial_burst = initial_burst
        self.burst_s = burst_s
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._free_at = 0.0  # when everything charged so far has left
        self.waited_s = 0.0

    def _book(self, size: int) -> float:
        now = self._clock()
        if self.initial_burst >= size:
            self.initial_burst -= size
            return 0.0
        self.initial_burst = 0
        start = min(max(self._free_at, now - self.burst_s), now + self.max_delay_s)
        self._free_at = start + size * 8 / self.rate_bps
        return max(0.0, start - now)

    async def wait(self, size: int) -> None:
        delay = self._book(size)
        if delay > 0:
            self.waited_s += delay
            await asyncio.sleep(delay)

    def charge(self, size: int) -> None:
        """Account ``size`` bytes sent outside the pacer (retransmissions): later packets wait for them."""
        self._book(size)


class RtxBudget:
    """A token bucket of retransmission bytes refilled at ``rate_bps`` (set from the viewer's estimate)."""

    def __init__(
        self, rate_bps: float, *, depth_s: float = RTX_BUCKET_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_bps = rate_bps
        self.depth_s = depth_s
        self._clock = clock
        self._tokens = self._depth()
        self._at = clock()

    def _depth(self) -> float:
        return max(RTX_MIN_DEPTH, self.rate_bps / 8 * self.depth_s)

    def try_spend(self, size: int) -> bool:
        now = self._clock()
        self._tokens = min(self._depth(), self._tokens + (now - self._at) * self.rate_bps / 8)
        self._at = now
        if self._tokens < size:
            return False
        self._tokens -= size
        return True


class PacedLink(Protocol):
    """What the seam needs from the viewer's controller."""

    pacer: Pacer
    rtx_budget: RtxBudget

    def idr_started(self, at: float) -> None: ...

    def idr_finished(self, at: float) -> None:
        """The IDR's last packet (marker bit) was sent at ``at``."""
        ...

    def protecting(self) -> bool:
        """Send a copy of every video packet (RTX, ``COPY_DELAY_S`` later): random loss without NACK waits."""
        ...

    def rtt(self) -> float: ...

    def sender_report_sent(self, ntp_middle: int, at: float) -> None: ...


class SendLog:
    """Send time and size of the last ``SENT_LOG`` video packets, by RTP sequence number."""

    def __init__(self) -> None:
        self._slots: list[tuple[int, float, int] | None] = [None] * SENT_LOG

    def add(self, seq: int, at: float, size: int) -> None:
        self._slots[seq % SENT_LOG] = (seq, at, size)

    def get(self, seq: int) -> tuple[float, int] | None:
        slot = self._slots[seq % SENT_LOG]
        return (slot[1], slot[2]) if slot is not None and slot[0] == seq else None


def attach_pacing(
    sender: RTCRtpSender,
    link: PacedLink,
    *,
    keyframe_pending: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> collections.Counter[str]:
    """Pace ``sender``'s video and budget its retransmissions (see the module docstring).

    ``keyframe_pending()`` is true (and resets) when the next video packet starts an IDR. Returns
    the counters ``rtx_sent``, ``rtx_bytes`` and ``rtx_suppressed_<reason>``.
    """
    transport: Any = sender.transport
    original_send = getattr(transport, SEND_SEAM)
    original_retransmit = getattr(sender, RETRANSMIT_SEAM)
    counts: collections.Counter[str] = collections.Counter()
    log = SendLog()
    copied = SendLog()  # video packets a protective copy was sent for, and when
    last_idr_at = [-1e9]
    in_idr = [False]  # between an IDR's first packet and its marker bit
    loop = asyncio.get_running_loop()

    async def copy(seq: int) -> None:
        counts["rtx_protective"] += 1
        copied.add(seq, clock(), 0)
        with contextlib.suppress(ConnectionError):
            await original_retransmit(seq)

    async def send(data: bytes) -> None:
        if is_rtcp(data):
            if (
                len(data) >= 16
                and data[1] == RTCP_SR
                and struct.unpack_from("!I", data, 4)[0] == sender._ssrc
            ):
                ntp = struct.unpack_from("!Q", data, 8)[0]
                link.sender_report_sent((ntp >> 16) & 0xFFFFFFFF, clock())
            await original_send(data)
            return
        ssrc = struct.unpack_from("!I", data, 8)[0] if len(data) >= 12 else None
        if ssrc == sender._ssrc:
            await link.pacer.wait(len(data))
            now = clock()
            if keyframe_pending():
                last_idr_at[0] = now
                in_idr[0] = True
                link.idr_started(now)
            seq = struct.unpack_from("!H", data, 2)[0]
            log.add(seq, now, len(data))
            if (
                not in_idr[0] and link.protecting()
            ):  # an IDR is repaired by NACK: copied, it would double the burst
                loop.call_later(COPY_DELAY_S, lambda: asyncio.ensure_future(copy(seq)))
            if data[1] & 0x80:  # the marker bit: the frame's last packet
                if in_idr[0]:
                    link.idr_finished(now)
                in_idr[0] = False
        elif ssrc == sender._rtx_ssrc:
            link.pacer.charge(len(data))
            counts["rtx_sent"] += 1
            counts["rtx_bytes"] += len(data)
        await original_send(data)

    async def retransmit(sequence_number: int) -> None:
        sent = log.get(sequence_number)
        if sent is None:
            counts["rtx_suppressed_unknown"] += 1
            return
        at, size = sent
        copy_sent = copied.get(sequence_number)
        if copy_sent is not None and clock() - copy_sent[0] < link.rtt():
            counts["rtx_suppressed_copy_in_flight"] += 1  # the NACK crossed the protective copy
        elif clock() - at > RTX_MAX_AGE_S:
            counts["rtx_suppressed_too_old"] += 1
        elif not link.rtx_budget.try_spend(size + 2):  # RTX adds the original sequence number
            counts["rtx_suppressed_budget"] += 1
        else:
            if at < last_idr_at[0]:
                counts["rtx_before_idr"] += 1  # an in-order receiver is blocked on it (docstring)
            await original_retransmit(sequence_number)

    setattr(transport, SEND_SEAM, send)
    setattr(sender, RETRANSMIT_SEAM, retransmit)
    return counts


def rtx_stats(counts: collections.Counter[str]) -> dict[str, Any]:
    suppressed = {
        k.removeprefix("rtx_suppressed_"): v for k, v in counts.items() if k.startswith("rtx_suppressed_")
    }
    return {
        "rtx_sent": counts["rtx_sent"],
        "rtx_bytes": counts["rtx_bytes"],
        "rtx_protective": counts["rtx_protective"],
        "rtx_before_idr": counts["rtx_before_idr"],
        "rtx_suppressed": sum(suppressed.values()),
        "rtx_suppressed_by_reason": suppressed,
    }
