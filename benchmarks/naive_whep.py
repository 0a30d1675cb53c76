"""The peer for the media benchmarks: aiortc with a naive WHEP handler, as in aiortc's examples.

A plain aiohttp ``POST /whep`` handler: ``RTCPeerConnection()`` with the default configuration,
``setRemoteDescription(offer)``, then ``addTrack`` of a ``VideoStreamTrack`` subclass producing
the same test-pattern frames as the agent's camera, ``createAnswer``/``setLocalDescription`` and
the answer. aiortc encodes per viewer (its own encoder for each sender) and picks the codec from
the offer's order. Frames come from one shared renderer (rendered once per frame interval while
anyone watches), so the comparison with the agent isolates the per-viewer encoding. It also serves
the agent's viewer page (read from the package, unchanged) so a browser can be pointed at it.

Run: .venv/bin/python -m benchmarks.naive_whep --listen 127.0.0.1:8098 --width 1280 --height 720
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import av
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp

from device_agent.media.whep import viewer_page, viewer_script
from hal.camera.file import FileCamera
from hal.camera.test_pattern import TestPatternCamera

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location",
}


class SharedPattern:
    """Renders the test pattern (or loops ``clip``) once per frame interval while a track wants frames."""

    def __init__(self, width: int, height: int, fps: int, clip: str = "") -> None:
        self.camera = FileCamera(clip, width, height, fps) if clip else TestPatternCamera(width, height, fps)
        self.frame: av.VideoFrame | None = None
        self.index = -1
        self.changed = asyncio.Condition()
        self.watchers = 0
        self._task: asyncio.Task[None] | None = None

    async def next_after(self, index: int) -> tuple[int, av.VideoFrame]:
        if self._task is None or self._task.done():
            await self.camera.start()
            self._task = asyncio.create_task(self._run())
        async with self.changed:
            await self.changed.wait_for(lambda: self.index > index and self.frame is not None)
            assert self.frame is not None
            return self.index, self.frame

    async def _run(self) -> None:
        while True:
            captured = await self.camera.read()
            async with self.changed:
                self.frame, self.index = captured.frame, captured.index
                self.changed.notify_all()


class PatternTrack(VideoStreamTrack):
    """aiortc's example track shape: ``recv`` returns raw frames stamped by ``next_timestamp``."""

    def __init__(self, pattern: SharedPattern) -> None:
        super().__init__()
        self.pattern = pattern
        self.last = -1

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        self.last, frame = await self.pattern.next_after(self.last)
        out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
        out.pts, out.time_base = pts, time_base
        return out


class NaiveWhep:
    def __init__(self, pattern: SharedPattern) -> None:
        self.pattern = pattern
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.ids = itertools.count(1)
        self.post_ms: list[float] = []

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS)

    async def post(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        offer = RTCSessionDescription(sdp=await request.text(), type="offer")
        pc = RTCPeerConnection()
        sid = str(next(self.ids))
        self.pcs[sid] = pc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                self.pcs.pop(sid, None)

        await pc.setRemoteDescription(offer)
        pc.addTrack(PatternTrack(self.pattern))
        await pc.setLocalDescription(await pc.createAnswer())
        self.post_ms.append((time.monotonic() - started) * 1000)
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={**CORS, "Location": f"/whep/{sid}"},
        )

    async def patch(self, request: web.Request) -> web.Response:
        pc = self.pcs.get(request.match_info["id"])
        if pc is None:
            return web.Response(status=404, headers=CORS)
        for line in (await request.text()).splitlines():
            if line.startswith("a=candidate:"):
                cand = candidate_from_sdp(line[2:].split(":", 1)[1])
                cand.sdpMid = "0"
                await pc.addIceCandidate(cand)
        return web.Response(status=204, headers=CORS)

    async def delete(self, request: web.Request) -> web.Response:
        pc = self.pcs.pop(request.match_info["id"], None)
        if pc is not None:
            await pc.close()
        return web.Response(status=200, headers=CORS)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": len(self.pcs), "post_ms": self.post_ms[-64:]}, headers=CORS)


async def serve(host: str, port: int, width: int, height: int, fps: int, clip: str = "") -> None:
    handler = NaiveWhep(SharedPattern(width, height, fps, clip))
    app = web.Application()
    app.add_routes(
        [
            web.get("/", viewer_page),
            web.get("/viewer.js", viewer_script),
            web.get("/api/stats", handler.stats),
            web.options("/whep", handler.options),
            web.post("/whep", handler.post),
            web.options("/whep/{id}", handler.options),
            web.patch("/whep/{id}", handler.patch),
            web.delete("/whep/{id}", handler.delete),
        ]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"naive WHEP on http://{host}:{port}/whep", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8098")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--clip", default="", help="loop this video file instead of the test pattern")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    try:
        asyncio.run(serve(host, int(port), args.width, args.height, args.fps, args.clip))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
