"""The one aiortc seam we rely on: a sender's incoming RTCP, for PLI/FIR/REMB with a shared encoder.

aiortc sends pre-encoded ``av.Packet``s as they are, but it only acts on keyframe requests (PLI,
FIR) and REMB inside its own per-sender encoder, which a passthrough track does not use. The DTLS
transport hands each routed RTCP packet to ``sender._handle_rtcp_packet(packet)``; we wrap that
method on each sender we create, send PLI/FIR/REMB to the fan-out, count NACKs, and let aiortc
handle everything else (receiver reports, RTT, NACK retransmission) as before.

This is private API: aiortc is pinned in pyproject.toml, and tests/test_aiortc_seams.py fails if
the method moves or stops being called for PLI and REMB.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from aiortc import RTCRtpSender
from aiortc.rtp import (RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket,
                        unpack_remb_fci)

SEAM = "_handle_rtcp_packet"


def attach_feedback(sender: RTCRtpSender, on_keyframe_request: Callable[[str], None],
                    on_remb: Callable[[int], None]) -> collections.Counter[str]:
    """Route ``sender``'s PLI/FIR to ``on_keyframe_request`` and REMB to ``on_remb``.

    Returns a counter of the feedback seen (``pli``, ``fir``, ``nack``, ``remb``) for health.
    """
    original = getattr(sender, SEAM)
    counts: collections.Counter[str] = collections.Counter()

    async def handle(packet: object) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            kind = "pli" if packet.fmt == RTCP_PSFB_PLI else "fir"
            counts[kind] += 1
            on_keyframe_request(kind)
            return  # aiortc would only set a flag its passthrough path never reads
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                pass
            else:
                if sender._ssrc in ssrcs:
                    counts["remb"] += 1
                    on_remb(bitrate)
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            counts["nack"] += len(packet.lost)
        await original(packet)

    setattr(sender, SEAM, handle)
    return counts
