"""Rollups and retention (fleet/rollups.py) on SQLite and PostgreSQL: rollup rows equal the raw
samples' aggregates (redeliveries add nothing), pruning deletes raw rows past their days while the
rollups stay longer, and ``GET /api/v1/devices/{id}/series`` answers from the rollups alone."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from fleet.api.server import ApiServer
from fleet.rollups import Retention, prune, retention_from_args
from fleet.service import FleetService
from fleet.store import Incoming, Store
from tests.test_fleet_api import store  # noqa: F401  (fixture: SQLite and PostgreSQL)

DAY = 86400.0


def sample(
    dev: str, seq: int, ts: float, figures: dict[str, Any], received: float | None = None, boot: str = "b1"
) -> Incoming:
    """A telemetry message with the figures placed where the agent puts them (docs/protocol.md)."""
    sessions = [
        {"id": f"s{i}", "rtt_ms": v["rtt"], "qoe": {"freeze_rate": v["freeze"], "loss_pct": v["loss"]}}
        for i, v in enumerate(figures.get("viewers", []))
    ]
    health = {
        "system": {"cpu_pct": figures.get("cpu"), "temperature_c": figures.get("temp"), "load": [1, 1, 1]},
        "media": {
            "video": {"fps": figures.get("fps")},
            "viewers": {"active": len(sessions), "sessions": sessions},
        },
    }
    body = {"boot": boot, "seq": seq, "ts": ts, "health": health}
    return Incoming(
        "telemetry", dev, json.dumps(body).encode(), time.time() if received is None else received
    )


def expected_values(figures: dict[str, Any]) -> dict[str, float]:
    """What each metric of one sample is, by the documented definition (worst viewer)."""
    out = {}
    for name, key in (("cpu", "cpu"), ("temp_c", "temp"), ("fps", "fps")):
        if figures.get(key) is not None:
            out[name] = float(figures[key])
    viewers = figures.get("viewers", [])
    if viewers:
        out["freeze_rate"] = max(v["freeze"] for v in viewers)
        out["loss"] = max(v["loss"] for v in viewers)
        out["rtt_ms"] = max(v["rtt"] for v in viewers)
    return out


def rollup_rows(store: Store, which: str) -> dict[tuple[str, int], Any]:  # noqa: F811
    t = store.rollups.tables[which][0]
    with store.engine.connect() as conn:
        return {(r.device_id, int(r.bucket)): r for r in conn.execute(sa.select(t))}


def test_rollups_equal_raw_aggregates(store: Store) -> None:  # noqa: F811
    rng = random.Random(7)
    t0 = 1_700_000_000.0 - 1_700_000_000.0 % 3600  # an hour boundary
    msgs, truth = [], {}
    for dev in ("cam-1", "cam-2"):
        for seq in range(1, 121):  # two hours, every 61 s: buckets with 0, 1 or 2 samples
            ts = t0 + seq * 61.0 + rng.random()
            figures: dict[str, Any] = {
                "cpu": round(rng.uniform(5, 95), 3),
                "fps": round(rng.uniform(10, 30), 2),
            }
            if seq % 7:
                figures["temp"] = round(rng.uniform(40, 80), 1)  # sometimes absent
            if seq % 3 == 0:  # sometimes one or two viewers
                figures["viewers"] = [
                    {"rtt": rng.uniform(5, 300), "freeze": rng.uniform(0, 5), "loss": rng.uniform(0, 2)}
                    for _ in range(1 + seq % 2)
                ]
            msgs.append(sample(dev, seq, ts, figures))
            truth[(dev, seq)] = (ts, expected_values(figures))
    rng.shuffle(msgs)
    for i in range(0, len(msgs), 50):  # several batches, then every message delivered again
        store.ingest(msgs[i : i + 50])
    again = store.ingest(msgs[:100] + msgs[-100:])
    assert again["stored"] == 0 and again["duplicate"] == 200
    assert store.counts()["telemetry"] == 240

    for which, width in (("minute", 60), ("hour", 3600)):
        want: dict[tuple[str, int], dict[str, list[float]]] = {}
        for (dev, _seq), (ts, values) in truth.items():
            cell = want.setdefault((dev, int(ts // width) * width), {})
            for m, v in values.items():
                cell.setdefault(m, []).append(v)
        got = rollup_rows(store, which)
        assert set(got) == set(want), which
        for key, cell in want.items():
            row = got[key]
            for m in ("fps", "freeze_rate", "loss", "rtt_ms", "cpu", "temp_c"):
                vals = cell.get(m, [])
                assert getattr(row, f"{m}_n") == len(vals), (which, key, m)
                assert getattr(row, f"{m}_sum") == pytest.approx(sum(vals), rel=1e-9, abs=1e-9)
                assert getattr(row, f"{m}_min") == (pytest.approx(min(vals)) if vals else None)
                assert getattr(row, f"{m}_max") == (pytest.approx(max(vals)) if vals else None)
    assert len(rollup_rows(store, "hour")) == 6  # 2 devices x 3 hours touched (0..2 h + 61 s)


def test_store_without_rollups_writes_none(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "fleet.db"), rollups=False)
    s.ingest([sample("cam-1", 1, 1000.0, {"cpu": 10})])
    assert s.counts()["telemetry"] == 1 and rollup_rows(s, "minute") == {}
    s.close()


async def test_prune_raw_keeps_rollups_longer(store: Store) -> None:  # noqa: F811
    now = 1_800_000_000.0
    ages = [30, 20, 10, 8, 6, 2, 1, 0.1]  # days before now, received and sampled then
    store.ingest(
        [
            sample("cam-1", i, now - age * DAY, {"cpu": float(i)}, received=now - age * DAY)
            for i, age in enumerate(ages)
        ]
    )
    store.ingest(
        [
            Incoming(
                "events",
                "cam-1",
                json.dumps({"boot": "b1", "seq": i, "ts": now - age * DAY, "type": "x"}).encode(),
                now - age * DAY,
            )
            for i, age in enumerate(ages)
        ]
    )
    before_hour = len(rollup_rows(store, "hour"))
    assert before_hour == len(ages) and len(rollup_rows(store, "minute")) == len(ages)
    retention = Retention(raw_days=7, events_days=15, minute_days=9, hour_days=25, batch_rows=2, pause_s=0)
    svc = FleetService("mqtt://127.0.0.1:1", store, rollouts=False, retention=retention)
    res = await svc.prune(now=now)
    assert res["telemetry"] == 4 and res["events"] == 2  # batches of 2 rows: several transactions
    assert sorted(s for _b, s in store.telemetry_seqs("cam-1")) == [4, 5, 6, 7]  # ages 6, 2, 1, 0.1
    assert len(store.event_rows("cam-1")) == 6
    minute = sorted(now - b for _d, b in rollup_rows(store, "minute"))
    hour = sorted(now - b for _d, b in rollup_rows(store, "hour"))
    assert len(minute) == 5 and max(minute) < 9 * DAY  # ages <= 8 days: kept longer than raw
    assert len(hour) == 7 and max(hour) < 25 * DAY + 3600
    assert svc.pruned["runs"] == 1 and svc.pruned["telemetry"] == 4
    assert await svc.prune(now=now) == {"telemetry": 0, "events": 0, "minute": 0, "hour": 0}
    # 0 days keeps everything of that kind
    assert prune(store, Retention(raw_days=0, events_days=0, minute_days=0, hour_days=0), now + 99 * DAY) == {
        "telemetry": 0,
        "events": 0,
        "minute": 0,
        "hour": 0,
    }
    assert store.counts()["telemetry"] == 4


async def test_series_endpoint_answers_from_rollups(store: Store) -> None:  # noqa: F811
    now = time.time()
    base = (now // 3600) * 3600 - 2 * 3600  # two hours ago, on the hour: inside 24 h and 7 d
    msgs = []
    cpu: list[tuple[float, float]] = []
    for seq in range(1, 400):
        ts = base + seq * 25.0  # every 25 s up to ~2.8 h later
        if ts > now:
            break
        v = float(seq % 17)
        cpu.append((ts, v))
        msgs.append(
            sample(
                "cam-7", seq, ts, {"cpu": v, "viewers": [{"rtt": 40.0 + seq % 5, "freeze": 0.0, "loss": 0.5}]}
            )
        )
    store.ingest(msgs)
    store.ingest([sample("cam-8", 1, now, {"cpu": 1.0})])
    with store.engine.begin() as conn:  # no raw rows left: the answer can only come from the rollups
        conn.execute(sa.delete(store.telemetry))
    api = ApiServer(store, "127.0.0.1", 0)
    await api.start()
    base_url = api.url + "/api/v1/devices"
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> tuple[int, dict[str, Any]]:
                async with http.get(base_url + path) as resp:
                    return resp.status, await resp.json()

            for range_, step, source, span in (
                ("1h", 60, "minute", 3600),
                ("24h", 300, "minute", DAY),
                ("7d", 3600, "hour", 7 * DAY),
            ):
                st, body = await get(f"/cam-7/series?metric=cpu&range={range_}")
                assert st == 200, body
                assert (body["source"], body["step_s"], body["unit"], body["metric"]) == (
                    source,
                    step,
                    "%",
                    "cpu",
                )
                assert body["to"] - body["from"] == span and body["from"] <= now <= body["to"]
                want: dict[int, list[float]] = {}
                for ts, v in cpu:
                    if body["from"] <= ts < body["to"]:
                        want.setdefault(int(ts // step) * step, []).append(v)
                got = {p["t"]: p for p in body["points"]}
                assert sorted(got) == sorted(want) and [p["t"] for p in body["points"]] == sorted(got)
                for t, vals in want.items():
                    p = got[t]
                    assert p["n"] == len(vals) and p["avg"] == pytest.approx(sum(vals) / len(vals))
                    assert (p["min"], p["max"]) == (min(vals), max(vals))
            st, body = await get("/cam-7/series?metric=rtt_ms")
            assert st == 200 and body["range"] == "1h" and body["unit"] == "ms" and body["points"]
            assert all(40.0 <= p["min"] <= p["max"] <= 44.0 for p in body["points"])
            st, body = await get("/cam-8/series?metric=freeze_rate&range=24h")
            assert st == 200 and body["points"] == []  # no viewers: no samples of that metric
            st, body = await get("/cam-7/series?metric=bogus")
            assert st == 400 and body["error"]["code"] == "bad_request"
            st, body = await get("/cam-7/series")
            assert st == 400 and "metric" in body["error"]["message"]
            st, body = await get("/cam-7/series?metric=fps&range=30d")
            assert st == 400
            st, body = await get("/nobody/series?metric=fps")
            assert st == 404 and body["error"]["code"] == "not_found"
            async with http.get(api.url + "/api/v1/openapi.json") as resp:
                spec = await resp.json()
            op = spec["paths"]["/api/v1/devices/{id}/series"]["get"]
            enums = {p["name"]: p["schema"].get("enum") for p in op["parameters"]}
            assert enums["metric"] == ["fps", "freeze_rate", "loss", "rtt_ms", "cpu", "temp_c"]
            assert enums["range"] == ["1h", "24h", "7d"]
    finally:
        await api.stop()


def test_retention_config_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text("[retention]\nraw_days = 3\nhour_days = 100\n")
    args = argparse.Namespace(
        config=str(cfg),
        retention_raw_days=None,
        retention_events_days=None,
        retention_minute_days=5.0,
        retention_hour_days=None,
        retention_interval=None,
    )
    r = retention_from_args(args)
    assert (r.raw_days, r.minute_days, r.hour_days, r.events_days) == (3, 5.0, 100, 30.0)
    args.retention_raw_days = 1.5  # the flag wins over the file
    assert retention_from_args(args).raw_days == 1.5
    cfg.write_text("[retention]\nraw_dayz = 3\n")
    with pytest.raises(ValueError, match="raw_dayz"):
        retention_from_args(args)
    cfg.write_text("[retention]\nraw_days = -1\n")
    args.retention_raw_days = None
    with pytest.raises(ValueError, match="raw_days"):
        retention_from_args(args)
    args.config = str(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="missing.toml"):
        retention_from_args(args)


def test_serve_refuses_a_bad_retention_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[retention]\nraw_days = "a week"\n')
    out = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "serve", "--db", str(tmp_path / "f.db"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert out.stderr.strip().splitlines() == [
        "fleetctl serve: retention raw_days: expected a number >= 0 (days: 0 keeps forever), got 'a week'"
    ]
