"""Fleet ingest rate: one `fleetctl serve` worker, then two on the shared subscription.

    .venv/bin/python -m benchmarks.fleet_ingest [--messages 50000] [--devices 1000] [--db sqlite|postgresql]
        [--workers 1 2] [--rollups on|off|both] [--expired N]

Method: a local mosquitto with persistence; the workers first connect once to create their
persistent sessions (shared subscription ``$share/fleet/dev/+/telemetry``) and disconnect; a
publisher process then loads N telemetry messages (the simulated agents' real payload: system,
media session and audio sections, ~1 KB) from D device ids into the broker, where they queue for
the offline sessions; then the worker processes start and the clock runs until every message is
in the store. This isolates the workers' ingest (MQTT receive, JSON, de-dup insert, registry
upsert) from the publisher. CPU per message is the workers' own CPU time (user + system, all
threads) divided by the messages they stored.

Rollups and retention (fleet/rollups.py): with ``--rollups on`` (the default, as shipped) every
stored sample also updates its minute and hour rollup rows, and each worker runs the retention
job every second over a store pre-filled (untimed) with ``--expired`` telemetry rows received 30
days ago (default: half the messages), which it deletes while it ingests. ``--rollups off`` is the
same run without rollups nor pruning; ``both`` runs the two and prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_agent import protocol  # noqa: E402
from device_agent.fleetlink.link import compact, dumps  # noqa: E402
from fleet.simulate import SimulatedSensors, simulated_media  # noqa: E402


def payloads(devices: int, n: int) -> list[tuple[str, bytes]]:
    rng = random.Random(1)
    sensors = [SimulatedSensors(i) for i in range(devices)]
    boots = [uuid.uuid4().hex[:16] for _ in range(devices)]
    out = []
    for k in range(n):
        d = k % devices
        health = {
            "system": sensors[d](),
            "media": simulated_media(rng),
            "fleet_link": {
                "connected": True,
                "connects": 1,
                "seq": k // devices + 1,
                "spool": {
                    "depth": 0,
                    "bytes": 0,
                    "max_bytes": 8388608,
                    "dropped_telemetry": 0,
                    "dropped_events": 0,
                },
            },
        }
        body = {
            "boot": boots[d],
            "seq": k // devices + 1,
            "ts": round(time.time(), 3),
            "health": compact(health),
        }
        out.append((protocol.telemetry(f"bench-{d:05d}"), dumps(body)))
    return out


def _publisher(url: str, devices: int, n: int, q: mp.Queue) -> None:
    from device_agent.fleetlink.mqtt import MqttConnection, MqttOptions

    async def run() -> None:
        msgs = payloads(devices, n)
        conn = MqttConnection(
            MqttOptions(url=url, client_id="bench-pub", clean_start=True, max_inflight=2000)
        )
        conn.start()
        await conn.wait_connected(10)
        t0 = time.perf_counter()
        for i, (topic, data) in enumerate(msgs):
            mid = conn.publish_nowait(topic, data, qos=1)
            if i % 1000 == 999 or i == len(msgs) - 1:  # the last ack: the broker holds every message
                await asyncio.wait_for(conn.ack_future(mid), 120)
        q.put(
            {
                "published": n,
                "publish_s": time.perf_counter() - t0,
                "avg_bytes": sum(len(d) for _, d in msgs) / len(msgs),
            }
        )
        await conn.close()

    asyncio.run(run())


def _worker(
    url: str,
    db: str,
    prefix: str,
    wid: str,
    ready: mp.Event,
    go: mp.Event,
    done: mp.Event,
    q: mp.Queue,
    create_only: bool,
    rollups: bool = True,
) -> None:
    from fleet.rollups import Retention
    from fleet.service import FleetService
    from fleet.store import Store

    async def run() -> None:
        store = Store(db, prefix=prefix, rollups=rollups)
        retention = Retention(interval_s=1.0) if rollups and not create_only else None
        svc = FleetService(url, store, worker_id=wid, rule_interval_s=3600, retention=retention)
        if create_only:
            await svc.start()
            await asyncio.sleep(0.5)
            await svc.stop()
            ready.set()
            return
        ready.set()
        while not go.is_set():
            await asyncio.sleep(0.01)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        await svc.start()
        while not done.is_set():
            await asyncio.sleep(0.05)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        await svc.stop()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        q.put({"worker": wid, "cpu_s": cpu, "pruned": svc.pruned["telemetry"], **svc.stats})

    asyncio.run(run())


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prefill_expired(store: object, n: int) -> None:
    """``n`` telemetry rows from other device ids, received 30 days ago: the retention's work."""
    from fleet.store import Incoming

    old = time.time() - 30 * 86400
    msgs = payloads(100, n)
    for i in range(0, n, 2000):
        store.ingest(  # type: ignore[attr-defined]
            [Incoming("telemetry", "old-" + t.split("/")[1], d, old) for t, d in msgs[i : i + 2000]]
        )


