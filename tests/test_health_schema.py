"""One media schema for the real provider and the simulator, and a simulator whose faults trip the
same default alert rules as real devices."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp
import pytest

from device_agent.config import config_from_dict
from device_agent.fleetlink.default_rules import effective_rules
from device_agent.fleetlink.rules import RuleEngine
from device_agent.media.health_schema import MEDIA, key_paths, media_section, problems
from device_agent.registry import AlertBus
from fleet.service import FleetService
from fleet.sim_media import FAULTS, SimulatedMedia, assign_faults
from fleet.simulate import Simulation
from fleet.store import Store
from tests.support.media import Viewer, media_config, running_agent
from tests.support.mosquitto import Mosquitto


async def _real_media(tmp_path: Path) -> dict:
    config = media_config(tmp_path, camera={"width": 320, "height": 180, "fps": 30})
    async with running_agent(config) as agent, aiohttp.ClientSession() as http:
        viewer = Viewer(f"http://127.0.0.1:{agent.get('media').web.port}")
        await viewer.connect(http, qoe_interval_s=1.0)
        await viewer.wait_frames(30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            media = agent.health.sample()["media"]
            sessions = media["viewers"]["sessions"]
            if sessions and sessions[0]["qoe"]["reports"] >= 2 and sessions[0]["rtt_ms"] is not None:
                break
            await asyncio.sleep(0.3)
        await viewer.close(http)
    return media


async def test_real_provider_and_simulator_have_the_same_keys(tmp_path: Path) -> None:
    real = await _real_media(tmp_path)
    sim = SimulatedMedia(random.Random(3), step_s=2.0)
    sim()
    simulated = sim()
    assert problems(real) == [], problems(real)
    assert problems(simulated) == [], problems(simulated)
    only_real = key_paths(real) - key_paths(simulated)
    only_sim = key_paths(simulated) - key_paths(real)
    assert not only_real and not only_sim, (sorted(only_real), sorted(only_sim))
    # the simulator fills the figures people and rules read (no None where a real device has a number)
    sq, rq = simulated["viewers"]["sessions"][0]["qoe"], real["viewers"]["sessions"][0]["qoe"]
    for key, value in rq.items():
        if value is not None:
            assert sq[key] is not None, key


def test_schema_catches_a_drifting_producer() -> None:
    good = SimulatedMedia(random.Random(1), step_s=2.0)()
    bad = {
        **good,
        "viewers": {
            **good["viewers"],
            "sessions": [{k: v for k, v in good["viewers"]["sessions"][0].items() if k != "rtt_ms"}],
        },
    }
    bad["viewers"]["sessions"][0]["qoe"] = {**bad["viewers"]["sessions"][0]["qoe"], "fps_jitter_ms": 1.0}
    found = problems(bad)
    assert "media.viewers.sessions.0.rtt_ms: missing" in found
    assert "media.viewers.sessions.0.qoe.fps_jitter_ms: not in the schema" in found
    assert problems({**good, "extra": 1}) == ["media.extra: not in the schema"]
    filled = media_section({"encoder": {"backend": "x"}})  # a producer without a figure still has the key
    assert filled["encoder"] == {"backend": "x", "reason": None} and set(filled) == set(MEDIA.keys)


EXPECTED = {  # fault -> default rules it must trip (and nothing it must not)
    "freeze": {"freeze_rate_high", "freeze_long"},
    "lossy": {"loss_high", "freeze_rate_high"},  # 18 fps of 30: above half the target
    "camera": {"viewers_no_frames", "fps_low", "freeze_long"},
    "crashloop": {"crash_loop"},
    "avdrift": {"av_sync_early"},
    None: set(),
}


@pytest.mark.parametrize("fault", [*FAULTS, None])
def test_simulated_faults_trip_the_default_rules(fault: str | None) -> None:
    cfg = config_from_dict({})
    bus = AlertBus()
    raised: set[str] = set()
    bus.subscribe(lambda a: a.active and raised.add(a.code))
    engine = RuleEngine(effective_rules(cfg), bus)
    media = SimulatedMedia(random.Random(7), step_s=5.0, faults=frozenset({fault} if fault else ()))
    starts = 4 if fault == "crashloop" else 1
    for i in range(1, 40):  # 195 s of simulated time, one sample per 5 s
        sample = {"media": media(), "agent": {"starts_10min": starts}}
        assert problems(sample["media"]) == []
        engine.evaluate(sample, 5.0 * i)
    raised.discard("audio_xrun_burst")  # random xruns are not a fault
    assert raised == EXPECTED[fault], raised


def test_fault_assignment() -> None:
    faults = assign_faults(100, {"freeze": 0.1, "camera": 0.05}, seed=1)
    assert sum("freeze" in f for f in faults) == 10 and sum("camera" in f for f in faults) == 5
    assert faults == assign_faults(100, {"freeze": 0.1, "camera": 0.05}, seed=1)
    with pytest.raises(ValueError, match="unknown fault"):
        assign_faults(10, {"meteor": 0.1})


async def test_simulated_fleet_with_faults_reaches_the_fleet_store(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    store = Store(str(tmp_path / "fleet.db"))
    worker = FleetService(mosquitto.url, store, rule_interval_s=3600)
    sim = Simulation(
        mosquitto.url,
        3,
        tmp_path / "sim",
        interval_s=0.5,
        faults={"crashloop": 1 / 3, "camera": 1 / 3},
        fault_seed=2,
    )
    await worker.start()
    try:
        await sim.start(spread_s=0.1)
        deadline = time.monotonic() + 20
        want = {
            f"sim-{i:05d}": {"crash_loop" if "crashloop" in f else "camera_unavailable"}
            for i, f in enumerate(sim.faults)
            if f
        }
        while time.monotonic() < deadline:
            got: dict[str, set[str]] = {}
            for a in store.list_alerts():
                got.setdefault(a["device"], set()).add(a["code"])
            if all(want[d] <= got.get(d, set()) for d in want):
                break
            await asyncio.sleep(0.2)
        assert all(want[d] <= got.get(d, set()) for d in want), (want, got)
        healthy = [f"sim-{i:05d}" for i, f in enumerate(sim.faults) if not f]
        assert healthy and not any(d in got for d in healthy), got
        sample = store.device(healthy[0])["health"]["media"]
        assert problems(sample) == [] and sample["viewers"]["sessions"][0]["qoe"]["rendered_fps"] > 25
    finally:
        await sim.stop()
        await worker.stop()
