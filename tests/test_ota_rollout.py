"""Rollout planner: canary, batches (constant and exponential), abort threshold, timeouts."""

from __future__ import annotations

import json

import pytest

from fleet.ota.rollout import Policy, Rollout


def _devices(n: int) -> list[str]:
    return [f"dev-{i:03d}" for i in range(n)]


def _succeed(r: Rollout, wave: list[str], now: float) -> None:
    for d in wave:
        r.report(d, "download", now, percent=50.0)
        r.report(d, "committed", now, version=r.version)


def test_canary_then_constant_batches_to_completion() -> None:
    r = Rollout("2.0.0", _devices(23), Policy(canary=2, batch_size=10))
    sizes = []
    now = 0.0
    while not r.finished:
        wave = r.next_wave(now)
        assert r.next_wave(now) == []  # never two waves at once
        if not wave:
            break
        sizes.append(len(wave))
        _succeed(r, wave, now)
        now += 1
    assert sizes == [2, 10, 10, 1]
    assert r.status == "completed" and r.counts()["succeeded"] == 23


def test_exponential_growth() -> None:
    r = Rollout("2.0.0", _devices(40), Policy(canary=1, batch_size=2, growth=2.0))
    sizes = []
    while wave := r.next_wave(0):
        sizes.append(len(wave))
        _succeed(r, wave, 0)
    assert sizes == [1, 2, 4, 8, 16, 9]


def test_failed_canary_halts_and_skips_the_rest() -> None:
    r = Rollout("2.0.0", _devices(10), Policy(canary=1, batch_size=5, max_failure_rate=0.5))
    (canary,) = r.next_wave(0)
    r.report(canary, "rolled_back", 1, version="2.0.0", reason="crash loop: 3 starts")
    assert r.status == "halted" and "canary" in r.reason and "crash loop" in r.reason
    assert r.next_wave(2) == [] and r.counts()["skipped"] == 9


def test_failure_rate_threshold_halts_mid_rollout() -> None:
    r = Rollout("2.0.0", _devices(30), Policy(canary=1, batch_size=10, max_failure_rate=0.2, min_executed=5))
    _succeed(r, r.next_wave(0), 0)
    wave = r.next_wave(1)
    for d in wave[:7]:
        r.report(d, "committed", 2, version="2.0.0")
    assert r.status == "running"  # 0 failed of 8
    r.report(wave[7], "failed", 3, version="2.0.0", reason="bad_digest")
    assert r.status == "running"  # 1/9 = 11 %
    r.report(wave[8], "rolled_back", 3, version="2.0.0")
    assert r.status == "running"  # 2/10 = 20 %, not above
    r.report(wave[9], "rolled_back", 3, version="2.0.0")
    assert r.status == "halted" and "3/11" in r.reason
    assert r.counts()["skipped"] == 19


def test_in_progress_timeout_counts_as_failure() -> None:
    r = Rollout(
        "2.0.0", _devices(3), Policy(canary=0, batch_size=3, max_failure_rate=0.5, in_progress_timeout_s=60)
    )
    wave = r.next_wave(0)
    r.report(wave[0], "committed", 10, version="2.0.0")
    r.report(wave[1], "committed", 10, version="2.0.0")
    r.report(wave[2], "pip", 10)
    r.tick(59)
    assert r.per_device[wave[2]].state == "in_progress"
    r.tick(61)
    st = r.per_device[wave[2]]
    assert st.state == "timed_out" and "last phase pip" in st.reason
    assert r.status == "completed"  # 1/3 is below 50 %


def test_reports_for_other_versions_and_unknown_devices_are_ignored() -> None:
    r = Rollout("2.0.0", _devices(2), Policy(canary=0, batch_size=2))
    wave = r.next_wave(0)
    r.report(wave[0], "rolled_back", 1, version="1.9.0")  # a late report of an older update
    r.report("stranger", "committed", 1, version="2.0.0")
    assert r.per_device[wave[0]].state == "in_progress"
    r.dispatch_failed(wave[0], "busy: an update is already in flight", 2)
    assert r.per_device[wave[0]].state == "failed"


def test_persistence_round_trip_and_validation() -> None:
    r = Rollout("2.0.0", _devices(5), Policy(canary=1, batch_size=2))
    _succeed(r, r.next_wave(0), 0)
    r.next_wave(1)
    again = Rollout.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.to_dict() == r.to_dict()
    with pytest.raises(ValueError):
        Rollout("2.0.0", ["a", "a"])
    with pytest.raises(ValueError):
        Rollout("2.0.0", ["a"], Policy(max_failure_rate=2))


# --- end to end over a real broker ---------------------------------------------------------------

import asyncio  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from aiohttp import web  # noqa: E402

from device_agent.agent import Agent  # noqa: E402
from device_agent.config import load_config  # noqa: E402
from fleet.client import FleetClient  # noqa: E402
from fleet.ota.rollout_runner import load  # noqa: E402
from fleet.ota.serve import make_app  # noqa: E402
from tests.support.mosquitto import Mosquitto, free_port  # noqa: E402
from tests.support.ota_harness import Device, make_bundle, provision  # noqa: E402


