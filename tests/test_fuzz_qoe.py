"""Fuzz target "qoe": a viewer's receiver reports are untrusted. Arbitrary bytes, arbitrary JSON and
schema-shaped reports with hostile values never raise out of the parser or the session's figures,
and every figure stays finite and inside its physical range."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_agent.media.qoe import REPORT_FIELDS, QoeReportError, ViewerQoe, parse_report
from tests.support.fuzzing import fuzz_example, fuzz_settings

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
hostile_numbers = st.one_of(
    st.floats(), st.integers(-(2**80), 2**80), st.sampled_from([1e308, -1e308, 0, -0.0])
)
shaped = st.dictionaries(
    st.sampled_from([*REPORT_FIELDS, "client", "x"]),
    st.one_of(hostile_numbers, json_values),
    max_size=len(REPORT_FIELDS) + 2,
)
messages = st.one_of(
    st.binary(max_size=3000),
    json_values.map(lambda v: json.dumps(v)),
    shaped.map(lambda d: json.dumps(d)),  # Python's json writes NaN/Infinity, which it also reads
    st.text(max_size=300),
)

RANGES = {
    "rendered_fps": (0, 1000),
    "freeze_rate": (0, 100),
    "loss_pct": (0, 100),
    "audio_concealed_pct": (0, 100),
    "jitter_buffer_ms": (0, 1e5),
    "av_sync_ms": (-1e5, 1e5),
    "e2e_delay_ms": (0, 1e6),
    "received_kbps": (0, 1e7),
    "stall_ms": (0, 1e13),
    "width": (0, 16384),
    "height": (0, 16384),
}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.fuzz
@fuzz_settings(examples=150)
@given(
    batch=st.lists(st.tuples(messages, st.floats(0.0, 5.0)), min_size=1, max_size=8),
    rtt=st.one_of(st.none(), st.floats(0, 1e5)),
    sender=st.one_of(st.none(), st.floats(0, 1e4)),
)
def test_reports_never_raise_and_figures_stay_in_range(batch, rtt, sender) -> None:
    with fuzz_example("qoe"):
        clock = Clock()
        qoe = ViewerQoe(clock=clock, wall=lambda: 1.7e9 + clock.t)
        for message, step in batch:
            clock.t += step
            try:
                report = parse_report(message)
            except QoeReportError:
                pass
            else:
                for key, value in report.values.items():
                    low, high = REPORT_FIELDS[key]
                    assert math.isfinite(value) and low <= value <= high, (key, value)
            qoe.accept(message)
        figures = qoe.figures(rtt, sender)
        json.dumps(figures, allow_nan=False)  # finite, serialisable
        for key, (low, high) in RANGES.items():
            value = figures[key]
            assert value is None or low <= value <= high, (key, value)
        summary = qoe.summary()
        json.dumps(summary, allow_nan=False)
