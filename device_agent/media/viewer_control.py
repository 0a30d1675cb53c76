"""One viewer's send control: bandwidth estimate, pacing, retransmission budget, keyframe guard.

``ViewerControl`` is created per viewer session and attached to its video sender. It takes the
sender's RTCP (rtcp_feedback: PLI/FIR, REMB, receiver reports), keeps the viewer's
``BandwidthEstimator`` (rate_control; loss over >= 100 packets, ``LossWindow``), reports
``VIDEO_SHARE`` of the estimate to the fan-out as
this viewer's video budget, sets the viewer's pacing rate (``PACING_FACTOR`` x the larger of its
estimate and the shared encoder's target: a constrained viewer gets the shared stream paced, not
delayed without end) and retransmission budget (``RTX_SHARE`` of its estimate), and passes
keyframe requests through its ``KeyframeGuard``. While the viewer's measured loss is in
``PROTECT_LOSS`` it asks for protective copies (pacing.py) and its video budget is
``PROTECTED_SHARE`` of the estimate, leaving as much again for the copies.

With encoding layers (``layers.LayerSet``) each budget also goes to the ``LayerPolicy``, and the
viewer's track is moved (``switch_layer``, the track's ``switch_to``) to the layer it names; from
the switch on the viewer's estimates and keyframe requests go to that layer's fan-out only.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpSender
from aiortc.rtp import RtcpReceiverInfo

from device_agent.media.fanout import FanoutPacket, PacketFanout, Subscriber
from device_agent.media.keyframe_guard import KeyframeGuard
from device_agent.media.layers import LayerSet
from device_agent.media.pacing import (
    JOIN_BURST_BYTES,
    PACING_FACTOR,
    RTX_SHARE,
    Pacer,
    RtxBudget,
    attach_pacing,
    rtx_stats,
)
from device_agent.media.rate_control import START_BPS, BandwidthEstimator, LossWindow
from device_agent.media.rtcp_feedback import attach_feedback

VIDEO_SHARE = 0.85  # of a viewer's estimate, for video; the rest is audio, RTX and packet overhead
PROTECTED_SHARE = 0.45  # the same while every video packet is sent twice (as much again for the copies)
PROTECT_LOSS = (0.02, 0.25)  # measured loss in this range: protective copies on
PROTECT = True
FRAME_S = 1 / 30
SR_LOG = 16


class ViewerControl:
    """See the module docstring. ``attach(sender)`` once negotiation fixed the sender's transport."""

    def __init__(
        self,
        fanout: PacketFanout,
        name: str = "",
        *,
        start_bps: int = START_BPS,
        layers: LayerSet | None = None,
        switch_layer: Callable[[PacketFanout], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fanout = fanout  # the fan-out of the layer this viewer is on now
        self.layers = layers
        self.switch_layer = switch_layer
        self.name = name
        self._clock = clock
        self.estimator = BandwidthEstimator(
            start_bps=start_bps, min_bps=fanout.min_bitrate, max_bps=int(fanout.max_bitrate / VIDEO_SHARE)
        )
        self.pacer = Pacer(self._pacing_bps(), initial_burst=JOIN_BURST_BYTES, clock=clock)
        self.rtx_budget = RtxBudget(self.estimator.estimate * RTX_SHARE, clock=clock)
        self.guard = KeyframeGuard()
        self.loss_window = LossWindow()
        self.subscriber: Subscriber[FanoutPacket] | None = None
        self.feedback: collections.Counter[str] = collections.Counter()
        self.rtx: collections.Counter[str] = collections.Counter()
        self.keyframes_sent = 0
        self._keyframe_pending = False
        self._last_idr_size = 0
        self.first_keyframe_bytes: int | None = None
        self.first_idr_at: float | None = None  # its first and last packet sent (join_timeline.py)
        self.first_idr_done_at: float | None = None
        self._srs: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._deferred: asyncio.TimerHandle | None = None

    def attach(self, sender: RTCRtpSender) -> collections.Counter[str]:
        """Wrap ``sender``'s RTCP handling and RTP sending; returns the feedback counter."""
        self.feedback = attach_feedback(sender, self)
        self.rtx = attach_pacing(
            sender, self, keyframe_pending=self._take_keyframe_pending, clock=self._clock
        )
        return self.feedback

    # -- the video track ----------------------------------------------------------------------------
    def subscribed(self, sub: Subscriber[FanoutPacket], fanout: PacketFanout | None = None) -> None:
        """The track is on ``fanout`` (its first subscription, or a layer switch; None: the same) as
        ``sub``."""
        self.subscriber, self.fanout = sub, fanout or self.fanout
        self._update()

    def keyframe_out(self, size: int) -> None:
        """The track hands an IDR of ``size`` bytes to aiortc: its first RTP packet starts it."""
        self._keyframe_pending = True
        self._last_idr_size = size
        if self.first_keyframe_bytes is None:
            self.first_keyframe_bytes = size

    def _take_keyframe_pending(self) -> bool:
        pending, self._keyframe_pending = self._keyframe_pending, False
        return pending

    # -- PacedLink --------------------------------------------------------------------------------
    def idr_started(self, at: float) -> None:
        self.keyframes_sent += 1
        if self.first_idr_at is None:
            self.first_idr_at = at
        transmit = self._last_idr_size * 8 / max(1.0, self.estimator.estimate)
        self.guard.idr_sent(at, self.estimator.rtt + FRAME_S + transmit)

    def idr_finished(self, at: float) -> None:
        if self.first_idr_done_at is None:
            self.first_idr_done_at = at

    def protecting(self) -> bool:
        loss = self.estimator.last_loss
        return PROTECT and loss is not None and PROTECT_LOSS[0] <= loss < PROTECT_LOSS[1]

    def rtt(self) -> float:
        return self.estimator.rtt

    def _video_share(self) -> float:
        return PROTECTED_SHARE if self.protecting() else VIDEO_SHARE

    def sender_report_sent(self, ntp_middle: int, at: float) -> None:
        self._srs[ntp_middle] = at
        while len(self._srs) > SR_LOG:
            self._srs.popitem(last=False)

    # -- FeedbackHandler ----------------------------------------------------------------------------
    def on_keyframe_request(self, kind: str) -> None:
        now = self._clock()
        delay = self.guard.decide(now)
        if delay is None:
            return
        if delay == 0:
            self.fanout.request_keyframe(kind, self.subscriber)
        elif self._deferred is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._deferred = loop.call_later(delay, self._deferred_request, kind)

    def _deferred_request(self, kind: str) -> None:
        self._deferred = None
        now = self._clock()
        if now - self.guard.idr_sent_at < self.guard.in_flight_s:
            return  # an IDR went out meanwhile (another viewer's, or the periodic one)
        self.guard.forwarded(now)
        self.fanout.request_keyframe(kind, self.subscriber)

    def on_remb(self, bps: int) -> None:
        self.estimator.on_remb(bps)
        self._update()

    def on_report(self, report: RtcpReceiverInfo) -> None:
        now = self._clock()
        sent = self._srs.get(report.lsr) if report.lsr else None
        if sent is not None:
            self.estimator.on_rtt(now - sent - report.dlsr / 65536)
        loss = self.loss_window.add(report.highest_sequence, report.packets_lost, now)
        if loss is None and self.estimator.reports == 0:
            loss = report.fraction_lost / 256  # the first report: act on it (a link far below the start rate)
        if loss is not None:
            self.estimator.on_report(loss, now)
        self._update()

    # -- outputs ------------------------------------------------------------------------------------
    def _pacing_bps(self) -> float:
        shared = (self.fanout.target_bitrate or 0) / VIDEO_SHARE
        return PACING_FACTOR * max(float(self.estimator.estimate), shared)

    def _update(self) -> None:
        estimate = self.estimator.estimate
        if self.subscriber is not None:
            budget = int(estimate * self._video_share())
            self.fanout.report_estimate(self.subscriber, budget)
            if self.layers is not None and self.switch_layer is not None:
                self.switch_layer(self.layers.report(self.name, budget))
        self.pacer.rate_bps = self._pacing_bps()
        self.rtx_budget.rate_bps = estimate * RTX_SHARE

    def close(self) -> None:
        if self.layers is not None:
            self.layers.policy.forget(self.name)
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None

    def stats(self) -> dict[str, Any]:
        sub = self.subscriber
        return {
            **self.estimator.stats(),
            "rtt_est_ms": round(self.estimator.rtt * 1000, 1),
            "video_budget_bps": int(self.estimator.estimate * self._video_share()),
            "protecting": self.protecting(),
            "pacing_bps": int(self.pacer.rate_bps),
            "paced_wait_s": round(self.pacer.waited_s, 2),
            "constrained": bool(sub and sub.constrained),
            **rtx_stats(self.rtx),
            "layer": self.layers.fanouts.index(self.fanout)
            if self.layers and self.fanout in self.layers.fanouts
            else 0,
            "keyframes_sent": self.keyframes_sent,
            "first_keyframe_bytes": self.first_keyframe_bytes,
            "pli_handling": dict(self.guard.counts),
            "pli_interval_s": self.guard.interval,
            "idrs_by_cause": dict(sub.idr_causes) if sub is not None else {},
        }
