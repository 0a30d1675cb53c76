"""Guards for the aiortc private API the fan-out relies on (device_agent/media/rtcp_feedback.py).

If aiortc is upgraded and these fail, the seam moved: re-read RTCRtpSender/RTCDtlsTransport and
adapt rtcp_feedback.py before changing the pin in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from importlib.metadata import version
from pathlib import Path

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
    assert callable(getattr(AiortcH264, "pack"))  # the passthrough path for av.Packet tracks
    source = inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert ".pack(" in source and "isinstance(data, Frame)" in source


async def _wait(predicate, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_pli_and_remb_from_a_real_receiver_reach_the_fanout(tmp_path: Path) -> None:
    async with running_agent(media_config(tmp_path, encoder={"keyframe_interval_s": 60.0})) as agent, \
            aiohttp.ClientSession() as http:
        viewer = Viewer(f"http://127.0.0.1:{agent.get('media').web.port}")
        await viewer.connect(http, audio=False)
        await viewer.wait_frames(10)
        media = agent.get("media")
        session = next(iter(media.sessions.sessions.values()))
        forced = media.fanout.idrs_forced
        receiver = viewer.pc.getTransceivers()[0].receiver
        ssrc = next(iter(receiver._RTCRtpReceiver__remote_streams))  # the sender's SSRC as the viewer sees it
        await receiver._send_rtcp_pli(ssrc)
        await _wait(lambda: session.feedback["pli"] >= 1)
        await _wait(lambda: media.fanout.idrs_forced > forced)
        keyframes_before = sum(1 for _, _, key in viewer.stamps if key)
        await _wait(lambda: sum(1 for _, _, key in viewer.stamps if key) > keyframes_before)
        # aiortc's receiver estimates bandwidth and sends REMB by itself
        await _wait(lambda: session.remb is not None)
        assert media.fanout.target_bitrate is not None
        await viewer.close(http)
