"""A record per viewer session: the MOS-like score, and a real session's record going agent ->
spool -> broker -> fleet store -> ``fleetctl sessions``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from device_agent.media.session_record import EVENT_TYPE, mos_score, r_to_mos
from fleet.service import FleetService
from fleet.store import Store
from tests.support.media import Viewer, media_config, running_agent
from tests.support.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "figures, low, high",
    [
        ((0.0, 0.0, 30.0, 30.0, 40.0, 0.0), 4.4, 4.5),  # clean
        ((5.0, 1.0, 30.0, 30.0, 40.0, 0.0), 3.6, 4.1),  # 5 % of the time frozen
        ((0.0, 0.0, 10.0, 30.0, 40.0, 0.0), 3.5, 4.0),  # a third of the frame rate
        ((0.0, 0.0, 30.0, 30.0, 600.0, 0.0), 1.5, 3.0),  # 600 ms end to end
        ((20.0, 10.0, 12.0, 30.0, 400.0, 10.0), 1.0, 1.5),  # everything bad
    ],
)
def test_mos_like_score(figures: tuple, low: float, high: float) -> None:
    score = mos_score(*figures)
    assert low <= score <= high, score
    assert mos_score(None, None, None, 30.0, None, None) is None
    assert r_to_mos(-5) == 1.0 and r_to_mos(120) == 4.5
    assert all(r_to_mos(r) <= r_to_mos(r + 1) for r in range(0, 100))  # monotonic


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_ended_session_is_recorded_by_the_fleet(tmp_path: Path, mosquitto: Mosquitto) -> None:
    store = Store(str(tmp_path / "fleet.db"))
    worker = FleetService(mosquitto.url, store, rule_interval_s=3600)
    config = media_config(
        tmp_path,
        camera={"width": 320, "height": 180, "fps": 30},
        mqtt={"url": mosquitto.url, "telemetry_interval_s": 5.0},
    )
    await worker.start()
    try:
        async with running_agent(config) as agent, aiohttp.ClientSession() as http:
            events: list[dict] = []
            agent.events.subscribe(lambda e: e["type"] == EVENT_TYPE and events.append(e))
            viewer = Viewer(f"http://127.0.0.1:{agent.get('media').web.port}")
            await viewer.connect(http, qoe_interval_s=1.0)
            await viewer.wait_frames(30)
            await asyncio.sleep(4.0)
            await viewer.close(http)
            await _until(lambda: events, 5, "the session record")
            await _until(lambda: store.sessions("test-cam"), 15, "the record in the fleet store")
    finally:
        await worker.stop()
    record = events[0]
    stored = store.sessions("test-cam")[0]
    assert stored["session"] == record["session"] and stored["mos"] == record["mos"], stored
    assert record["reason"] == "deleted by viewer" and record["transport"] == "whep", record
    assert record["connected"] and record["client"] == "aiortc" and record["reports"] >= 3, record
    assert 4.0 <= record["duration_s"] <= 15.0
    assert record["ttff_ms"] is not None and record["ttff_ms"] < 3000
    assert 24 <= record["fps_mean"] <= 36 and record["fps_min"] >= 15, record
    # a clean link: no loss; at most one short stall (CI once saw the aiortc viewer stall ~1 s of
    # this 5 s session: freeze_rate 19 %, under investigation, see docs/performance.md)
    assert record["freeze_rate"] < 25.0 and record["loss_pct"] == 0.0 and record["kbps"] > 20, record
    assert record["rtt_ms"] is not None and record["av_sync_p95_ms"] is not None
    assert 4.2 <= record["mos"] <= 4.5, record
    out = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "sessions", "test-cam", "--db", str(tmp_path / "fleet.db")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert "MOS" in header and "FPS_MEAN" in header and "aiortc" in row, out.stdout
    as_json = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet.cli",
            "sessions",
            "test-cam",
            "--json",
            "--db",
            str(tmp_path / "fleet.db"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert json.loads(as_json.stdout)[0]["session"] == record["session"]
