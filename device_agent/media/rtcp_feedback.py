"""The aiortc seam for a sender's incoming RTCP: PLI/FIR, REMB and receiver reports for a shared encoder.

aiortc sends pre-encoded ``av.Packet``s as they are, but it only acts on keyframe requests (PLI,
FIR) and REMB inside its own per-sender encoder, which a passthrough track does not use. The DTLS
transport hands each routed RTCP packet to ``sender._handle_rtcp_packet(packet)``; we wrap that
method on each sender we create and give PLI/FIR, REMB and the report blocks about our stream
(fraction lost, LSR/DLSR) to a ``FeedbackHandler`` (the viewer's rate controller), count NACKs,
and let aiortc handle everything else (its own receiver-report stats, NACK retransmission through
``sender._retransmit``, which device_agent.media.pacing guards) as before.

This is private API: aiortc is pinned in pyproject.toml, and tests/test_aiortc_seams.py fails if
the method moves or stops being called for PLI, REMB and receiver reports.
"""

from __future__ import annotations

import collections
from typing import Protocol

from aiortc import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

SEAM = "_handle_rtcp_packet"


class FeedbackHandler(Protocol):
    def on_keyframe_request(self, kind: str) -> None: ...

    def on_remb(self, bps: int) -> None: ...

    def on_report(self, report: RtcpReceiverInfo) -> None: ...


def attach_feedback(sender: RTCRtpSender, handler: FeedbackHandler) -> collections.Counter[str]:
    """Route ``sender``'s PLI/FIR, REMB and receiver reports to ``handler``.

    Returns a counter of the feedback seen (``pli``, ``fir``, ``nack``, ``remb``, ``rr``) for health.
    """
    original = getattr(sender, SEAM)
    counts: collections.Counter[str] = collections.Counter()

    async def handle(packet: object) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            kind = "pli" if packet.fmt == RTCP_PSFB_PLI else "fir"
            counts[kind] += 1
            handler.on_keyframe_request(kind)
            return  # aiortc would only set a flag its passthrough path never reads
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                pass
            else:
                if sender._ssrc in ssrcs:
                    counts["remb"] += 1
                    handler.on_remb(bitrate)
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    counts["rr"] += 1
                    handler.on_report(report)
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            counts["nack"] += len(packet.lost)
        await original(packet)

    setattr(sender, SEAM, handle)
    return counts
