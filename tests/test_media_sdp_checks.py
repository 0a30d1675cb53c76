"""The SDP checks in front of aiortc accept what real viewers send and name what is wrong otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.media.sdp_checks import MAX_MEDIA_SECTIONS, SdpError, check_candidate, check_offer

CHROMIUM_OFFER = (Path(__file__).parent / "data" / "chromium_offer.sdp").read_bytes().decode()


async def test_real_offers_pass() -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    assert [s.kind for s in check_offer(CHROMIUM_OFFER)] == ["video", "audio", "application"]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("qoe")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        assert [s.mids for s in check_offer(pc.localDescription.sdp)] == [["0"], ["1"], ["2"]]
    finally:
        await pc.close()


@pytest.mark.parametrize(
    "value",
    [
        "1 1 udp 2130706431 127.0.0.1 9 typ host",
        "842163049 1 udp 1677729535 198.51.100.7 61322 typ srflx raddr 0.0.0.0 rport 0 generation 0 "
        "ufrag bmJb network-cost 999",
        "3076922212 1 udp 2122260223 8f1f24a3-3b3a-4c4e-8f0c-1b0e3c7a9d21.local 54321 typ host generation 0 "
        "network-id 1",
        "1 1 TCP 2105524479 ::1 9 typ host tcptype active",
        "4 1 udp 8265471 203.0.113.9 3478 typ relay raddr 198.51.100.7 rport 61322",
    ],
)
def test_real_candidate_forms_pass(value: str) -> None:
    check_candidate(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("garbage", "needs at least 8"),
        ("1 1 udp 1 127.0.0.1 9 typ", "needs at least 8"),
        ("1 0 udp 1 127.0.0.1 9 typ host", "component"),
        ("1 1 sctp 1 127.0.0.1 9 typ host", "transport"),
        ("1 1 udp ٣ 127.0.0.1 9 typ host", "priority"),  # int() would take an Arabic-Indic digit
        ("1 1 udp 1_000 127.0.0.1 9 typ host", "priority"),  # and an underscore
        ("1 1 udp 1 example.com 9 typ host", "address"),
        ("1 1 udp 1 127.0.0.1 65536 typ host", "port"),
        ("1 1 udp 1 127.0.0.1 9 typ peer", "type"),
        ("1 1 udp 1 127.0.0.1 9 typ host rport", "no value"),
        ("1 1 udp 1 127.0.0.1 9 typ host rport x", "rport"),
    ],
)
def test_bad_candidates_name_the_field(value: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        check_candidate(value)


def test_offer_limits() -> None:
    head, _, _ = CHROMIUM_OFFER.partition("m=video")
    section = "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{}\r\na=rtpmap:0 PCMU/8000\r\n"
    many = head.replace("a=group:BUNDLE 0 1 2\r\n", "") + "".join(
        section.format(i) for i in range(MAX_MEDIA_SECTIONS + 1)
    )
    with pytest.raises(SdpError, match="more than 16 media sections"):
        check_offer(many)
    with pytest.raises(SdpError, match="starts with v=0"):
        check_offer("")
    with pytest.raises(SdpError, match="control character"):
        check_offer(CHROMIUM_OFFER.replace("s=-", "s=\x00"))
