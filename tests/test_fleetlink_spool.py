"""The on-disk spool: order, bound (oldest telemetry first, events last), counters, restarts."""

from __future__ import annotations

from pathlib import Path

from device_agent.fleetlink.spool import KIND_EVENT, KIND_TELEMETRY, Spool


def test_fifo_order_and_delete(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 1 << 20)
    for i in range(10):
        sp.append(KIND_TELEMETRY if i % 3 else KIND_EVENT, "dev/x/t", f"m{i}".encode())
    rows = sp.peek(limit=4)
    assert [r.payload for r in rows] == [b"m0", b"m1", b"m2", b"m3"]
    assert [r.payload for r in sp.peek(after_id=rows[-1].id, limit=100)][:2] == [b"m4", b"m5"]
    sp.delete([rows[0].id, rows[1].id, 999999])
    assert [r.payload for r in sp.peek(limit=2)] == [b"m2", b"m3"]
    assert sp.stats()["depth"] == 8


def test_bound_drops_oldest_telemetry_first_then_events(tmp_path: Path) -> None:
    topic = "dev/x/telemetry"
    size = 1000 + len(topic)
    sp = Spool(tmp_path / "s.db", 65536)
    cap = 65536 // size  # rows that fit
    sp.append(KIND_EVENT, topic, b"E" * 1000)
    for i in range(cap + 10):
        sp.append(KIND_TELEMETRY, topic, str(i).encode().ljust(1000, b"."))
    st = sp.stats()
    assert st["bytes"] <= 65536 and st["dropped_telemetry"] == 11 and st["dropped_events"] == 0
    rows = sp.peek(limit=1000)
    assert rows[0].kind == KIND_EVENT  # the event survived, the oldest samples went
    assert rows[1].payload.startswith(b"11.")
    assert rows[-1].payload.startswith(str(cap + 9).encode())
    # only events left: then the oldest event goes
    sp2 = Spool(tmp_path / "e.db", 65536)
    for i in range(cap + 3):
        sp2.append(KIND_EVENT, topic, str(i).encode().ljust(1000, b"."))
    assert sp2.stats()["dropped_events"] == 3
    assert sp2.peek(limit=1)[0].payload.startswith(b"3.")


def test_survives_restart_with_counters(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 65536)
    for _ in range(100):
        sp.append(KIND_TELEMETRY, "t", bytes(1000))
    before = sp.stats()
    sp.close()
    again = Spool(tmp_path / "s.db", 65536)
    assert again.stats() == before and before["dropped_telemetry"] > 0
    assert len(again.peek(limit=1000)) == before["depth"]
    assert (tmp_path / "s.db-wal").exists() or again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_link_offline_bound_reports_drops_and_keeps_events(tmp_path: Path) -> None:
    """An agent that never reaches its broker: the spool stays bounded, telemetry goes first."""
    import asyncio

    from device_agent.agent import Agent
    from device_agent.config import config_from_dict
    from device_agent.fleetlink import FleetLink
    from tests.support.mosquitto import free_port

    agent = Agent(
        config_from_dict(
            {
                "device": {"id": "d", "state_dir": str(tmp_path)},
                "mqtt": {
                    "url": f"mqtt://127.0.0.1:{free_port()}",
                    "spool_max_bytes": 65536,
                    "telemetry_interval_s": 3600,
                },
            }
        )
    )
    link = FleetLink(agent)
    agent.add(link)
    await agent.start()
    try:
        agent.events.emit("ota.progress", phase="download", pct=1)
        agent.alerts.raise_alert("P1", "camera_gone", "no frames")
        for _ in range(300):
            link.emit_telemetry({"pad": "x" * 1000})
        for _ in range(100):
            await asyncio.sleep(0.02)
            if link.health()["spool"].get("depth") and link._executor._work_queue.empty():  # type: ignore[attr-defined]
                break
        await asyncio.sleep(0.2)
        st = link.health()["spool"]
        assert not link.connected
        assert st["bytes"] <= 65536 and st["dropped_telemetry"] > 200 and st["dropped_events"] == 0
        kinds = [r.kind for r in link.spool.peek(limit=1000)]  # type: ignore[union-attr]
        assert kinds[:2] == ["event", "event"] and set(kinds[2:]) == {"telemetry"}
        sample = agent.health.sample()
        assert sample["fleet_link"]["spool"]["dropped_telemetry"] == st["dropped_telemetry"]
    finally:
        await agent.stop()


def test_corrupt_spool_is_moved_aside_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    sp = Spool(path, 65536)
    assert sp.quarantined is not None and sp.quarantined.read_bytes().startswith(b"this is not")
    sp.append(KIND_EVENT, "t", b"x")
    assert sp.stats()["depth"] == 1
