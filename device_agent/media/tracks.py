"""aiortc tracks fed by the shared pipelines: pre-encoded video packets and broadcast audio frames."""

from __future__ import annotations

import asyncio
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

    def subscribed(self, sub: Subscriber[FanoutPacket], fanout: PacketFanout | None = None) -> None: ...

    def keyframe_out(self, size: int) -> None: ...


class FanoutVideoTrack(MediaStreamTrack):
    """A viewer's video: ``recv`` returns the shared encoder's ``av.Packet``s (aiortc packs, not encodes).

    It subscribes on the first ``recv``, i.e. when aiortc starts sending after DTLS, so the IDR
    it asks for arrives when the viewer can use it.

    ``switch_to(fanout)`` moves the viewer to another encoding layer: it subscribes to that fan-out
    at once (without replaying its cached pictures: their timestamps are behind), which asks it for
    an IDR, keeps sending the current layer until that IDR is there, then leaves the old one.
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
        self._pending: tuple[PacketFanout, Subscriber[FanoutPacket]] | None = None
        self.layer_switches = 0

    def switch_to(self, fanout: PacketFanout) -> None:
        """Move to ``fanout``'s layer at its next IDR (see the class docstring); idempotent."""
        if self._pending is not None:
            if self._pending[0] is fanout:
                return
            self._pending[0].unsubscribe(self._pending[1])
            self._pending = None
        if fanout is self.fanout:
            return
        if self.subscriber is None:  # not sending yet: start on that layer
            self.fanout = fanout
            return
        self._pending = (fanout, fanout.subscribe(self.name, reason="layer switch", replay=False))

    async def _next(self) -> FanoutPacket:
        """The next packet of the current layer, or the target layer's IDR once it is there."""
        assert self.subscriber is not None
        while True:
            if self._pending is not None and self._pending[1].queue:
                fanout, sub = self._pending
                self._pending = None
                self.fanout.unsubscribe(self.subscriber)
                self.fanout, self.subscriber = fanout, sub
                self.layer_switches += 1
                if self.hooks is not None:
                    self.hooks.subscribed(sub, fanout)
            if self._pending is None:
                return await self.subscriber.get()
            if self.subscriber.queue:
                return self.subscriber.queue.popleft()
            if self.subscriber.closed:
                raise ConnectionError("subscriber closed")
            waits = [asyncio.ensure_future(s.wakeup.wait()) for s in (self.subscriber, self._pending[1])]
            for s in (self.subscriber, self._pending[1]):
                s.wakeup.clear()
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.subscriber is None:
            self.subscribed_at = time.monotonic()
            self.subscriber = self.fanout.subscribe(self.name)
            if self.hooks is not None:
                self.hooks.subscribed(self.subscriber, self.fanout)
        try:
            item = await self._next()
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
        if self._pending is not None:
            self._pending[0].unsubscribe(self._pending[1])
            self._pending = None
        super().stop()

    def stats(self) -> dict[str, Any]:
        first = (
            None
            if self.first_packet_at is None or self.subscribed_at is None
            else round((self.first_packet_at - self.subscribed_at) * 1000, 1)
        )
        return {
            "packets": self.sent_packets,
            "bytes": self.sent_bytes,
            "first_keyframe_ms": first,
            "layer_switches": self.layer_switches,
        }
