"""Opus in-band FEC: the shared encoder puts a redundant copy of the previous frame (LBRR) in its
packets, and the answer says ``useinbandfec=1`` (aiortc's own answer has no Opus fmtp)."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from device_agent.media.audio_pipeline import OpusPacketizer
from device_agent.media.sdp_answer import with_opus_fec
from device_agent.media.stages import PIPELINE_RATE
from tests.support.media import media_config, running_agent


def _libopus_with_lbrr_check() -> ctypes.CDLL | None:
    """The libopus PyAV encodes with (bundled in av.libs, else the system's), if it has
    opus_packet_has_lbrr (1.5+)."""
    bundled = glob.glob(os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libopus-*.so*"))
    for path in [*bundled, ctypes.util.find_library("opus")]:
        if path:
            lib = ctypes.CDLL(path)
            if hasattr(lib, "opus_packet_has_lbrr"):
                lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
                return lib
    return None


def _voice(seconds: float = 2.0) -> np.ndarray:
    """A voiced, syllable-like 16 kHz signal (harmonics of a gliding pitch, 4 Hz envelope)."""
    t = np.arange(int(seconds * PIPELINE_RATE)) / PIPELINE_RATE
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / PIPELINE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.25 + 0.75 * np.abs(np.sin(2 * np.pi * 2 * t))
    return (6000 * tone * envelope).astype(np.int16)


def _lbrr_share(packetizer: OpusPacketizer, lib: ctypes.CDLL) -> float:
    samples = _voice()
    packets = []
    for start in range(0, len(samples), 160):  # the pipeline's 10 ms hops
        packets += [bytes(p) for p in packetizer.encode(samples[start : start + 160])]
    packets = packets[5:]  # the first packets have no previous frame to protect
    assert len(packets) > 50
    return sum(lib.opus_packet_has_lbrr(p, len(p)) == 1 for p in packets) / len(packets)


def test_the_shared_opus_encoder_sends_in_band_fec() -> None:
    lib = _libopus_with_lbrr_check()
    if lib is None:
        pytest.skip("no libopus with opus_packet_has_lbrr (1.5+) to read the packets with")
    assert _lbrr_share(OpusPacketizer(), lib) > 0.5  # ~75 %: LBRR follows frames the encoder found voiced
    assert _lbrr_share(OpusPacketizer(fec_loss_pct=0), lib) == 0.0  # the check tells the two apart


def test_with_opus_fec_adds_or_extends_the_opus_fmtp() -> None:
    base = (
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 nack\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
    )
    added = with_opus_fec(base)
    assert "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n" in added
    assert with_opus_fec(added) == added and added.count("a=fmtp:") == 1
    extended = with_opus_fec(base.replace("a=rtcp-fb:111 nack", "a=fmtp:111 minptime=10"))
    assert "a=fmtp:111 minptime=10;useinbandfec=1\r\n" in extended and extended.count("a=fmtp:") == 1
    assert with_opus_fec(base.replace("m=audio", "m=video")).count("a=fmtp") == 0  # audio sections only


async def test_the_answer_says_useinbandfec(tmp_path: Path) -> None:
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            assert "useinbandfec" not in pc.localDescription.sdp  # aiortc's offer does not ask for it
            async with http.post(
                f"http://127.0.0.1:{agent.get('media').web.port}/whep",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as resp:
                answer = await resp.text()
                assert resp.status == 201, answer
        finally:
            await pc.close()
    audio = answer.split("m=audio", 1)[1]
    opus = next(
        line.split(":", 1)[1].split(" ")[0]
        for line in audio.splitlines()
        if line.startswith("a=rtpmap:") and "opus/48000" in line.lower()
    )
    assert f"a=fmtp:{opus} useinbandfec=1" in audio, audio
