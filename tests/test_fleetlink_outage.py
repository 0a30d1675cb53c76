"""Store-and-forward through a 60 s broker outage, with one agent restarted (SIGKILL) mid-outage.

One outage serves both scenarios of the issue: ``d1`` runs in-process and keeps sampling the
whole time; ``d2`` is a real agent subprocess killed with SIGKILL 20 s into the outage and started
again (a new boot) while the broker is still down. Afterwards every sample of every boot must be
in the fleet store exactly once and in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.config import config_from_dict
from device_agent.fleetlink import FleetLink
from fleet.service import FleetService
from fleet.store import Store
from tests.support.agent_proc import AgentProcess
from tests.support.fleet import persistent_broker
from tests.support.mosquitto import Mosquitto

OUTAGE_S = float(os.environ.get("FLEET_TEST_OUTAGE_S", "60"))
INTERVAL_S = 0.5


def _contiguous(seqs: list[int]) -> bool:
    if seqs == list(range(1, len(seqs) + 1)):
        return True
    bad = [(i, s) for i, s in enumerate(seqs, 1) if i != s][:5]
    print(f"not contiguous: {len(seqs)} rows, max {max(seqs, default=0)}, first mismatches {bad}")
    return False


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _spooled_seqs(spool_db: Path) -> dict[str, list[int]]:
    db = sqlite3.connect(spool_db)
    try:
        out: dict[str, list[int]] = {}
        for (payload,) in db.execute("SELECT payload FROM spool ORDER BY id"):
            obj = json.loads(payload)
            out.setdefault(obj["boot"], []).append(obj["seq"])
        return out
    finally:
        db.close()


@pytest.mark.slow
async def test_outage_and_restart_mid_outage_deliver_every_sample_once_in_order(tmp_path: Path) -> None:
    with persistent_broker() as broker:
        await _scenario(tmp_path, broker)


async def _scenario(tmp_path: Path, broker: Mosquitto) -> None:
    store = Store(str(tmp_path / "fleet.db"))
    # plain subscription: mosquitto 2.0 does not restore shared subscriptions after a crash
    svc = FleetService(broker.url, store, rule_interval_s=3600, share_group="")
    mqtt_cfg = {
        "url": broker.url,
        "telemetry_interval_s": INTERVAL_S,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 2.0,
        "keepalive_s": 5,
    }
    agent = Agent(
        config_from_dict({"device": {"id": "d1", "state_dir": str(tmp_path / "d1")}, "mqtt": mqtt_cfg})
    )
    link = FleetLink(agent)
    agent.add(link)
    d2 = AgentProcess(
        tmp_path / "d2",
        {
            "device": {"id": "d2", "state_dir": str(tmp_path / "d2" / "state")},
            "mqtt": mqtt_cfg,
            "web": {"enabled": False},
        },
    )
    try:
        await svc.start()
        await agent.start()
        d2.start()
        await _until(
            lambda: len(store.telemetry_seqs("d1")) >= 3 and len(store.telemetry_seqs("d2")) >= 3,
            20,
            "first samples",
        )
        await asyncio.sleep(2.0)  # the worker's persistent session is autosaved by the broker

        broker.kill()
        t_kill = time.monotonic()
        seq_at_kill = link._seq
        await asyncio.sleep(OUTAGE_S / 3)
        d2.kill()  # power loss of d2 mid-outage
        boot1_left = _spooled_seqs(tmp_path / "d2" / "state" / "fleetlink" / "spool.db")
        d2.start()  # comes back with a new boot id while the broker is still down
        await asyncio.sleep(OUTAGE_S - (time.monotonic() - t_kill))
        seq_during = link._seq
        assert seq_during - seq_at_kill >= OUTAGE_S / INTERVAL_S * 0.8  # kept sampling while offline
        assert link.health()["spool"]["depth"] >= seq_during - seq_at_kill - 2
        broker.start()

        await _until(lambda: len(store.telemetry_seqs("d1")) >= seq_during, 60, "d1 to drain its spool")
        await _until(
            lambda: (
                len({b for b, _ in store.telemetry_seqs("d2")}) == 2 and len(store.telemetry_seqs("d2")) > 0
            ),
            60,
            "d2's second boot",
        )
        await asyncio.sleep(2.0)
        await agent.stop()
        d2.stop()
        await asyncio.sleep(1.0)
    finally:
        await svc.stop()
        d2.kill()

    d1 = store.telemetry_seqs("d1")
    assert len({b for b, _ in d1}) == 1
    assert _contiguous([s for _, s in d1]), "d1: missing, duplicated or reordered samples"
    assert len(d1) >= seq_during

    d2_rows = store.telemetry_seqs("d2")
    boots = list(dict.fromkeys(b for b, _ in d2_rows))
    assert len(boots) == 2, boots
    first = [s for b, s in d2_rows if b == boots[0]]
    second = [s for b, s in d2_rows if b == boots[1]]
    assert _contiguous(first) and _contiguous(second), "d2: missing, duplicated or reordered samples"
    # all the first boot's samples still in the spool when it was killed arrived after the restart
    assert set(boot1_left.get(boots[0], [])) <= set(first)
    assert len(boot1_left.get(boots[0], [])) >= OUTAGE_S / 3 / INTERVAL_S * 0.8
    # in order: the first boot's backlog arrived before any sample of the second boot
    assert [b for b, _ in d2_rows] == sorted((b for b, _ in d2_rows), key=boots.index)
    assert svc.stats["bad"] == 0
