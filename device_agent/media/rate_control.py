"""Per-viewer bandwidth estimate (the GCC split) and the policy that turns estimates into one target.

``BandwidthEstimator`` keeps one viewer's estimate from two inputs, as Google Congestion Control
does on the sender side:

- **delay-based**: the viewer's REMB (Chromium's receive-side delay estimator), an upper bound;
- **loss-based**: the fraction lost in the viewer's RTCP receiver reports. Above ``LOSS_HIGH``
  (10 %) the rate is cut, ``rate *= 1 - 0.5 * loss`` (at most once per RTT + 300 ms, so one lossy
  burst reported twice is cut once); between ``LOSS_LOW`` (2 %) and 10 % it holds; below 2 % it
  grows, ~8 %/s, or ``RAMP_PER_S`` (x1.5/s) in the start phase (before the first report at or
  above 2 % loss), so a viewer on a good link leaves the low start rate within seconds.

The estimate is the minimum of the two, clamped to ``[min_bps, max_bps]``; it starts at
``START_BPS`` (below typical uplinks: a link that cannot carry it shows up as loss within a
report or two). A REMB alone never raises the estimate: Chromium's delay-based estimate stays
above the link on a standing drop-tail queue (measured at ~1.5x), so only low loss lets it grow.

``choose_target`` is the shared encoder's policy over all viewers' estimates; see its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

START_BPS = 400_000
LOSS_LOW = 0.02
LOSS_HIGH = 0.10
GROWTH_PER_S = 1.08
RAMP_PER_S = 1.5
CUT_HOLDOFF_S = 0.3  # plus one RTT between two cuts
MAX_STEP_S = 3.0  # a report after a long gap grows the rate by at most this many seconds' worth
CONSTRAINED_RATIO = 0.5  # an estimate below this share of the reference does not lower the target


class BandwidthEstimator:
    """One viewer's send-rate estimate from its REMB and receiver reports (see the module docstring)."""

    def __init__(
        self, *, start_bps: int = START_BPS, min_bps: int = 150_000, max_bps: int = 6_000_000
    ) -> None:
        self.min_bps, self.max_bps = min_bps, max_bps
        self.rate = float(min(max_bps, max(min_bps, start_bps)))  # the loss-based state
        self.remb: int | None = None
        self.rtt: float = 0.1
        self.last_loss: float | None = None
        self.ramping = True
        self._last_report: float | None = None
        self._last_cut = -1e9
        self.reports = 0
        self.cuts = 0

    @property
    def estimate(self) -> int:
        """min(loss-based, delay-based), clamped."""
        value = self.rate if self.remb is None else min(self.rate, self.remb)
        return int(min(self.max_bps, max(self.min_bps, value)))

    def on_remb(self, bps: int) -> None:
        self.remb = max(1, int(bps))

    def on_rtt(self, seconds: float) -> None:
        if 0.0 < seconds < 10.0:
            self.rtt = seconds

    def on_report(self, fraction_lost: float, now: float) -> None:
        """A receiver report for our stream: ``fraction_lost`` in 0..1 since the previous report."""
        loss = min(1.0, max(0.0, fraction_lost))
        dt = 0.0 if self._last_report is None else min(MAX_STEP_S, max(0.0, now - self._last_report))
        self._last_report = now
        self.reports += 1
        self.last_loss = loss
        if loss > LOSS_HIGH:
            self.ramping = False
            if now - self._last_cut >= CUT_HOLDOFF_S + self.rtt:
                self._last_cut = now
                self.cuts += 1
                self.rate = max(
                    float(self.min_bps), min(self.rate, float(self.estimate)) * (1.0 - 0.5 * loss)
                )
            return
        if loss >= LOSS_LOW:
            self.ramping = False
            return
        factor = (RAMP_PER_S if self.ramping else GROWTH_PER_S) ** dt
        grown = self.rate * factor + 1000.0 * dt
        if self.remb is not None:  # never run ahead of the delay-based bound: growth stops at it
            grown = min(grown, max(self.rate, float(self.remb)))
        self.rate = min(float(self.max_bps), grown)

    def stats(self) -> dict[str, object]:
        return {
            "estimate_bps": self.estimate,
            "loss_based_bps": int(self.rate),
            "remb_bps": self.remb,
            "fraction_lost": self.last_loss,
            "ramping": self.ramping,
            "rate_cuts": self.cuts,
        }


class LossWindow:
    """Loss over at least ``min_packets`` (or ``max_age_s``) from receiver reports' cumulative counters.

    One report's ``fraction_lost`` covers ~1 s, i.e. a few dozen packets at low rates: 5 % random
    loss then reads above 10 % in one report in sixteen, and each such report cuts the rate. The
    cumulative ``packets_lost`` and extended highest sequence number give the loss over a longer
    span; ``add`` returns it once the span is long enough (None before).
    """

    def __init__(self, min_packets: int = 100, max_age_s: float = 3.0) -> None:
        self.min_packets, self.max_age_s = min_packets, max_age_s
        self._start: tuple[int, int, float] | None = None  # (highest seq, lost, time)

    def add(self, highest_sequence: int, packets_lost: int, now: float) -> float | None:
        if self._start is None or highest_sequence < self._start[0]:
            self._start = (highest_sequence, packets_lost, now)
            return None
        seq0, lost0, t0 = self._start
        expected = highest_sequence - seq0
        if expected < self.min_packets and now - t0 < self.max_age_s:
            return None
        self._start = (highest_sequence, packets_lost, now)
        if expected <= 0:
            return None
        return min(1.0, max(0.0, (packets_lost - lost0) / expected))


@dataclass(frozen=True)
class TargetDecision:
    """The shared encoder's target and the viewers (by key) that did not set it."""

    target: int | None
    constrained: frozenset[int]


def choose_target(
    estimates: Sequence[tuple[int, int]], *, min_bps: int, max_bps: int, ratio: float = CONSTRAINED_RATIO
) -> TargetDecision:
    """The encoder's target from ``(viewer key, estimate)`` pairs.

    The reference is the upper median of the estimates (with one viewer, its own estimate; with
    two, the better one). A viewer whose estimate is below ``ratio`` x the reference is
    *constrained*: it does not lower the target, and the target is the lowest estimate among the
    others. ``layers.LayerPolicy`` moves a constrained viewer to the low layer (with one layer it
    still receives the one encoding, more than its link carries). Everybody else gets a stream
    that fits their estimate.
    """
    if not estimates:
        return TargetDecision(None, frozenset())
    ordered = sorted(bps for _, bps in estimates)
    reference = ordered[len(ordered) // 2]
    floor = ratio * reference
    constrained = frozenset(key for key, bps in estimates if bps < floor)
    usable = [bps for key, bps in estimates if key not in constrained]
    return TargetDecision(int(max(min_bps, min(max_bps, min(usable)))), constrained)
