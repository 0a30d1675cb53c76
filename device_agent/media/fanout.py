"""Encode once, fan out: one encoder's packets to every viewer, keyframes and bitrate shared.

Every subscriber gets the same ``av.Packet`` objects (aiortc packetizes them per viewer). A new
subscriber starts at once from the cached group of pictures when its IDR is recent (younger than
``idr_min_interval``: the frames since are replayed), or at the IDR already forced and on its way,
otherwise at the next IDR, which it asks for. A viewer whose ICE checks arrived is about to
subscribe: ``prepare`` asks for its IDR then (and keeps the encoder running), so it is ready when
DTLS is done.
A keyframe request (new viewer, PLI, FIR, a
viewer that fell behind) reaches the encoder at most once per ``idr_min_interval`` (a request in
the cool-down is deferred to its end, not lost); each forced IDR is counted by cause, per viewer
that asked. Each viewer's bandwidth estimate (device_agent.media.rate_control) comes in through
``report_estimate``; ``rate_control.choose_target`` turns them into the encoder's target and names
the *constrained* viewers, whose estimate is far below the others' and does not lower it.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import av

from device_agent.media.rate_control import choose_target
from device_agent.media.source_qos import EncoderOutput
from hal.encoder.base import EncodedPacket

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
QUEUE_LIMIT = 90  # packets a slow viewer may lag (3 s at 30 fps) before it is resynchronised
GOP_CACHE_LIMIT = 64  # packets kept since the last IDR, for starting new viewers at once
WARM_S = 2.0  # a viewer about to subscribe (prepare) keeps the encoder running this long
PENDING_IDR_S = 1.0  # a forced IDR not out after this long no longer serves a new subscriber
BITRATE_DEADBAND = 0.1  # ignore estimate-driven changes smaller than 10 %
BITRATE_MIN_INTERVAL = 1.0  # seconds between encoder bitrate changes


class KeyframeEncoder(Protocol):
    def force_keyframe(self) -> None: ...

    def set_bitrate(self, bps: int) -> bool: ...


@dataclass(frozen=True)
class FanoutPacket:
    packet: av.Packet  # Annex-B access unit, pts on the 90 kHz clock
    keyframe: bool
    capture_ts: float
    frame_index: int


T = TypeVar("T")


@dataclass
class Subscriber(Generic[T]):
    """One viewer's queue. ``get`` waits for the next item (for video, the first is always an IDR)."""

    id: int
    name: str
    need_keyframe: bool = True
    estimate: int | None = None  # this viewer's video budget (bps), from its rate controller
    constrained: bool = False  # estimate far below the others': it does not lower the target
    idr_causes: collections.Counter[str] = field(default_factory=collections.Counter)
    queue: collections.deque[T] = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    resyncs: int = 0

    async def get(self) -> T:
        while not self.queue:
            if self.closed:
                raise ConnectionError("subscriber closed")
            self.wakeup.clear()
            await self.wakeup.wait()
        return self.queue.popleft()


