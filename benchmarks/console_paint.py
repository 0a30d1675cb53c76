"""Web console speed with 10,000 devices (PostgreSQL): first paint in headless Chromium, API p95.

    .venv/bin/python -m benchmarks.console_paint [--devices 10000] [--loads 10] [--requests 200]
        [--rollout-devices 1000] [--db postgresql|sqlite|URL]

Method: the registry is written through the store (``benchmarks.fleet_api.fill``: 50 groups,
3 versions, 5 % lost with a P1 ``offline`` alert) plus a P2 alert on 2 % and a P3 on 1 % of the
devices, an acknowledgement on a tenth of the P1s, an hour of telemetry for one device (its
rollups feed the device page's charts) and a rollout job over ``--rollout-devices`` (1,000),
in tables with a fresh prefix, dropped afterwards. The real API and console
(``fleet.api.server.ApiServer``, no MQTT session, loopback: no token) listen on a free port.
Each page (overview, device list, device, alert board, rollout) is loaded ``--loads`` times in a
fresh browser context (cold: no cache) of Debian's Chromium, headless; per load: ``first-paint``
and ``first-contentful-paint`` from the Paint Timing API, ``view ready`` (the console's
``console-view-ready`` mark: the page's figures are on screen, device charts excepted), the API
requests it made and the bytes they answered.
The run fails if any request asks the device list for more than 100 rows. Then the device-list
API is timed alone as in benchmarks.fleet_api (the console's page: ``limit=50``, and the next
page by cursor) and the overview's aggregate query, each ``--requests`` times after 20 warm-ups.
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
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import sqlalchemy as sa

from benchmarks.fleet_api import PG_URL, fill, pct
from fleet.api.server import ApiServer
from fleet.ota.jobs import GatePolicy, Jobs
from fleet.ota.rollout import Policy
from fleet.silences import SilenceStore
from fleet.store import Incoming, Store
from fleet.tokens import TokenStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MAX_DEVICE_ROWS = 100


def extra(store: Store, n: int, rollout_devices: int = 1000) -> str:
    """Alerts, acks, telemetry and a rollout on top of ``fill``; returns the rollout id."""
    now = time.time()
    seq = 0
    batch: list[Incoming] = []
    for i in range(n):
        for share, sev, code in ((50, "P2", "fps_low"), (100, "P3", "disk")):
            if i % share == 3:
                seq += 1
                body = {
                    "boot": "b1",
                    "seq": seq,
                    "ts": now - i,
                    "type": "alert",
                    "severity": sev,
                    "code": code,
                }
                batch.append(
                    Incoming("events", f"dev-{i:05d}", json.dumps({**body, "active": True}).encode(), now)
                )
    for k in range(60):
        ts = now - 3540 + k * 60
        health = {
            "system": {"cpu_pct": 20.0 + k % 7, "temperature_c": 50 + k * 0.05},
            "media": {"video": {"fps": 29.5}},
        }
        body = {"boot": "b1", "seq": 100000 + k, "ts": ts, "health": health}
        batch.append(Incoming("telemetry", "dev-00001", json.dumps(body).encode(), ts))
    store.ingest(batch)
    for i in range(7, n, 200):  # a tenth of the lost devices' P1s acknowledged
        store.ack_alert(f"dev-{i:05d}", "offline", "bench", "seen")
    SilenceStore(store.engine, store.prefix)
    jobs = Jobs(store)
    devs = [f"dev-{i:05d}" for i in range(min(n, rollout_devices))]
    rid = str(jobs.create("1.3.0", devs, {}, Policy(canary=1, batch_size=50), GatePolicy()))
    d = jobs.devices.c
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(jobs.devices)
            .where(d.rollout_id == rid, d.pos < 101)
            .values(state="succeeded", wave=sa.case((d.pos == 0, 0), else_=1 + (d.pos - 1) / 50))
        )
    return rid


async def load_page(browser: Any, url: str) -> dict[str, Any]:
    ctx = await browser.new_context()
    page = await ctx.new_page()
    requests: list[str] = []
    sizes: list[int] = []
    page.on("request", lambda r: requests.append(r.url) if "/api/" in r.url else None)

    async def on_response(r: Any) -> None:
        if "/api/" in r.url:
            try:
                sizes.append(len(await r.body()))
            except Exception:
                pass

    page.on("response", lambda r: asyncio.ensure_future(on_response(r)))
    t0 = time.perf_counter()
    await page.goto(url)
    await page.wait_for_selector("main[data-ready]", timeout=30000)
    wall = time.perf_counter() - t0
    marks = await page.evaluate(
        """() => Object.fromEntries([...performance.getEntriesByType('paint'),
                 ...performance.getEntriesByName('console-view-ready')].map(e => [e.name, e.startTime]))"""
    )
    await asyncio.sleep(0.05)
    await ctx.close()
    return {"marks": marks, "wall": wall, "requests": requests, "bytes": sum(sizes)}


async def time_api(url: str, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as http:
        for i in range(20 + n):
            t0 = time.perf_counter()
            async with http.get(url) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            if i >= 20:
                out.append(time.perf_counter() - t0)
    return out


def device_rows_asked(urls: list[str]) -> int:
    worst = 0
    for u in urls:
        p = urlparse(u)
        if p.path == "/api/v1/devices":
            worst = max(worst, int(parse_qs(p.query).get("limit", ["100"])[0]))
    return worst


async def run(args: argparse.Namespace) -> int:
    from playwright.async_api import async_playwright

    url = {"postgresql": PG_URL, "sqlite": os.path.join(tempfile.mkdtemp(prefix="console-"), "fleet.db")}.get(
        args.db, args.db
    )
    store = Store(url, prefix=f"bench{uuid.uuid4().hex[:8]}_")
    tokens = TokenStore(store.engine, store.prefix)
    silences = SilenceStore(store.engine, store.prefix)
    try:
        t0 = time.perf_counter()
        fill(store, args.devices)
        rid = extra(store, args.devices, args.rollout_devices)
        print(
            f"store {store.dialect}: {args.devices} devices and their alerts written "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        api = ApiServer(store, "127.0.0.1", 0)
        await api.start()
        try:
            pages = [
                ("overview", "/#/"),
                ("device list", "/#/devices"),
                ("device", "/#/device/dev-00001"),
                ("alert board", "/#/alerts"),
                (f"rollout ({min(args.devices, args.rollout_devices):,} devices)", f"/#/rollout/{rid}"),
            ]
            print(
                f"{'page':26} {'FP p50':>7} {'FP max':>7} {'FCP p50':>8} {'ready p50':>10} {'ready max':>10} "
                f"{'API calls':>9} {'API KB':>7}"
            )
            worst_fp = 0.0
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                await load_page(browser, api.url + "/")  # warm the browser process and the server
                for name, path in pages:
                    loads = [await load_page(browser, api.url + path) for _ in range(args.loads)]
                    fp = [x["marks"].get("first-paint", float("nan")) for x in loads]
                    fcp = [x["marks"].get("first-contentful-paint", float("nan")) for x in loads]
                    ready = [x["marks"].get("console-view-ready", float("nan")) for x in loads]
                    asked = max(device_rows_asked(x["requests"]) for x in loads)
                    assert asked <= MAX_DEVICE_ROWS, f"{name}: asked the device list for {asked} rows"
                    worst_fp = max(worst_fp, max(fp))
                    print(
                        f"{name:26} {statistics.median(fp):7.0f} {max(fp):7.0f} "
                        f"{statistics.median(fcp):8.0f} "
                        f"{statistics.median(ready):10.0f} {max(ready):10.0f} {len(loads[0]['requests']):9d} "
                        f"{loads[0]['bytes'] / 1024:7.1f}",
                        flush=True,
                    )
                await browser.close()
            print(f"worst first paint over every load: {worst_fp:.0f} ms (target <= 1500 ms)")
            base = api.url + "/api/v1"
            print(f"{'API (alone)':36} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
            for name, u in (
                ("devices?limit=50 (console page)", f"{base}/devices?limit=50"),
                ("devices?limit=50&after= (next)", f"{base}/devices?limit=50&after=dev-05000"),
                ("devices?severity=P1&limit=50", f"{base}/devices?severity=P1&limit=50"),
                ("overview (aggregates)", f"{base}/overview?hours=24"),
                ("alerts?severity=P1&limit=100", f"{base}/alerts?severity=P1&limit=100"),
            ):
                times = await time_api(u, args.requests)
                print(
                    f"{name:36} {statistics.median(times) * 1e3:8.1f} {pct(times, 0.95) * 1e3:8.1f} "
                    f"{max(times) * 1e3:8.1f}",
                    flush=True,
                )
        finally:
            await api.stop()
    finally:
        if store.dialect == "postgresql":
            tokens.drop()
            silences.drop()
            store.drop_all()
        store.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--rollout-devices", type=int, default=1000, help="devices in the rollout (default 1000)")
    ap.add_argument("--loads", type=int, default=10, help="cold loads per page (default 10)")
    ap.add_argument("--requests", type=int, default=200, help="timed API requests per query (default 200)")
    ap.add_argument(
        "--db", default="postgresql", help="postgresql (FLEET_TEST_PG_URL), sqlite, or a store URL"
    )
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
