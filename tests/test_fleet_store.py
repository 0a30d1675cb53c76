"""The fleet store on SQLite and on PostgreSQL (127.0.0.1:5432, db ``test``) when reachable."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleet.service import FleetService, GroupOfflineRule
from fleet.store import Incoming, Store

PG_URL = os.environ.get("FLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> bool:
    try:
        eng = sa.create_engine(
            "postgresql+psycopg://" + PG_URL.split("://", 1)[1], connect_args={"connect_timeout": 2}
        )
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


PG = _pg_reachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        s = Store(str(tmp_path / "fleet.db"))
    else:
        if not PG:
            pytest.skip(f"no PostgreSQL at {PG_URL}")
        s = Store(PG_URL, prefix=f"t{uuid.uuid4().hex[:10]}_")
    yield s
    if request.param == "postgresql":
        s.drop_all()
    s.close()


def tele(dev: str, boot: str, seq: int, **health) -> Incoming:
    body = {"boot": boot, "seq": seq, "ts": 1000.0 + seq, "health": {"system": {"cpu_pct": 1.0, **health}}}
    return Incoming("telemetry", dev, json.dumps(body).encode(), time.time())


def status(dev: str, online: bool, group: str = "g", reason: str = "") -> Incoming:
    body = {"online": online, "boot": "b1", "version": "1.0", "slot": "a", "group": group, "ts": time.time()}
    if reason:
        body["reason"] = reason
    return Incoming("status", dev, json.dumps(body).encode(), time.time())


def event(dev: str, seq: int, **fields) -> Incoming:
    return Incoming(
        "events",
        dev,
        json.dumps({"boot": "b1", "seq": seq, "ts": 2000.0 + seq, **fields}).encode(),
        time.time(),
    )


def test_dedup_by_device_boot_seq(store: Store) -> None:
    res = store.ingest([tele("a", "b1", 1), tele("a", "b1", 2), tele("a", "b1", 2), tele("b", "b1", 1)])
    assert res == {"stored": 3, "duplicate": 1, "bad": 0}
    res = store.ingest(
        [tele("a", "b1", 1), tele("a", "b2", 1), event("a", 3, type="x"), event("a", 3, type="x")]
    )
    assert res == {"stored": 2, "duplicate": 2, "bad": 0}
    assert store.telemetry_seqs("a") == [("b1", 1), ("b1", 2), ("b2", 1)]
    assert store.counts() == {"devices": 2, "telemetry": 4, "events": 1}


def test_a_failed_batch_is_stored_whole_when_retried(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose transaction fails after its rows were staged (PostgreSQL: COPY into a temporary
    table that the rollback removes) leaves nothing behind and goes in whole the next time."""
    batch = [tele("a", "b1", 1), tele("a", "b1", 2), event("a", 5, type="x"), tele("b", "b1", 1)]
    real = store.rollups.add

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(store.rollups, "add", fail)
    with pytest.raises(RuntimeError):
        store.ingest(batch)
    assert store.counts() == {"devices": 0, "telemetry": 0, "events": 0}
    monkeypatch.setattr(store.rollups, "add", real)
    assert store.ingest(batch) == {"stored": 4, "duplicate": 0, "bad": 0}
    assert store.ingest(batch + [tele("a", "b1", 3)]) == {"stored": 1, "duplicate": 4, "bad": 0}
    assert store.telemetry_seqs("a") == [("b1", 1), ("b1", 2), ("b1", 3)]
    assert store.counts() == {"devices": 2, "telemetry": 4, "events": 1}


def test_bad_messages_are_counted_not_stored(store: Store) -> None:
    bad = [
        Incoming("telemetry", "a", b"{nope", 1.0),
        Incoming("telemetry", "a", b"[1]", 1.0),
        Incoming("telemetry", "a", b'{"seq": "x", "boot": "b"}', 1.0),
        Incoming("events", "a", b'{"ts": 1}', 1.0),
    ]
    assert store.ingest(bad + [tele("a", "b1", 1)]) == {"stored": 1, "duplicate": 0, "bad": 4}
    assert store.counts()["telemetry"] == 1


def test_status_registry_and_offline_alert(store: Store) -> None:
    store.ingest([status("a", True), tele("a", "b1", 1, temperature_c=50.5)])
    dev = store.device("a")
    assert dev["online"] and dev["version"] == "1.0" and dev["group"] == "g"
    assert dev["health"]["system"]["temperature_c"] == 50.5 and dev["telemetry_count"] == 1
    store.ingest([status("a", False, reason="lost")])
    assert not store.device("a")["online"]
    alerts = store.list_alerts()
    assert [(a["device"], a["code"], a["severity"]) for a in alerts] == [("a", "offline", "P1")]
    store.ingest([status("a", True)])
    assert store.list_alerts() == [] and len(store.list_alerts(include_cleared=True)) == 1
    store.ingest([status("a", False, reason="stopped")])  # a clean stop is not an incident
    assert store.list_alerts() == []
    assert store.device("nobody") is None


