"""Viewers report what they experience: the report parser, the per-session figures, and an aiortc
viewer's reports reaching /api/stats and telemetry through a real agent."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import aiohttp
import pytest

from device_agent.media.qoe import MAX_REPORT_BYTES, FreezeCounter, QoeReportError, ViewerQoe, parse_report
from tests.support.media import Viewer, media_config, running_agent

QOE_KEYS = {
    "rendered_fps",
    "freeze_count",
    "freeze_ms",
    "freeze_rate",
    "jitter_buffer_ms",
    "av_sync_ms",
    "e2e_delay_ms",
    "received_kbps",
    "packets_lost",
    "reported_at",
}


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _qoe() -> tuple[ViewerQoe, FakeClock]:
    clock = FakeClock()
    return ViewerQoe(clock=clock, wall=lambda: 1_700_000_000.0 + clock.t), clock


def test_parser_keeps_known_finite_in_range_fields_only() -> None:
    report = parse_report(
        json.dumps(
            {
                "v": 1,
                "fps": 29.5,
                "freezes": 2,
                "w": 99999,
                "lost": -3,
                "extra": {"a": 1},
                "kbps": True,
                "client": "chromium",
                "jb_ms": "12",
            }
        )
    )
    assert report.values == {"v": 1.0, "fps": 29.5, "freezes": 2.0}
    assert report.client == "chromium" and report.dropped == 4  # w, lost out of range; kbps bool; jb_ms str
    for bad in (b"", b"[1]", b"nul", b"\xff\xfe", b'"x"', b"1e999", b"{" * 5000):
        with pytest.raises(QoeReportError):
            parse_report(bad)
    with pytest.raises(QoeReportError):
        parse_report(b"{" + b" " * MAX_REPORT_BYTES + b"}")
    assert parse_report('{"fps": 1e999, "av_ms": NaN}').values == {}  # Python's json reads both: dropped


def test_rates_come_from_deltas_on_the_agents_clock_and_stay_physical() -> None:
    qoe, clock = _qoe()
    assert qoe.accept('{"freeze_ms": 0, "freezes": 0, "recv": 0, "lost": 0, "fps": 30}')
    clock.t += 2.0
    assert qoe.accept('{"freeze_ms": 600, "freezes": 1, "recv": 950, "lost": 50, "fps": 20}')
    fig = qoe.figures()
    assert fig["freeze_rate"] == 30.0 and fig["loss_pct"] == 5.0 and fig["freeze_count"] == 1
    clock.t += 2.0  # a lying viewer: an hour frozen in two seconds, counters going back
    assert qoe.accept('{"freeze_ms": 3600000, "freezes": 0, "recv": 10, "lost": 0}')
    assert qoe.figures()["freeze_rate"] == 100.0
    clock.t += 2.0
    assert qoe.accept('{"freeze_ms": 10, "recv": 5, "lost": 0}')  # went back: a reset, not negative
    assert qoe.figures()["freeze_rate"] == 0.0 and qoe.figures()["loss_pct"] == 0.0
    assert set(qoe.figures()) >= QOE_KEYS


def test_rate_limit_and_one_channel() -> None:
    qoe, clock = _qoe()
    accepted = 0
    for _ in range(100):  # a flood of 100 messages in one second: two get through
        accepted += qoe.accept('{"fps": 30}')
        clock.t += 0.01
    assert accepted == 2 and qoe.rejected["rate"] == 98 and qoe.reports == 2

    class Channel:
        label = "qoe"
        closed = False

        def on(self, *_a) -> None: ...

        def close(self) -> None:
            self.closed = True

    from device_agent.media.qoe import accept_channel

    first, second, other = Channel(), Channel(), Channel()
    other.label = "chat"
    assert accept_channel(qoe, first) and not first.closed
    assert not accept_channel(qoe, second) and second.closed
    assert not accept_channel(qoe, other) and other.closed


@pytest.mark.parametrize(
    "times, freezes, frozen",
    [
        ([i / 30 for i in range(60)], 0, 0.0),  # clean 30 fps
        (
            [i / 30 for i in range(30)] + [1.0 + 0.6 + i / 30 for i in range(30)],
            1,
            0.6 + 1 / 30,
        ),  # one 633 ms gap
        ([i / 3 for i in range(10)], 0, 0.0),  # 3 fps slideshow: not a freeze by definition
        ([i / 30 for i in range(30)] + [0.967 + 0.4], 0, 0.0),  # 400 ms: under the threshold
    ],
)
def test_freeze_definition(times: list[float], freezes: int, frozen: float) -> None:
    counter = FreezeCounter()
    for t in times:
        counter.frame(t)
    assert counter.freezes == freezes and math.isclose(counter.frozen_s, frozen, abs_tol=1e-6)


def _base(agent) -> str:
    return f"http://127.0.0.1:{agent.get('media').web.port}"


async def test_aiortc_viewer_reports_reach_api_stats_and_telemetry(tmp_path: Path) -> None:
    config = media_config(tmp_path, camera={"width": 320, "height": 180, "fps": 30})
    async with running_agent(config) as agent, aiohttp.ClientSession() as http:
        viewer = Viewer(_base(agent))
        await viewer.connect(http, qoe_interval_s=1.0)
        await viewer.wait_frames(30)
        deadline = time.monotonic() + 15
        qoe: dict = {}
        while time.monotonic() < deadline:
            async with http.get(f"{_base(agent)}/api/stats") as resp:
                stats = await resp.json()
            qoe = stats["viewers"]["sessions"][0]["qoe"]
            if (
                (qoe["reports"] or 0) >= 4
                and qoe["av_sync_ms"] is not None
                and qoe["e2e_delay_ms"] is not None
            ):
                break
            await asyncio.sleep(0.5)
        assert set(qoe) >= QOE_KEYS, qoe
        assert qoe["client"] == "aiortc" and qoe["rejected"] == 0, (
            qoe,
            dict(
                agent.get("media")
                .sessions.sessions[next(iter(agent.get("media").sessions.sessions))]
                .qoe.rejected
            ),
            viewer.qoe.sent_reports,
        )
        assert 24 <= qoe["rendered_fps"] <= 36, qoe  # a clean loopback link at 30 fps
        assert qoe["freeze_count"] == 0 and qoe["freeze_rate"] == 0.0
        assert qoe["packets_lost"] == 0 and qoe["received_kbps"] > 20
        assert qoe["width"] is None  # aiortc reports no resolution (the page does)
        assert abs(qoe["av_sync_ms"]) < 200, qoe  # same clock, same machine
        assert 0 <= qoe["e2e_delay_ms"] < 500, qoe
        assert qoe["reported_at"] == pytest.approx(time.time(), abs=5)
        # the health sample (what telemetry carries) has the same object
        sample = agent.health.sample()
        assert set(sample["media"]["viewers"]["sessions"][0]["qoe"]) >= QOE_KEYS
        per_s = viewer.qoe.sent_bytes / max(1, viewer.qoe.sent_reports) / 1.0
        assert viewer.qoe.sent_bytes / viewer.qoe.sent_reports < 400, per_s  # compact: bytes per report
        await viewer.close(http)
