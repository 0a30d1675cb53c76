"""Encoding layers: one encoding per layer, each viewer on the layer its budget fits.

Layer 0 is the camera's full-size encoding; layer 1 (``[encoder] layers = 2``) a lower one of the
same frames (``low_layer_scale`` of the size), with its own ``PacketFanout``: its keyframes and
bitrate are its own. Each fan-out sets its encoder's target from its own viewers
(``rate_control.choose_target``), so the low layer follows the viewers on it and the high layer
the others.

``LayerPolicy`` says which layer a viewer should be on, from every viewer's video budget: a
viewer that ``choose_target`` marks constrained (below ``rate_control.CONSTRAINED_RATIO`` x the
reference, the upper median of the budgets) goes down at once. A viewer on the low layer cannot
show that it could carry more: its receiver's delay-based estimate (REMB) stays within ~1.5x
what it receives. So it *fits* when its budget is at least ``UP_RATIO`` x the reference, or at
least ``UP_HEADROOM`` x the low layer's ceiling (it is past what the low layer can use, without
loss); after fitting for ``hold`` (and ``hold`` after its last switch) it goes up on probation:
for ``PROBE_S`` it is not sent down (the high fan-out still does not let it lower the target:
it is constrained there), so its estimate can grow on the bigger stream. Sent down again right
after a probe, its ``hold`` doubles (from ``HOLD_S`` up to ``MAX_HOLD_S``); staying up resets it.
The switch itself is the viewer's track's (``tracks.FanoutVideoTrack.switch_to``): it subscribes
to the target layer, which is asked for an IDR, and leaves the old one when that IDR arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from device_agent.media.fanout import PacketFanout
from device_agent.media.rate_control import choose_target

UP_RATIO = 0.75  # back up once the budget is at least this share of the reference ...
UP_HEADROOM = 1.1  # ... or this much above the low layer's ceiling ...
HOLD_S = 4.0  # ... for this long, and this long after the last switch (doubling after a failed probe)
MAX_HOLD_S = 60.0
PROBE_S = 8.0  # after going up, not sent down for this long


@dataclass
class _Viewer:
    budget: int
    layer: int = 0
    switched_at: float = -1e9
    fits_since: float | None = None
    hold: float = HOLD_S


@dataclass
class LayerPolicy:
    """Which layer each viewer (by key) should be on; see the module docstring."""

    layers: int = 2
    up_ratio: float = UP_RATIO
    hold_s: float = HOLD_S
    probe_s: float = PROBE_S
    max_hold_s: float = MAX_HOLD_S
    clock: Callable[[], float] = time.monotonic
    _viewers: dict[str, _Viewer] = field(default_factory=dict)

    def report(self, key: str, budget: int, low_ceiling: int | None = None) -> int:
        """``key``'s current video budget (bps); returns the layer it should be on now.

        ``low_ceiling``: the low layer's maximum bitrate (a budget past it fits the high layer)."""
        viewer = self._viewers.setdefault(key, _Viewer(budget))
        viewer.budget = budget
        if self.layers < 2:
            return 0
        now = self.clock()
        budgets = [(k, v.budget) for k, v in self._viewers.items()]
        decision = choose_target(list(enumerate(b for _, b in budgets)), min_bps=1, max_bps=1 << 40)
        ordered = sorted(b for _, b in budgets)
        reference = ordered[len(ordered) // 2]
        constrained = {budgets[i][0] for i in decision.constrained}
        if viewer.layer == 0:
            probing = now - viewer.switched_at < self.probe_s
            if key in constrained and not probing:
                failed = now - viewer.switched_at < 2 * self.probe_s
                viewer.hold = min(self.max_hold_s, viewer.hold * 2) if failed else self.hold_s
                self._switch(viewer, 1, now)
            return viewer.layer
        fits = budget >= self.up_ratio * reference or (
            low_ceiling is not None and budget >= UP_HEADROOM * low_ceiling
        )
        if not fits:
            viewer.fits_since = None
        elif viewer.fits_since is None:
            viewer.fits_since = now
        elif now - viewer.fits_since >= viewer.hold and now - viewer.switched_at >= viewer.hold:
            self._switch(viewer, 0, now)
        return viewer.layer

    def _switch(self, viewer: _Viewer, layer: int, now: float) -> None:
        viewer.layer, viewer.switched_at, viewer.fits_since = layer, now, None

    def layer_of(self, key: str) -> int:
        viewer = self._viewers.get(key)
        return 0 if viewer is None else viewer.layer

    def forget(self, key: str) -> None:
        self._viewers.pop(key, None)


@dataclass
class LayerSet:
    """The fan-outs, high layer first, and the policy that puts viewers on them."""

    fanouts: list[PacketFanout]
    policy: LayerPolicy

    def fanout(self, layer: int) -> PacketFanout:
        return self.fanouts[min(layer, len(self.fanouts) - 1)]

    def report(self, key: str, budget: int) -> PacketFanout:
        """``key``'s video budget; returns the fan-out of the layer it should be on now."""
        return self.fanout(self.policy.report(key, budget, low_ceiling=self.fanouts[-1].max_bitrate))

    def stats(self) -> list[dict[str, object]]:
        return [fan.stats() for fan in self.fanouts]
