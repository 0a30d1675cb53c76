"""Alert rules over aggregates (viewers) and windows (time), with hold times and hysteresis; the
shipped default rule set and how agent.toml overrides or disables it. Table-driven."""

from __future__ import annotations

import pytest

from device_agent.config import AlertRule, ConfigError, config_from_dict
from device_agent.fleetlink.default_rules import default_rules, effective_rules
from device_agent.fleetlink.rules import RuleEngine, lookup_all
from device_agent.registry import AlertBus

QOE = "media.viewers.sessions.*.qoe"


def _sample(*rates: float | None) -> dict:
    return {"media": {"viewers": {"sessions": [{"qoe": {"freeze_rate": r}} for r in rates]}}}


def _run(rule: AlertRule, steps: list[tuple[float, dict]]) -> list[tuple[float, bool]]:
    bus = AlertBus()
    seen: list[tuple[float, bool]] = []
    now = [0.0]
    bus.subscribe(lambda a: seen.append((now[0], a.active)))
    engine = RuleEngine([rule], bus)
    for t, sample in steps:
        now[0] = t
        engine.evaluate(sample, t)
    return seen


@pytest.mark.parametrize(
    "aggregate, op, threshold, rates, raised",
    [
        ("max", ">", 5, (1, 7, 3), True),
        ("max", ">", 8, (1, 7, 3), False),
        ("min", ">", 0.5, (1, 7, 3), True),
        ("min", ">", 2, (1, 7, 3), False),
        ("median", "==", 3, (1, 7, 3), True),
        ("mean", ">", 3.6, (1, 7, 3), True),
        ("mean", ">", 3.7, (1, 7, 3), False),
        ("count", ">=", 3, (1, 7, 3), True),
        ("count", ">=", 4, (1, 7, 3), False),
        ("count", "==", 0, (), True),  # no viewers: count is 0
        ("any", ">", 5, (1, 7, 3), True),
        ("any", ">", 7, (1, 7, 3), False),
        ("all", ">", 0.5, (1, 7, 3), True),
        ("all", ">", 2, (1, 7, 3), False),
        ("max", ">", -1, (), False),  # no viewers: nothing degraded
        ("any", ">", -1, (), False),
        ("all", ">", -1, (), False),  # not vacuously true
        ("max", ">", 5, (None, 7), True),  # a viewer without a report yet is skipped
    ],
)
def test_aggregates(aggregate: str, op: str, threshold: float, rates: tuple, raised: bool) -> None:
    rule = AlertRule(code="r", metric=f"{QOE}.freeze_rate", aggregate=aggregate, op=op, threshold=threshold)
    assert bool(_run(rule, [(0.0, _sample(*rates))])) == raised


def test_missing_section_keeps_state_and_no_viewers_clears() -> None:
    rule = AlertRule(code="r", metric=f"{QOE}.freeze_rate", aggregate="max", op=">", threshold=5, hold_s=10)
    seen = _run(
        rule,
        [
            (0, _sample(9)),
            (10, _sample(9)),  # raised after the hold
            (20, {}),
            (40, {"media": {}}),  # media provider gone: unchanged
            (50, _sample()),
            (55, _sample()),
            (60, _sample()),
        ],
    )  # viewers left: clears after the hold
    assert seen == [(10, True), (60, False)]


@pytest.mark.parametrize(
    "window, values, expect",
    [
        # one sample every 5 s; window 20 s; threshold > 5
        ("mean", [10, 10, 10, 10, 10], [(20, True)]),  # raised once watched for a whole window
        (
            "mean",
            [0, 0, 0, 0, 30, 0, 0, 0, 0, 0],
            [(20, True), (45, False)],
        ),  # one spike: mean 6 > 5 while in the window
        ("mean", [0, 0, 0, 0, 20, 0, 0, 0], []),  # mean 4 over any 20 s: nothing
        (
            "max",
            [0, 0, 0, 0, 20, 0, 0, 0, 0, 0],
            [(20, True), (45, False)],
        ),  # the spike (t=20) leaves the window at 45
        (
            "min",
            [9, 9, 9, 9, 9, 2, 9, 9, 9, 9, 9],
            [(20, True), (25, False), (50, True)],
        ),  # the dip (t=25) leaves at 50
        ("increase", [0, 1, 2, 3, 9, 9, 9, 9, 9, 9, 9], [(20, True), (40, False)]),  # a counter jumping by 6
    ],
)
def test_windows(window: str, values: list[float], expect: list) -> None:
    rule = AlertRule(code="w", metric="x.v", window_s=20, window=window, op=">", threshold=5)
    assert _run(rule, [(5.0 * i, {"x": {"v": v}}) for i, v in enumerate(values)]) == expect