class PacketFanout:
    """Distributes encoded packets; owns keyframe rate limiting and REMB aggregation."""

    def __init__(
        self,
        encoder: KeyframeEncoder,
        *,
        idr_min_interval: float = 0.25,
        min_bitrate: int = 250_000,
        max_bitrate: int = 6_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.encoder = encoder
        self.idr_min_interval = idr_min_interval
        self.min_bitrate, self.max_bitrate = min_bitrate, max_bitrate
        self._clock = clock
        self.output = EncoderOutput()
        self._ids = itertools.count(1)
        self._subs: dict[int, Subscriber[FanoutPacket]] = {}
        self._last_idr_request = -1e9
        self._idr_pending = False  # forced, not yet published
        self._deferred: asyncio.TimerHandle | None = None
        self._last_bitrate_change = -1e9
        self.target_bitrate: int | None = None  # applied by the encoder
        self.requested_bitrate: int | None = None  # what the viewers' estimates asked for
        self.keyframe_requests: collections.Counter[str] = collections.Counter()
        self.idrs_forced = 0
        self.idrs_by_cause: collections.Counter[str] = collections.Counter()
        self._causes: dict[tuple[str, int | None], None] = {}  # requests served by the next IDR
        self.packets = 0
        self.latest_keyframe_ts: float | None = None
        self._gop: list[FanoutPacket] = []  # the last IDR and everything after it (bounded)
        self.replayed_joins = 0
        self.prepared_joins = 0
        self.pending_joins = 0  # subscribers started by an IDR already forced (no request of their own)
        self._warm_until = -1e9

    # -- a viewer about to subscribe ----------------------------------------------------------------
    def prepare(self, reason: str = "viewer joining") -> None:
        """A viewer will subscribe soon (its ICE checks arrived; DTLS is next): have an IDR ready then.

        Asks for one now unless one was asked for within ``idr_min_interval`` (that one will do),
        and keeps the encoder running (``active``) for ``WARM_S`` even with no subscriber yet. The
        viewer's ``subscribe`` then starts from the cached IDR, instead of asking for one and
        waiting for the next camera frame and its encoding.
        """
        now = self._clock()
        self._warm_until = now + WARM_S
        if self._deferred is not None or now - self._last_idr_request < self.idr_min_interval:
            return
        self.prepared_joins += 1
        self.request_keyframe(reason)

    @property
    def active(self) -> bool:
        """Whether the encoder should run: someone watches, or a viewer is about to (``prepare``)."""
        return bool(self._subs) or self._clock() < self._warm_until

    # -- subscribers ---------------------------------------------------------------------------
    def subscribe(
        self, name: str = "", *, reason: str = "new viewer", replay: bool = True
    ) -> Subscriber[FanoutPacket]:
        """A new queue, started from the cached recent IDR (``replay``) or at the next one, asked for with
        ``reason``."""
        sub: Subscriber[FanoutPacket] = Subscriber(id=next(self._ids), name=name)
        self._subs[sub.id] = sub
        recent = (
            replay
            and self._gop
            and self.latest_keyframe_ts is not None
            and self._clock() - self.latest_keyframe_ts <= self.idr_min_interval
        )
        if recent:  # an IDR just went out: start from it instead of waiting for the cool-down
            sub.queue.extend(self._gop)
            sub.need_keyframe = False
            sub.wakeup.set()
            self.replayed_joins += 1
        elif self._idr_pending and self._clock() - self._last_idr_request < PENDING_IDR_S:
            self.keyframe_requests[reason] += 1  # the IDR on its way (a prepared join's) starts it
            self.pending_joins += 1
        else:
            self.request_keyframe(reason, sub)
        return sub

    def unsubscribe(self, sub: Subscriber[FanoutPacket]) -> None:
        sub.closed = True
        sub.wakeup.set()
        if self._subs.pop(sub.id, None) is not None:
            self._apply_estimates()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    # -- packets -------------------------------------------------------------------------------
    def publish(self, encoded: EncodedPacket) -> None:
        """Hand one access unit to every subscriber (runs on the event loop)."""
        packet = av.Packet(encoded.data)
        packet.pts = encoded.pts
        packet.dts = encoded.pts
        packet.time_base = VIDEO_TIME_BASE
        item = FanoutPacket(packet, encoded.keyframe, encoded.capture_ts, encoded.frame_index)
        self.packets += 1
        self.output.add(self._clock(), encoded.capture_ts)  # the encoder output's own QoS (source_qos.py)
        if encoded.keyframe:
            self._idr_pending = False
            self.latest_keyframe_ts = self._clock()
            self._gop = [item]
        elif self._gop and len(self._gop) < GOP_CACHE_LIMIT:
            self._gop.append(item)
        else:
            self._gop = []  # too long since the IDR to be worth replaying
        for sub in self._subs.values():
            if sub.need_keyframe:
                if not encoded.keyframe:
                    continue
                sub.need_keyframe = False
            if len(sub.queue) >= QUEUE_LIMIT:  # this viewer cannot keep up: drop and restart at an IDR
                sub.queue.clear()
                sub.need_keyframe = True
                sub.resyncs += 1
                self.request_keyframe("viewer behind", sub)
                continue
            sub.queue.append(item)
            sub.wakeup.set()

    # -- keyframes -----------------------------------------------------------------------------
    def request_keyframe(self, reason: str, sub: Subscriber[FanoutPacket] | None = None) -> None:
        """Ask for an IDR (for ``sub``, when one viewer asks); coalesced, at most one per
        ``idr_min_interval``."""
        self.keyframe_requests[reason] += 1
        self._causes[(reason, None if sub is None else sub.id)] = None
        if self._deferred is not None:
            return  # one is already scheduled: it serves this request too
        wait = self._last_idr_request + self.idr_min_interval - self._clock()
        if wait <= 0:
            self._force()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._deferred = loop.call_later(wait, self._force)

    def _force(self) -> None:
        self._deferred = None
        self._last_idr_request = self._clock()
        self._idr_pending = True
        self.idrs_forced += 1
        for reason, sub_id in self._causes:
            self.idrs_by_cause[reason] += 1
            sub = self._subs.get(sub_id) if sub_id is not None else None
            if sub is not None:
                sub.idr_causes[reason] += 1
        self._causes.clear()
        self.encoder.force_keyframe()

    # -- bitrate -------------------------------------------------------------------------------
    def report_estimate(self, sub: Subscriber[FanoutPacket], bps: int) -> None:
        """``sub``'s current video budget (its rate controller's estimate)."""
        sub.estimate = bps
        self._apply_estimates()

    def _apply_estimates(self) -> None:
        decision = choose_target(
            [(s.id, s.estimate) for s in self._subs.values() if s.estimate],
            min_bps=self.min_bitrate,
            max_bps=self.max_bitrate,
        )
        for s in self._subs.values():
            s.constrained = s.id in decision.constrained
        target = decision.target
        if target is None:
            return
        now = self._clock()
        current = self.requested_bitrate
        if current is not None and abs(target - current) < BITRATE_DEADBAND * current:
            return
        if (
            current is not None
            and now - self._last_bitrate_change < BITRATE_MIN_INTERVAL
            and target > current
        ):
            return  # go down at once, up at most once a second
        self.requested_bitrate = target
        self._last_bitrate_change = now
        if self.encoder.set_bitrate(target):  # hardware encoders refuse: their bitrate is fixed at start
            log.info(
                "encoder bitrate -> %d bps (%d viewers, %d constrained)",
                target,
                len(self._subs),
                len(decision.constrained),
            )
            self.target_bitrate = target

    def close(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        for sub in list(self._subs.values()):
            self.unsubscribe(sub)

    def stats(self) -> dict[str, Any]:
        return {
            "viewers": len(self._subs),
            "packets": self.packets,
            "idrs_forced": self.idrs_forced,
            "replayed_joins": self.replayed_joins,
            "prepared_joins": self.prepared_joins,
            "pending_joins": self.pending_joins,
            "keyframe_requests": dict(self.keyframe_requests),
            "idrs_by_cause": dict(self.idrs_by_cause),
            "target_bitrate": self.target_bitrate,
            "constrained": sum(s.constrained for s in self._subs.values()),
            "requested_bitrate": self.requested_bitrate,
            "resyncs": sum(s.resyncs for s in self._subs.values()),
            **self.output.stats(),
        }