class Unhealthy:
    name = "media"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def healthy(self) -> bool:
        return False


async def _device_life(dev: Device, bad: bool, stop: asyncio.Event) -> list[str]:
    """One device: agent with the fleet link and OTA; 'restarts' through the real boot check."""
    from device_agent.fleetlink import FleetLink
    from device_agent.ota_component import OtaComponent

    versions: list[str] = []
    while not stop.is_set():
        check = await asyncio.to_thread(dev.boot_check)
        assert check.returncode == 0, check.stderr
        version = await asyncio.to_thread(dev.running_version)
        versions.append(version or "?")
        agent = Agent(load_config(dev.config_path))
        agent.add(FleetLink(agent))
        if bad and version == "2.0.0":
            agent.add(Unhealthy())
        ota = OtaComponent(agent)
        agent.add(ota)
        await agent.start()
        stopped = asyncio.create_task(agent._stop.wait())
        halt = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, halt}, return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        stopped.cancel()
        await agent.stop()
        if not ota.restart_requested:
            break
    return versions


@pytest.mark.slow
async def test_rollout_over_mqtt_canary_batch_and_halt(tmp_path: Path, mosquitto: Mosquitto) -> None:
    names = ["cam-1", "cam-2", "cam-3", "cam-4"]
    devs = []
    for name in names:
        dev = Device(tmp_path / name, device_id=name, mqtt_url=mosquitto.url, trial_deadline_s=3.0)
        provision(dev)
        devs.append(dev)
    for dev in devs[1:]:  # one fleet, one signing key
        (dev.keys_dir / "release.pub").write_bytes((devs[0].keys_dir / "release.pub").read_bytes())
    served = tmp_path / "srv"
    served.mkdir()
    bundle = make_bundle(devs[0], served / "v2.tar", "2.0.0")
    runner = web.AppRunner(make_app(served))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    lives = [asyncio.create_task(_device_life(d, bad=(d.device_id == "cam-3"), stop=stop)) for d in devs]
    state = tmp_path / "rollout.json"
    out = b""
    try:
        async with FleetClient(mosquitto.url) as client:
            online: set[str] = set()
            client.on_status(lambda device, st: online.add(device) if (st or {}).get("online") else None)
            for _ in range(200):  # the rollout targets devices that are online
                if online >= set(names):
                    break
                await asyncio.sleep(0.05)
            assert online >= set(names), online
            # the operator's command line, as a real subprocess
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fleet.cli",
                "ota",
                "rollout",
                str(bundle),
                "--url",
                f"http://127.0.0.1:{port}/v2.tar",
                "--devices",
                ",".join(names),
                "--mqtt",
                mosquitto.url,
                "--canary",
                "1",
                "--batch-size",
                "2",
                "--max-failure-rate",
                "0.3",
                "--timeout",
                "60",
                "--state",
                str(state),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        stop.set()
        results = await asyncio.gather(*lives, return_exceptions=True)
        await runner.cleanup()
    text = out.decode()
    assert proc.returncode == 1, text  # halted: not a success
    assert "[####" in text and "cam-3" in text  # progress bars while it ran
    rollout = load(state)
    per = rollout.per_device
    assert per["cam-1"].state == "succeeded" and per["cam-1"].wave == 0
    assert per["cam-2"].state == "succeeded" and per["cam-2"].wave == 1
    assert per["cam-3"].state == "failed" and "not healthy" in per["cam-3"].reason
    assert per["cam-4"].state == "skipped"
    assert rollout.status == "halted" and "1/3" in rollout.reason
    assert results[0] == ["1.0.0", "2.0.0"] and results[2] == ["1.0.0", "2.0.0", "1.0.0"], results
    assert results[3] == ["1.0.0"]
    status = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "ota", "status", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0 and "rollout 2.0.0: halted" in status.stdout
    assert "cam-3" in status.stdout and "skipped" in status.stdout and "not healthy" in status.stdout


def test_group_targets_come_from_the_fleet_store(tmp_path: Path) -> None:
    """`fleetctl ota rollout --group G` updates the devices the fleet service registered in G, and only
    those."""
    import time

    from fleet.ota.rollout_cli import select_devices
    from fleet.store import Incoming, Store

    db = str(tmp_path / "fleet.db")
    store = Store(db)
    for dev, group in (("cam-1", "lobby"), ("cam-2", "lab"), ("cam-3", "lobby")):
        body = {
            "online": True,
            "boot": "b1",
            "version": "1.0.0",
            "slot": "a",
            "group": group,
            "ts": time.time(),
        }
        store.ingest([Incoming("status", dev, json.dumps(body).encode(), time.time())])
    store.close()
    assert select_devices(None, "lobby", db) == ["cam-1", "cam-3"]
    assert select_devices(None, "nowhere", db) == []
    assert select_devices("cam-9,cam-8", "lobby", db) == ["cam-9", "cam-8"]  # an explicit list wins
    with pytest.raises(ValueError, match="--group or --devices"):
        select_devices(None, None, db)
