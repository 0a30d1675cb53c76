"""One viewer's keyframe requests (PLI/FIR), kept from turning into an IDR storm.

A receiver on a lossy link sends a PLI for every picture it cannot decode, and keeps sending them
until an IDR *arrives*; forwarding each one forces an IDR per PLI, and on a thin link each IDR
(many times a P-frame) causes the loss that triggers the next PLI. So, per viewer:

- a PLI that arrives while an IDR for this viewer is still on its way (sent less than one RTT +
  one frame + its own transmission time ago) is ignored: that IDR answers it;
- forwarded PLIs are spaced at least ``interval`` apart; a PLI inside the interval is deferred to
  its end (one IDR serves all of them, none is lost). Each PLI forwarded while PLIs keep coming
  (the previous one less than two intervals earlier) doubles the interval, up to
  ``max_interval``; after ``reset_after_s`` without PLIs it is back to ``base_interval``.

The fan-out's own cool-down (``idr_min_interval``, shared by all viewers) still applies on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASE_INTERVAL_S = 0.25
MAX_INTERVAL_S = 4.0
RESET_AFTER_S = 3.0


@dataclass
class KeyframeGuard:
    base_interval: float = BASE_INTERVAL_S
    max_interval: float = MAX_INTERVAL_S
    reset_after_s: float = RESET_AFTER_S
    interval: float = BASE_INTERVAL_S
    last_forwarded: float = -1e9
    last_request: float = -1e9
    idr_sent_at: float = -1e9
    in_flight_s: float = 0.0
    counts: dict[str, int] = field(
        default_factory=lambda: {"forwarded": 0, "ignored_in_flight": 0, "deferred": 0}
    )

    def idr_sent(self, at: float, in_flight_s: float) -> None:
        """An IDR started towards this viewer at ``at``; it can take ``in_flight_s`` to arrive."""
        self.idr_sent_at, self.in_flight_s = at, in_flight_s

    def decide(self, now: float) -> float | None:
        """None: ignore this request; 0: forward it now; > 0: forward one request after that many seconds."""
        quiet = now - self.last_request
        self.last_request = now
        if quiet > self.reset_after_s:
            self.interval = self.base_interval
        if now - self.idr_sent_at < self.in_flight_s:
            self.counts["ignored_in_flight"] += 1
            return None
        wait = self.last_forwarded + self.interval - now
        if wait > 0:
            self.counts["deferred"] += 1
            return wait
        self.forwarded(now)
        return 0.0

    def forwarded(self, now: float) -> None:
        """A request for this viewer reaches the fan-out now (directly or deferred)."""
        if now - self.last_forwarded < 2 * self.interval:
            self.interval = min(self.max_interval, self.interval * 2)
        self.last_forwarded = now
        self.counts["forwarded"] += 1