def test_window_restarts_after_a_gap_in_matches() -> None:
    rule = AlertRule(code="w", metric=f"{QOE}.freeze_rate", aggregate="max", window_s=20, op=">", threshold=5)
    steps = [
        (0, _sample(9)),
        (5, _sample(9)),
        (10, _sample()),
        (15, _sample(9)),
        (20, _sample(9)),
        (30, _sample(9)),
        (35, _sample(9)),
    ]
    assert _run(rule, steps) == [(35, True)]  # watched again from 15


@pytest.mark.parametrize(
    "values, expect",
    [
        # threshold 5, clear below 2, hold 10 s; one sample per 5 s
        ([9, 9, 9], [(10, True)]),
        ([9, 9, 1, 9, 9, 9], [(25, True)]),  # the dip resets the raise hold
        ([9, 9, 9, 4, 4, 4, 4], [(10, True)]),  # between 2 and 5: stays raised (hysteresis)
        ([9, 9, 9, 1, 1, 1], [(10, True), (25, False)]),
        (
            [9, 9, 9, 1, 3, 1, 1, 1],
            [(10, True), (35, False)],
        ),  # a value back above the clear level resets the clear hold
    ],
)
def test_hold_and_hysteresis_with_an_aggregate(values: list[float], expect: list) -> None:
    rule = AlertRule(
        code="h",
        metric=f"{QOE}.freeze_rate",
        aggregate="max",
        op=">",
        threshold=5,
        clear_threshold=2,
        hold_s=10,
    )
    assert _run(rule, [(5.0 * i, _sample(v, 0)) for i, v in enumerate(values)]) == expect


def test_lookup_all() -> None:
    sample = {"a": [{"b": 1}, {"b": 2}, {"c": 3}], "d": {"x": {"b": 4}, "y": {"b": 5}}}
    assert lookup_all(sample, "a.*.b") == [1, 2]
    assert lookup_all(sample, "d.*.b") == [4, 5]
    assert lookup_all(sample, "a.*") == [{"b": 1}, {"b": 2}, {"c": 3}]
    assert lookup_all(sample, "z.*.b") is None and lookup_all(sample, "a.0.b") == [1]


