"""Fleet ingest rate: one `fleetctl serve` worker, then two on the shared subscription.

    .venv/bin/python -m benchmarks.fleet_ingest [--messages 50000] [--devices 1000] [--db sqlite|postgresql]

Method: a local mosquitto with persistence; the workers first connect once to create their
persistent sessions (shared subscription ``$share/fleet/dev/+/telemetry``) and disconnect; a
publisher process then loads N telemetry messages (the simulated agents' real payload: system,
media session and audio sections, ~1 KB) from D device ids into the broker, where they queue for
the offline sessions; then the worker processes start and the clock runs until every message is
in the store. This isolates the workers' ingest (MQTT receive, JSON, de-dup insert, registry
upsert) from the publisher. CPU per message is the workers' own CPU time (user + system, all
threads) divided by the messages they stored.
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
) -> None:
    from fleet.service import FleetService
    from fleet.store import Store

    async def run() -> None:
        store = Store(db, prefix=prefix)
        svc = FleetService(url, store, worker_id=wid, rule_interval_s=3600)
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
        q.put({"worker": wid, "cpu_s": cpu, **svc.stats})

    asyncio.run(run())


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(workers: int, n: int, devices: int, backend: str) -> dict:
    from fleet.store import Store
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
        Store(db, prefix=prefix).close()  # create tables once
        ids = [f"w{i}" for i in range(workers)]
        for wid in ids:  # persistent sessions with the shared subscription
            ev = ctx.Event()
            p = ctx.Process(target=_worker, args=(broker.url, db, prefix, wid, ev, ev, ev, q, True))
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
            p = ctx.Process(target=_worker, args=(broker.url, db, prefix, wid, ready, go, done, q, False))
            p.start()
            procs.append(p)
            readies.append(ready)
        for r in readies:
            r.wait(60)
        store = Store(db, prefix=prefix)
        b0 = _proc_cpu(broker.proc.pid)
        t0 = time.perf_counter()
        go.set()
        deadline = t0 + 600
        while time.perf_counter() < deadline:
            if store.counts()["telemetry"] >= n:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        broker_cpu = _proc_cpu(broker.proc.pid) - b0
        stored = store.counts()["telemetry"]
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
    args = ap.parse_args()
    rows = []
    for w in args.workers:
        r = run_case(w, args.messages, args.devices, args.db)
        rows.append(r)
        print(json.dumps(r), flush=True)
    short = [r for r in rows if r["stored"] < r["messages"]]
    print("\n| workers | store | messages | seconds | msg/s | CPU µs/msg | payload bytes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['backend']} | {r['stored']} | {r['seconds']} | {r['msg_per_s']} | "
            f"{r['cpu_us_per_msg']} | {r['payload_bytes']} |"
        )
    if len(rows) > 1:
        print(
            f"\nscaling {rows[-1]['workers']} vs {rows[0]['workers']} workers: "
            f"{rows[-1]['msg_per_s'] / rows[0]['msg_per_s']:.2f}x"
        )
    if short:  # a rate over an incomplete ingest is not a result
        sys.exit(
            "FAIL: fewer messages stored than sent: "
            + ", ".join(f"{r['workers']} worker(s) {r['stored']}/{r['messages']}" for r in short)
        )


if __name__ == "__main__":
    main()
