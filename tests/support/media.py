"""In-process agents and aiortc viewers for the media tests (real aiortc on loopback, real encoders)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from device_agent.agent import Agent
from device_agent.assemble import build_agent
from device_agent.config import config_from_dict
from device_agent.media.qoe_client import QoeProbe
from hal.camera.marker import read_stamp


def media_config(tmp_path: Any, **sections: dict[str, Any]) -> dict[str, Any]:
    """A small, fast configuration: 640x360 test pattern, synthetic mic, WHEP on a free port."""
    data: dict[str, Any] = {
        "device": {"id": "test-cam", "state_dir": str(tmp_path / "state")},
        "camera": {"width": 640, "height": 360, "fps": 30},
        "encoder": {"bitrate": 600_000, "min_bitrate": 150_000, "max_bitrate": 1_500_000},
        "web": {"listen": "127.0.0.1:0"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


@contextlib.asynccontextmanager
async def running_agent(config: dict[str, Any]) -> AsyncIterator[Agent]:
    agent = build_agent(config_from_dict(config))
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


@dataclass
class Viewer:
    """An aiortc client that POSTs to /whep and records decoded frames' stamps and audio frames."""

    base_url: str
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    stamps: list[tuple[float, int, bool]] = field(default_factory=list)  # (arrival, frame index, key)
    audio_frames: int = 0
    location: str | None = None
    posted_at: float = 0.0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    qoe: QoeProbe | None = None  # receiver reports to the device (the page's twin)
    token: str = ""  # web.token, needed when the agent listens beyond loopback

    async def connect(
        self,
        session: aiohttp.ClientSession,
        audio: bool = True,
        qoe: bool = True,
        qoe_interval_s: float = 2.0,
    ) -> None:
        self.pc.addTransceiver("video", direction="recvonly")
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", self._on_track)
        if qoe:
            self.qoe = QoeProbe(self.pc, interval_s=qoe_interval_s)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        if self.qoe is not None:
            self.qoe.attach()
        self.posted_at = time.monotonic()
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with session.post(
            f"{self.base_url}/whep",
            data=self.pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", **auth},
        ) as resp:
            body = await resp.text()
            assert resp.status == 201, (resp.status, body)
            self.location = resp.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        if self.qoe is not None:
            self.qoe.start()

    def _on_track(self, track: Any) -> None:
        self.tasks.append(asyncio.ensure_future(self._pump(track)))

    async def _pump(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self.qoe is not None:
                self.qoe.frame(track.kind, frame)
            if track.kind == "video":
                stamp = read_stamp(frame.to_ndarray(format="gray"))
                self.stamps.append((time.monotonic(), stamp.index, frame.key_frame))
            else:
                self.audio_frames += 1

    async def wait_frames(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.stamps) < count:
            assert time.monotonic() < deadline, f"only {len(self.stamps)} frames in {timeout} s"
            await asyncio.sleep(0.01)

    async def close(self, session: aiohttp.ClientSession | None = None) -> None:
        if session is not None and self.location:
            auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            async with session.delete(self.base_url + self.location, headers=auth) as resp:
                assert resp.status in (200, 404)
        if self.qoe is not None:
            await self.qoe.stop()
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