def run_case(
    workers: int, n: int, devices: int, backend: str, rollups: bool = True, expired: int = 0
) -> dict:
    import sqlalchemy as sa

    from fleet.store import Incoming, Store
    from tests.support.mosquitto import Mosquitto

    tmp = tempfile.mkdtemp(prefix="fleet-bench-")
    os.chmod(tmp, 0o777)
    broker = Mosquitto(
        Path(tmp) / "broker",
        extra_config="max_queued_messages 1000000\n"
        + os.environ.get("FLEET_BENCH_BROKER_EXTRA", "").replace(";", "\n"),
    )
    os.chmod(broker.workdir, 0o777)
    broker.start()
    db = (
        str(Path(tmp) / "fleet.db")
        if backend == "sqlite"
        else os.environ.get("FLEET_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    prefix = "" if backend == "sqlite" else f"b{uuid.uuid4().hex[:8]}_"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    try:
        first = Store(db, prefix=prefix, rollups=rollups)  # create tables once
        if rollups and expired:
            _prefill_expired(first, expired)
            # a recent row above the expired ones: SQLite reuses the highest rowids once deleted
            first.ingest([Incoming("telemetry", "old-sentinel", b'{"boot":"s","seq":1}', time.time())])
        with first.engine.connect() as c:
            mark = int(
                c.execute(sa.select(sa.func.coalesce(sa.func.max(first.telemetry.c.id), 0))).scalar() or 0
            )
        first.close()
        ids = [f"w{i}" for i in range(workers)]
        for wid in ids:  # persistent sessions with the shared subscription
            ev = ctx.Event()
            p = ctx.Process(target=_worker, args=(broker.url, db, prefix, wid, ev, ev, ev, q, True, rollups))
            p.start()
            p.join(30)
        pub = ctx.Process(target=_publisher, args=(broker.url, devices, n, q))
        pub.start()
        pub.join(600)
        pubinfo = q.get(timeout=5)
        go, done = ctx.Event(), ctx.Event()
        procs, readies = [], []
        for wid in ids:
            ready = ctx.Event()
            p = ctx.Process(
                target=_worker, args=(broker.url, db, prefix, wid, ready, go, done, q, False, rollups)
            )
            p.start()
            procs.append(p)
            readies.append(ready)
        for r in readies:
            r.wait(60)
        store = Store(db, prefix=prefix, rollups=rollups)
        tc = store.telemetry.c
        new_rows = sa.select(sa.func.count()).select_from(store.telemetry).where(tc.id > mark)

        def count() -> int:
            with store.engine.connect() as c:
                return int(c.execute(new_rows).scalar() or 0)

        b0 = _proc_cpu(broker.proc.pid)
        t0 = time.perf_counter()
        go.set()
        deadline = t0 + 600
        while time.perf_counter() < deadline:
            if count() >= n:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        broker_cpu = _proc_cpu(broker.proc.pid) - b0
        stored = count()
        with store.engine.connect() as c:
            rollup_rows = int(
                c.execute(sa.select(sa.func.count()).select_from(store.rollups.minute)).scalar() or 0
            )
        done.set()
        results = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        if backend != "sqlite":
            store.drop_all()
        store.close()
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    cpu = sum(r["cpu_s"] for r in results)
    return {
        "workers": workers,
        "backend": backend,
        "rollups": rollups,
        "expired": expired if rollups else 0,
        "pruned": sum(r["pruned"] for r in results),
        "minute_rollup_rows": rollup_rows,
        "messages": n,
        "stored": stored,
        "seconds": round(elapsed, 2),
        "msg_per_s": round(stored / elapsed),
        "cpu_us_per_msg": round(1e6 * cpu / max(1, stored), 1),
        "per_worker": [
            {k: r[k] for k in ("worker", "received", "stored", "duplicate", "batches", "cpu_s")}
            for r in results
        ],
        "broker_cpu_s": round(broker_cpu, 2),
        "payload_bytes": round(pubinfo["avg_bytes"]),
        "publish_s": round(pubinfo["publish_s"], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rollups", choices=["on", "off", "both"], default="on")
    ap.add_argument("--expired", type=int, default=-1, help="expired rows to prune (default messages/2)")
    args = ap.parse_args()
    expired = args.messages // 2 if args.expired < 0 else args.expired
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.rollups]
    rows = []
    for w in args.workers:
        for mode in modes:
            r = run_case(w, args.messages, args.devices, args.db, mode, expired)
            rows.append(r)
            print(json.dumps(r), flush=True)
    short = [r for r in rows if r["stored"] < r["messages"]]
    print(
        "\n| workers | store | rollups + retention | messages | seconds | msg/s | msg/s per worker | "
        "CPU µs/msg | pruned meanwhile | payload bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['backend']} | {'on' if r['rollups'] else 'off'} | {r['stored']} | "
            f"{r['seconds']} | {r['msg_per_s']} | {round(r['msg_per_s'] / r['workers'])} | "
            f"{r['cpu_us_per_msg']} | {r['pruned']} | {r['payload_bytes']} |"
        )
    for w in args.workers:
        pair = [r for r in rows if r["workers"] == w]
        if len(pair) == 2:
            print(
                f"\n{w} worker(s): with / without rollups {pair[1]['msg_per_s'] / pair[0]['msg_per_s']:.2f}x"
            )
    same = [r for r in rows if r["rollups"] == rows[0]["rollups"]]
    if len(args.workers) > 1 and len(same) > 1:
        print(
            f"\nscaling {same[-1]['workers']} vs {same[0]['workers']} workers: "
            f"{same[-1]['msg_per_s'] / same[0]['msg_per_s']:.2f}x"
        )
    if short:  # a rate over an incomplete ingest is not a result
        sys.exit(
            "FAIL: fewer messages stored than sent: "
            + ", ".join(f"{r['workers']} worker(s) {r['stored']}/{r['messages']}" for r in short)
        )


if __name__ == "__main__":
    main()
