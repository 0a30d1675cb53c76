"""Fleet API latency: GET /api/v1/devices p50/p95 over a registry of 10,000 devices (PostgreSQL).

    .venv/bin/python -m benchmarks.fleet_api [--devices 10000] [--requests 200] [--db postgresql|sqlite|URL]

Method: registry rows are written through the store (``Store.ingest`` of status messages: 50
groups, 3 versions, 5 % lost, so they hold a P1 ``offline`` alert), in tables with a fresh prefix
that are dropped afterwards. The real API (``fleet.api.server.ApiServer``, no MQTT session) listens
on a free loopback port; one aiohttp client sends the requests one after another, after 20 warm-up
requests, and times each from send to the last byte of the body. Each query shape is timed
separately (default page of 100, a filter, a deep offset, a bearer token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid

import aiohttp

from fleet.api.server import ApiServer
from fleet.store import Incoming, Store
from fleet.tokens import TokenStore

PG_URL = os.environ.get("FLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def fill(store: Store, n: int) -> None:
    now = time.time()
    batch: list[Incoming] = []
    for i in range(n):
        lost = i % 20 == 7
        body = {
            "online": not lost,
            "boot": "b1",
            "version": ("1.0.0", "1.1.0", "1.2.0")[i % 3],
            "slot": "a",
            "group": f"g{i % 50:02d}",
            "hardware": "pi4",
            "ts": now,
        }
        if lost:
            body["reason"] = "lost"
        batch.append(Incoming("status", f"dev-{i:05d}", json.dumps(body).encode(), now))
        if len(batch) == 2000:
            store.ingest(batch)
            batch = []
    if batch:
        store.ingest(batch)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def measure(url: str, requests: int, token: str = "") -> tuple[list[float], int]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    times = []
    rows = 0
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(20 + requests):
            t0 = time.perf_counter()
            async with http.get(url) as resp:
                body = await resp.read()
                assert resp.status == 200, (resp.status, body[:200])
            if i >= 20:
                times.append(time.perf_counter() - t0)
        rows = len(json.loads(body)["devices"])
    return times, rows


async def run(args: argparse.Namespace) -> int:
    url = {
        "postgresql": PG_URL,
        "sqlite": os.path.join(tempfile.mkdtemp(prefix="fleet-api-"), "fleet.db"),
    }.get(args.db, args.db)
    store = Store(url, prefix=f"bench{uuid.uuid4().hex[:8]}_")
    tokens = TokenStore(store.engine, store.prefix)
    try:
        t0 = time.perf_counter()
        fill(store, args.devices)
        print(f"store {store.dialect}: {args.devices} devices written in {time.perf_counter() - t0:.1f} s")
        token = tokens.create("viewer", "bench")[1]
        api = ApiServer(store, "127.0.0.1", 0)
        await api.start()
        try:
            base = f"{api.url}/api/v1/devices"
            shapes = [
                ("default page (limit 100)", base, ""),
                ("limit 1000", base + "?limit=1000", ""),
                ("group filter", base + "?group=g07", ""),
                ("offline (severity P1)", base + "?severity=P1", ""),
                ("deep offset", base + f"?offset={max(0, args.devices - 100)}", ""),
                ("deep cursor (after=)", base + f"?after=dev-{max(0, args.devices - 101):05d}", ""),
                ("id prefix", base + "?prefix=dev-05", ""),
                ("default page + bearer token", base, token),
            ]
            print(f"{'query':30} {'rows':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
            for name, u, tok in shapes:
                times, rows = await measure(u, args.requests, tok)
                print(
                    f"{name:30} {rows:5d} {statistics.median(times) * 1e3:8.1f} "
                    f"{pct(times, 0.95) * 1e3:8.1f} {max(times) * 1e3:8.1f}",
                    flush=True,
                )
        finally:
            await api.stop()
    finally:
        if store.dialect == "postgresql":
            tokens.drop()
            store.drop_all()
        store.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument(
        "--db", default="postgresql", help="postgresql (FLEET_TEST_PG_URL), sqlite, or a store URL"
    )
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
