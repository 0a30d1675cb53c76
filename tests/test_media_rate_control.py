"""Per-viewer send control: the GCC-split estimate, the shared-target policy, PLI handling, pacing, RTX
budget.

Unit tests drive the parts with synthetic receiver-report / REMB sequences on a fake clock; the
last test goes through the real RTCP path (a real aiortc viewer against the in-process agent).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import aiohttp
import pytest

from device_agent.media.fanout import PacketFanout
from device_agent.media.keyframe_guard import KeyframeGuard
from device_agent.media.pacing import Pacer, RtxBudget
from device_agent.media.rate_control import START_BPS, BandwidthEstimator, choose_target
from tests.support.media import Viewer, media_config, running_agent


def _feed(
    est: BandwidthEstimator,
    losses: list[float],
    start: float = 0.0,
    every: float = 1.0,
    remb: int | None = None,
) -> float:
    t = start
    for loss in losses:
        if remb is not None:
            est.on_remb(remb)
        est.on_report(loss, t)
        t += every
    return t


def test_starts_below_typical_uplinks_and_ramps_fast_on_a_clean_link() -> None:
    est = BandwidthEstimator(min_bps=150_000, max_bps=8_000_000)
    assert 300_000 <= est.estimate == START_BPS <= 500_000
    _feed(est, [0.0] * 5, remb=5_000_000)
    assert est.estimate >= 2_000_000  # x1.5/s in the start phase: 400k -> 2M in 4 s
    assert est.ramping


def test_remb_caps_the_estimate_but_never_raises_it() -> None:
    est = BandwidthEstimator(min_bps=150_000, max_bps=8_000_000)
    est.on_remb(900_000)
    _feed(est, [0.0] * 10, remb=900_000)
    assert est.estimate == 900_000  # growth stops at the delay-based bound
    est.on_remb(5_000_000)  # a REMB jump alone does not move the loss-based state
    assert est.estimate == 900_000
    est.on_remb(300_000)
    assert est.estimate == 300_000  # min of the two


def test_loss_above_10_percent_cuts_hold_between_2_and_10_grow_slowly_below_2() -> None:
    est = BandwidthEstimator(start_bps=1_000_000, min_bps=100_000, max_bps=8_000_000)
    est.on_report(0.20, 0.0)
    assert est.estimate == 900_000  # 1 - 0.5 * 0.2
    assert not est.ramping
    est.on_report(0.20, 0.1)  # within RTT + 300 ms of the last cut: the same burst, not cut twice
    assert est.estimate == 900_000
    t = _feed(est, [0.05] * 10, start=1.0)
    assert est.estimate == 900_000  # 2..10 %: hold
    _feed(est, [0.0] * 5, start=t)
    assert 1.25 < est.estimate / 900_000 < 1.5  # ~8 %/s after the start phase, not the ramp
    _feed(est, [0.5] * 40, start=t + 10)
    assert est.estimate == 100_000  # floored at min


def test_a_link_below_the_start_rate_settles_under_it() -> None:
    """A closed loop with a 1 Mbit/s bottleneck + 5 % random loss: loss = overshoot + 5 %."""
    est = BandwidthEstimator(min_bps=150_000, max_bps=8_000_000)
    link, sent = 1_000_000, []
    for second in range(60):
        rate = est.estimate
        loss = 0.05 + max(0.0, 1 - link / rate) * 0.95
        est.on_remb(int(1.5 * link))  # Chromium's REMB on a standing queue
        est.on_report(loss, float(second))
        sent.append(rate)
    assert max(sent[10:]) <= link * 1.05


def test_choose_target_marks_far_lower_viewers_constrained() -> None:
    only = choose_target([(1, 300_000)], min_bps=100_000, max_bps=6_000_000)
    assert only.target == 300_000 and not only.constrained  # one viewer is never constrained
    pair = choose_target([(1, 300_000), (2, 3_000_000)], min_bps=100_000, max_bps=6_000_000)
    assert pair.target == 3_000_000 and pair.constrained == {1}
    close = choose_target([(1, 2_000_000), (2, 3_000_000)], min_bps=100_000, max_bps=6_000_000)
    assert close.target == 2_000_000 and not close.constrained
    most_bad = choose_target([(1, 300_000), (2, 320_000), (3, 3_000_000)], min_bps=100_000, max_bps=6_000_000)
    assert most_bad.target == 300_000 and not most_bad.constrained  # the majority sets the reference


def test_keyframe_guard_ignores_pli_while_an_idr_is_in_flight_and_backs_off() -> None:
    guard = KeyframeGuard()
    assert guard.decide(0.0) == 0.0
    guard.idr_sent(0.05, in_flight_s=0.3)
    assert guard.decide(0.2) is None  # the IDR on its way answers it
    # sustained PLIs: forwarded ones get further apart, up to the maximum
    t, forwarded = 0.4, []
    while t < 30:
        delay = guard.decide(t)
        if delay == 0:
            forwarded.append(t)
        t += 0.05
    gaps = [b - a for a, b in itertools.pairwise(forwarded)]
    assert len(forwarded) < 15 and gaps[-1] >= guard.max_interval - 0.05
    assert guard.counts["deferred"] > 100
    assert guard.decide(t + 10) == 0.0 and guard.interval == guard.base_interval  # quiet: reset


async def test_viewer_control_turns_a_pli_storm_into_few_idrs() -> None:
    from device_agent.media.viewer_control import ViewerControl

    class Enc:
        forced = 0

        def force_keyframe(self) -> None:
            self.forced += 1

        def set_bitrate(self, bps: int) -> bool:
            return True

    enc = Enc()
    fan = PacketFanout(enc, idr_min_interval=0.25)
    control = ViewerControl(fan, "v")
    control.subscribed(fan.subscribe("v"))
    before = enc.forced
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # 100 PLIs/s for 3 s
        control.on_keyframe_request("pli")
        await asyncio.sleep(0.01)
    assert enc.forced - before <= 6, enc.forced - before  # unguarded: one per 250 ms cool-down = 12
    assert control.stats()["idrs_by_cause"].get("pli", 0) == enc.forced - before
    control.close()


async def test_pacer_spreads_a_burst_at_its_rate() -> None:
    pacer = Pacer(2_000_000)
    started = time.monotonic()
    for _ in range(50):
        await pacer.wait(1200)  # 50 x 1200 B = 480 kbit: 240 ms at 2 Mbit/s
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.4, elapsed


def test_rtx_budget_refills_at_its_rate() -> None:
    now = [0.0]
    budget = RtxBudget(240_000, depth_s=0.5, clock=lambda: now[0])  # 30 kB/s, 15 kB deep
    spent = sum(budget.try_spend(1200) for _ in range(100))
    assert spent == 12
    now[0] += 0.2
    assert sum(budget.try_spend(1200) for _ in range(100)) == 5  # 6 kB in 0.2 s
    now[0] += 5.0
    assert sum(budget.try_spend(1200) for _ in range(100)) == 12  # the 15 kB cap


@pytest.mark.timeout(60)
async def test_receiver_reports_reach_the_estimator_through_the_real_rtcp_path(tmp_path: Path) -> None:
    async with running_agent(media_config(tmp_path)) as agent, aiohttp.ClientSession() as http:
        viewer = Viewer(f"http://127.0.0.1:{agent.get('media').web.port}")
        await viewer.connect(http, audio=False)
        await viewer.wait_frames(10)
        media = agent.get("media")
        session = next(iter(media.sessions.sessions.values()))
        deadline = time.monotonic() + 15
        while session.control.estimator.reports < 3 or session.control.estimator.remb is None:
            assert time.monotonic() < deadline, dict(session.feedback)
            await asyncio.sleep(0.1)
        stats = session.summary()
        # clean loopback
        assert stats["fraction_lost"] == 0.0 and stats["ramping"] and stats["rate_cuts"] == 0
        assert stats["loss_based_bps"] >= START_BPS
        assert stats["estimate_bps"] == max(150_000, min(stats["loss_based_bps"], stats["remb_bps"]))
        assert 0 < stats["rtt_est_ms"] < 50  # RTT from our sender reports' LSR/DLSR
        requested = media.fanout.requested_bitrate  # follows the budget (10 % deadband, up once a second)
        assert requested is not None and requested <= 1.1 * max(150_000, stats["video_budget_bps"])
        assert stats["keyframes_sent"] >= 1 and stats["rtx_sent"] == 0
        await viewer.close(http)


def test_loss_window_averages_over_enough_packets() -> None:
    from device_agent.media.rate_control import LossWindow

    window = LossWindow(min_packets=100, max_age_s=3.0)
    assert window.add(1000, 0, 0.0) is None  # the start
    assert window.add(1030, 4, 1.0) is None  # 30 packets, 13 %: too few to judge
    assert window.add(1110, 6, 2.0) == pytest.approx(0.055, abs=0.001)  # 6 of 110
    assert window.add(1130, 6, 5.5) == 0.0  # few packets but old enough


async def test_pacer_backlog_is_capped() -> None:
    pacer = Pacer(10_000, max_delay_s=0.1)  # 1200 B = 0.96 s at this rate
    started = time.monotonic()
    for _ in range(5):
        await pacer.wait(1200)
    assert time.monotonic() - started < 5 * 0.1 + 0.2  # not 4 x 0.96 s