def test_device_alert_events(store: Store) -> None:
    store.ingest(
        [
            status("a", True),
            event("a", 1, type="alert", severity="P2", code="hot", message="hot", active=True),
        ]
    )
    assert [(a["code"], a["severity"], a["active"]) for a in store.list_alerts()] == [("hot", "P2", True)]
    assert store.list_devices()[0]["active_alerts"] == 1
    store.ingest([event("a", 2, type="alert", severity="P2", code="hot", message="cool again", active=False)])
    assert store.list_alerts() == []
    assert [e["seq"] for e in store.event_rows("a")] == [1, 2]
    assert store.device("a")["recent_events"][0]["message"] == "cool again"


def test_group_offline_rule(store: Store) -> None:
    svc = FleetService("mqtt://127.0.0.1:1", store, rule=GroupOfflineRule(pct=30, window_s=60, min_devices=3))
    try:
        store.ingest(
            [status(f"d{i}", True, group="north") for i in range(10)]
            + [status(f"s{i}", True, group="south") for i in range(2)]
        )
        assert svc._evaluate_sync() == []
        store.ingest(
            [status(f"d{i}", False, group="north", reason="lost") for i in range(3)]
            + [status(f"s{i}", False, group="south", reason="lost") for i in range(2)]
        )
        assert svc._evaluate_sync() == []  # 30 % is not more than 30 %; south is too small
        store.ingest([status("d3", False, group="north", reason="lost")])
        assert svc._evaluate_sync() == [("raise", "group_offline:north")]
        assert svc._evaluate_sync() == []  # raised once
        fleet = [a for a in store.list_alerts() if a["scope"] == "fleet"]
        assert fleet[0]["severity"] == "P1" and "4 of 10" in fleet[0]["message"]
        store.ingest([status(f"d{i}", True, group="north") for i in range(4)])
        assert svc._evaluate_sync() == [("clear", "group_offline:north")]
        # offline long ago (outside the window) does not count
        assert store.group_offline(60, now=time.time() + 3600)["north"] == (0, 10)
    finally:
        svc._executor.shutdown()


def status_at(dev: str, online: bool, received: float) -> Incoming:
    body = {"online": online, "boot": "b1", "group": "g", **({} if online else {"reason": "lost"})}
    return Incoming("status", dev, json.dumps(body).encode(), received)


def test_status_changed_moves_only_when_online_flips(store: Store) -> None:
    store.ingest([status_at("a", False, 1000.0)])
    # every worker resubscribe replays the retained status: the device stays "offline since 1000"
    store.ingest([status_at("a", False, 5000.0)])
    dev = store.device("a")
    assert dev["status_changed"] == 1000.0 and dev["last_seen"] == 5000.0
    assert store.group_offline(60, now=5000.0)["g"] == (0, 1)  # no false "freshly offline"
    store.ingest([status_at("a", True, 6000.0)])
    assert store.device("a")["status_changed"] == 6000.0
    # flips inside one batch: the last flip counts, whatever the stored state
    store.ingest([status_at("a", False, 7000.0), status_at("a", True, 7001.0), status_at("a", False, 7002.0)])
    assert store.device("a")["status_changed"] == 7002.0
    store.ingest([status_at("a", False, 8000.0), status_at("a", True, 8001.0)])  # replay, then a real flip
    assert store.device("a")["status_changed"] == 8001.0
    store.ingest([status_at("a", False, 9000.0), status_at("a", True, 9001.0)])  # ends as stored, but flipped
    assert store.device("a")["status_changed"] == 9001.0
    # an older message from a slower worker does not move last_seen back
    store.ingest([tele("a", "b1", 1)])
    seen = store.device("a")["last_seen"]
    store.ingest([Incoming("telemetry", "a", json.dumps({"boot": "b1", "seq": 2, "ts": 1.0}).encode(), 10.0)])
    assert store.device("a")["last_seen"] == seen


def test_older_health_sample_does_not_replace_newer(store: Store) -> None:
    store.ingest([tele("a", "b1", 5, temperature_c=55.0)])  # ts 1005
    store.ingest([tele("a", "b1", 3, temperature_c=33.0)])  # ts 1003, late from a slower worker
    dev = store.device("a")
    assert dev["health"]["system"]["temperature_c"] == 55.0 and dev["health_ts"] == 1005.0


def test_alert_operations_only_for_fresh_rows_and_newest_wins(store: Store) -> None:
    def alert(seq: int, active: bool) -> Incoming:
        return event("a", seq, type="alert", severity="P2", code="hot", message=f"m{seq}", active=active)

    def hot_active() -> bool:
        return any(a["code"] == "hot" for a in store.list_alerts())

    store.ingest([alert(1, True)])
    store.ingest([alert(2, False)])
    assert not hot_active()
    res = store.ingest([alert(1, True)])  # redelivered raise: a duplicate row, no operation
    assert res["duplicate"] == 1 and not hot_active()
    store.ingest([alert(3, True)])
    store.ingest([alert(5, False)])
    store.ingest([alert(4, True)])  # a new row but older than the clear at seq 5: stale
    assert not hot_active()
    store.ingest([alert(7, False), alert(6, True)])  # out of order in one batch: the clear is newest
    assert not hot_active()
    store.ingest([alert(8, True), alert(8, True)])  # duplicate inside one batch: raised once
    [hot] = [a for a in store.list_alerts() if a["code"] == "hot"]
    assert hot["raised"] == 2008.0
