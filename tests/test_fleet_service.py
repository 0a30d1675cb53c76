"""fleetctl serve workers on a real broker: shared subscription, last will, end to end."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from fleet.service import FleetService
from fleet.simulate import Simulation
from fleet.store import Store
from tests.support.agent_proc import AgentProcess
from tests.support.mosquitto import Mosquitto
from tests.test_fleet_store import PG, PG_URL


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_workers_split_the_load_without_loss(
    tmp_path: Path, mosquitto: Mosquitto, backend: str
) -> None:
    if backend == "postgresql" and not PG:
        pytest.skip(f"no PostgreSQL at {PG_URL}")
    url = str(tmp_path / "fleet.db") if backend == "sqlite" else PG_URL
    prefix = "" if backend == "sqlite" else f"t{uuid.uuid4().hex[:10]}_"
    stores = [Store(url, prefix=prefix), Store(url, prefix=prefix)]
    workers = [
        FleetService(mosquitto.url, s, worker_id=str(i), rule_interval_s=3600) for i, s in enumerate(stores)
    ]
    sim = Simulation(mosquitto.url, 8, tmp_path / "sim", interval_s=0.2)
    try:
        for w in workers:
            await w.start()
        await sim.start(spread_s=0.2)
        await asyncio.sleep(3.0)
        # stop sampling but keep the senders: link.stop() leaves unsent samples in the spool (on disk,
        # for the next start), so the spools are drained first and then every sample must be stored
        for link in sim.links:
            for t in link._tasks:
                if t.get_name() == "fleetlink-telemetry":
                    t.cancel()
        await asyncio.sleep(0.1)
        emitted = {link.device_id: link._seq for link in sim.links}
        await _until(lambda: stores[0].counts()["telemetry"] >= sum(emitted.values()), 15, "ingest")
        await sim.stop()
        await _until(lambda: not any(d["online"] for d in stores[0].list_devices()), 10, "clean stops")
    finally:
        for w in workers:
            await w.stop()
    try:
        assert all(w.stats["stored"] > 0 for w in workers), [w.stats for w in workers]
        for dev, last in emitted.items():
            seqs = [s for _, s in stores[0].telemetry_seqs(dev)]
            assert sorted(seqs) == list(range(1, last + 1)), (dev, seqs, last)
        devices = stores[0].list_devices()
        assert len(devices) == 8 and not any(d["online"] for d in devices)  # clean stops
        # the real shape
        assert stores[0].device("sim-00003")["health"]["media"]["viewers"]["sessions"][0]["fps"] > 20
    finally:
        if backend == "postgresql":
            stores[0].drop_all()
        for s in stores:
            s.close()


async def test_last_will_marks_a_killed_agent_offline(tmp_path: Path, mosquitto: Mosquitto) -> None:
    store = Store(str(tmp_path / "fleet.db"))
    svc = FleetService(mosquitto.url, store, rule_interval_s=3600)
    agent = AgentProcess(
        tmp_path / "agent",
        {
            "device": {"id": "cam-7", "state_dir": str(tmp_path / "agent" / "state"), "group": "yard"},
            "mqtt": {"url": mosquitto.url, "telemetry_interval_s": 1.0, "keepalive_s": 5},
            "web": {"enabled": False},
        },
    )
    await svc.start()
    try:
        agent.start()
        await _until(lambda: (store.device("cam-7") or {}).get("online") is True, 20, "cam-7 online")
        assert store.device("cam-7")["group"] == "yard"
        agent.kill()
        t0 = time.monotonic()
        await _until(lambda: store.device("cam-7")["online"] is False, 15, "last will")
        elapsed = time.monotonic() - t0
        status = store.device("cam-7")["status"]
        assert status["online"] is False and status["reason"] == "lost"
        assert [(a["code"], a["severity"]) for a in store.list_alerts()] == [("offline", "P1")]
        assert elapsed < 10
        agent.start()  # back: online again and the alert clears
        await _until(lambda: store.device("cam-7")["online"] is True, 20, "cam-7 back")
        await _until(lambda: store.list_alerts() == [], 5, "offline alert cleared")
    finally:
        agent.kill()
        await svc.stop()


async def test_agent_restart_command_exits_with_the_restart_code(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    from device_agent.agent import RESTART_EXIT_CODE
    from fleet.client import FleetClient

    agent = AgentProcess(
        tmp_path / "agent",
        {
            "device": {"id": "spk-9", "state_dir": str(tmp_path / "agent" / "state")},
            "mqtt": {"url": mosquitto.url},
            "web": {"enabled": False},
        },
    )
    agent.start()
    client = FleetClient(mosquitto.url)
    await client.connect()
    try:
        for _ in range(100):
            try:
                await client.send_command("spk-9", "ping", {}, timeout=1)
                break
            except Exception:
                await asyncio.sleep(0.1)
        assert (await client.send_command("spk-9", "agent.restart", {}, timeout=5))["restarting"] is True
        assert await asyncio.to_thread(agent.wait, 15) == RESTART_EXIT_CODE
    finally:
        await client.close()
        agent.kill()


async def test_worker_crash_before_commit_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Messages are acknowledged only after their batch is committed: a crashed worker's
    uncommitted messages come again to the next worker holding its session."""
    import json
    import threading

    from fleet.client import FleetClient

    class StuckStore(Store):
        def __init__(self, url: str) -> None:
            super().__init__(url)
            self.release = threading.Event()

        def ingest(self, batch):  # the process "dies" while writing
            self.release.wait(30)
            raise RuntimeError("crashed")

    stuck = StuckStore(str(tmp_path / "a.db"))
    crashed = FleetService(mosquitto.url, stuck, worker_id="w", rule_interval_s=3600)
    await crashed.start()
    pub = FleetClient(mosquitto.url)
    await pub.connect()
    for seq in range(1, 51):
        await pub.publish(
            "dev/cam-3/telemetry", json.dumps({"boot": "b", "seq": seq, "ts": 1.0, "health": {}}).encode()
        )
    await _until(lambda: crashed.stats["received"] == 50, 10, "delivery to the first worker")
    crashed.conn._client._sock_close()  # connection gone without DISCONNECT, like a killed process
    crashed._stopping = True
    store = Store(str(tmp_path / "b.db"))
    heir = FleetService(mosquitto.url, store, worker_id="w", rule_interval_s=3600)
    try:
        await heir.start()
        await _until(lambda: len(store.telemetry_seqs("cam-3")) == 50, 15, "redelivery")
        assert [s for _, s in store.telemetry_seqs("cam-3")] == list(range(1, 51))
    finally:
        stuck.release.set()
        await heir.stop()
        await pub.close()
        for t in crashed._tasks:
            t.cancel()
        crashed._executor.shutdown(wait=True)
