"""aiortc tracks fed by the shared pipelines: pre-encoded video packets and broadcast audio frames."""

from __future__ import annotations

import collections
import time
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from device_agent.media.fanout import FanoutPacket, PacketFanout, Subscriber


class LatencyWindow:
    """The last N capture-to-send latencies, for p50/p95 in health and benchmarks."""

    def __init__(self, size: int = 600) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def percentiles(self) -> dict[str, float | None]:
        if not self.samples:
            return {"p50_ms": None, "p95_ms": None}
        ordered = sorted(self.samples)
        pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)  # noqa: E731
        return {"p50_ms": pick(0.50), "p95_ms": pick(0.95)}


class VideoSendHooks(Protocol):
    """What the viewer's send control (viewer_control.ViewerControl) hears from its track."""

    def subscribed(self, sub: Subscriber[FanoutPacket]) -> None: ...

    def keyframe_out(self, size: int) -> None: ...


class FanoutVideoTrack(MediaStreamTrack):
    """A viewer's video: ``recv`` returns the shared encoder's ``av.Packet``s (aiortc packs, not encodes).

    It subscribes on the first ``recv``, i.e. when aiortc starts sending after DTLS, so the IDR
    it asks for arrives when the viewer can use it.
    """

    kind = "video"

    def __init__(self, fanout: PacketFanout, latency: LatencyWindow, name: str = "") -> None:
        super().__init__()
        self.fanout = fanout
        self.latency = latency
        self.name = name
        self.subscriber: Subscriber[FanoutPacket] | None = None
        self.first_packet_at: float | None = None
        self.subscribed_at: float | None = None
        self.sent_packets = 0
        self.sent_bytes = 0
        self.last_capture_ts: float | None = None
        self.hooks: VideoSendHooks | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.subscriber is None:
            self.subscribed_at = time.monotonic()
            self.subscriber = self.fanout.subscribe(self.name)
            if self.hooks is not None:
                self.hooks.subscribed(self.subscriber)
        try:
            item = await self.subscriber.get()
        except ConnectionError:
            raise MediaStreamError from None
        now = time.monotonic()
        if self.first_packet_at is None:
            self.first_packet_at = now
        self.latency.add(now - item.capture_ts)
        self.sent_packets += 1
        self.sent_bytes += item.packet.size
        self.last_capture_ts = item.capture_ts
        if item.keyframe and self.hooks is not None:
            self.hooks.keyframe_out(item.packet.size)
        return item.packet

    def stop(self) -> None:
        if self.subscriber is not None:
            self.fanout.unsubscribe(self.subscriber)
        super().stop()

    def stats(self) -> dict[str, Any]:
        first = (None if self.first_packet_at is None or self.subscribed_at is None
                 else round((self.first_packet_at - self.subscribed_at) * 1000, 1))
        return {"packets": self.sent_packets, "bytes": self.sent_bytes, "first_keyframe_ms": first}