@pytest.mark.parametrize(
    "rule, error",
    [
        ({"metric": f"{QOE}.fps"}, "aggregate"),  # a wildcard needs an aggregate
        ({"metric": "system.cpu_pct", "aggregate": "max"}, "aggregate"),  # and only a wildcard takes one
        ({"metric": f"{QOE}.fps", "aggregate": "sum"}, "aggregate"),
        ({"metric": f"{QOE}.fps", "aggregate": "any", "window_s": 10}, "window_s"),
        ({"metric": "x.y", "window_s": 10, "window": "p95"}, "window"),
        ({"metric": "x.y", "window_s": -1}, "window_s"),
    ],
)
def test_rule_validation(rule: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config_from_dict({"alerts": [{"code": "c", **rule}]})


def test_defaults_ship_and_are_overridden_or_disabled() -> None:
    cfg = config_from_dict({"camera": {"fps": 24}})
    codes = [r.code for r in effective_rules(cfg)]
    assert codes == [r.code for r in default_rules(cfg)]
    assert {
        "viewers_no_frames",
        "crash_loop",
        "freeze_rate_high",
        "fps_low",
        "av_sync_early",
        "av_sync_late",
        "loss_high",
        "freeze_long",
        "viewer_connect_failed",
        "audio_xrun_burst",
    } <= set(codes)
    fps_low = next(r for r in effective_rules(cfg) if r.code == "fps_low")
    # half the target, hysteresis
    assert fps_low.threshold == 12 and fps_low.clear_threshold > fps_low.threshold
    for rule in default_rules(cfg):
        rule.validate(rule.code)
        assert rule.severity in ("P1", "P2", "P3") and rule.message

    cfg = config_from_dict(
        {
            "alert_defaults": {"disable": ["fps_low", "loss_high"]},
            "alerts": [
                {
                    "code": "freeze_rate_high",
                    "metric": f"{QOE}.freeze_rate",
                    "aggregate": "max",
                    "op": ">",
                    "threshold": 10.0,
                    "severity": "P3",
                },
                {"code": "hot", "metric": "system.temperature_c", "threshold": 80.0},
            ],
        }
    )
    rules = {r.code: r for r in effective_rules(cfg)}
    assert "fps_low" not in rules and "loss_high" not in rules
    assert rules["freeze_rate_high"].threshold == 10.0 and rules["freeze_rate_high"].severity == "P3"
    assert list(rules)[-1] == "hot"
    assert effective_rules(config_from_dict({"alert_defaults": {"enabled": False}})) == []


def test_default_rules_on_real_qoe_shapes() -> None:
    """The defaults read the keys the media provider really produces (a typo would never fire)."""
    cfg = config_from_dict({})
    bus = AlertBus()
    raised: list[str] = []
    bus.subscribe(lambda a: a.active and raised.append(a.code))
    engine = RuleEngine(effective_rules(cfg), bus)
    bad = {
        "rendered_fps": 5.0,
        "freeze_rate": 40.0,
        "stall_ms": 15_000,
        "av_sync_ms": 300.0,
        "loss_pct": 20.0,
        "freeze_longest_ms": 5000,
    }
    for t in range(0, 121, 5):
        sample = {
            "media": {
                "viewers": {"failed_connects_10min": 1, "sessions": [{"qoe": bad}]},
                "audio": {"source": {"xruns": t}},
            },
            "agent": {"starts_10min": 4},
        }
        engine.evaluate(sample, float(t))
    assert set(raised) == {
        "viewers_no_frames",
        "crash_loop",
        "freeze_rate_high",
        "fps_low",
        "av_sync_early",
        "loss_high",
        "freeze_long",
        "viewer_connect_failed",
        "audio_xrun_burst",
    }


def test_start_history_counts_recent_starts_and_survives_a_bad_file(tmp_path) -> None:
    from device_agent.health.starts import StartHistory

    path = tmp_path / "agent-starts.json"
    now = [1000.0]
    for t in (0.0, 2500.0, 4000.0, 4500.0, 4550.0):
        now[0] = 1000.0 + t
        history = StartHistory(path, clock=lambda: now[0]).record()
    assert history() == {"boot": "", "starts_10min": 3, "starts_1h": 4}
    path.write_text("{not json")
    assert StartHistory(path, clock=lambda: now[0]).record()()["starts_10min"] == 1


def test_encoder_output_qos() -> None:
    from device_agent.media.source_qos import EncoderOutput

    out = EncoderOutput()
    assert out.stats() == {
        "output_fps": None,
        "output_interval_jitter_ms": None,
        "capture_to_output_p50_ms": None,
        "capture_to_output_p95_ms": None,
    }
    t = 100.0
    for i in range(61):  # 30 fps with every 10th unit 20 ms late; 5 ms encode, the late ones 25 ms
        late = 0.020 if i % 10 == 5 else 0.0
        out.add(t + i / 30 + late, t + i / 30 - 0.005)
    s = out.stats()
    assert 29 <= s["output_fps"] <= 31 and s["output_interval_jitter_ms"] > 3
    assert s["capture_to_output_p50_ms"] == 5.0 and s["capture_to_output_p95_ms"] == 25.0
