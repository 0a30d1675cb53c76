"""Fleet soak: N simulated devices for M minutes, a broker restart in the middle, nothing lost.

    .venv/bin/python -m benchmarks.fleet_soak [--devices 1000] [--minutes 10] [--interval 30]

A local mosquitto (persistence on), one `fleetctl serve` worker as a subprocess (SQLite store),
and N simulated agents in this process (the real FleetLink: spool, jittered reconnects, QoS 1;
simulated sensors and media stats). Halfway through, the broker is restarted; the figure of merit
is how long each device took to reconnect after the broker was back (histogram: spread by jitter,
all within 30 s). At the end every device's (boot, seq) stream in the fleet store must be complete:
1..last with no gap and no duplicate. Also reports telemetry bytes per device per hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_agent import protocol  # noqa: E402
from fleet.core_cli import raise_nofile  # noqa: E402
from fleet.simulate import Simulation, percentile  # noqa: E402
from fleet.store import Store  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

MQTT_OVERHEAD = 2 + 2 + 2 + 1 + 4  # fixed header, topic length, packet id, properties length, PUBACK


def histogram(values: list[float], bin_s: float, limit: float) -> list[tuple[str, int]]:
    bins: dict[int, int] = {}
    for v in values:
        bins[int(v // bin_s)] = bins.get(int(v // bin_s), 0) + 1
    top = max(bins) if bins else 0
    return [
        (f"{i * bin_s:4.0f}-{(i + 1) * bin_s:<4.0f}s", bins.get(i, 0))
        for i in range(int(max(top + 1, limit / bin_s)))
    ]


async def soak(
    devices: int, minutes: float, interval: float, reconnect_min: float, reconnect_max: float
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fleet-soak-"))
    os.chmod(tmp, 0o777)
    broker = Mosquitto(tmp / "broker", extra_config="max_connections -1\n")
    os.chmod(broker.workdir, 0o777)
    broker.start()
    db = str(tmp / "fleet.db")
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.cli",
            "serve",
            "--mqtt",
            broker.url,
            "--db",
            db,
            "--share-group",
            "",
            "--stats-interval",
            "60",
        ],
        cwd=ROOT,
        stdout=open(tmp / "serve.log", "w"),
        stderr=subprocess.STDOUT,
    )
    sim = Simulation(
        broker.url,
        devices,
        tmp / "sim",
        interval_s=interval,
        reconnect_min_s=reconnect_min,
        reconnect_max_s=reconnect_max,
    )
    result: dict = {
        "devices": devices,
        "minutes": minutes,
        "interval_s": interval,
        "reconnect_min_s": reconnect_min,
        "reconnect_max_s": reconnect_max,
    }
    try:
        await asyncio.sleep(2.0)
        t0 = time.monotonic()
        await sim.start(spread_s=min(interval, 10.0))
        n = await sim.wait_connected(60)
        result["connected_at_start"] = n
        print(f"{n}/{devices} connected after {time.monotonic() - t0:.1f} s", flush=True)
        half = t0 + minutes * 30
        while time.monotonic() < half:
            await asyncio.sleep(5)
        print("restarting the broker", json.dumps(sim.totals()), flush=True)
        before = [link.conn.connects for link in sim.links]
        t_down = time.monotonic()
        broker.stop()
        broker.start()
        t_up_wall = time.time()
        result["broker_down_s"] = round(time.monotonic() - t_down, 2)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(
            link.conn.connects <= b or not link.connected for link, b in zip(sim.links, before, strict=True)
        ):
            await asyncio.sleep(0.1)
        # a device that never reconnected still has its old connected_at: it never came back
        delays = [
            link.conn.connected_at - t_up_wall if link.conn.connects > b and link.connected else float("inf")
            for link, b in zip(sim.links, before, strict=True)
        ]
        result["reconnect_s"] = {
            "p50": round(percentile(delays, 0.5), 2),
            "p90": round(percentile(delays, 0.9), 2),
            "max": round(max(delays), 2),
            "within_30s": sum(d <= 30 for d in delays),
            "never": sum(d == float("inf") for d in delays),
        }
        result["reconnect_histogram"] = histogram([d for d in delays if d != float("inf")], 1.0, 10.0)
        print("reconnected", json.dumps(result["reconnect_s"]), flush=True)
        end = t0 + minutes * 60
        while time.monotonic() < end:
            await asyncio.sleep(5)
        # stop sampling, let every spool drain, then stop cleanly
        for link in sim.links:
            for t in link._tasks[1:]:
                t.cancel()
        deadline = time.monotonic() + 60
        await asyncio.sleep(1.0)
        while time.monotonic() < deadline and (
            sum(link.health()["spool"]["depth"] for link in sim.links) > 0
            or any(link._inflight for link in sim.links)
        ):
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        totals = sim.totals()
        await sim.stop()
        await asyncio.sleep(3.0)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        broker.stop()
    store = Store(db)
    lost = dup = gaps = 0
    sizes = []
    for link in sim.links:
        seqs = sorted(s for _, s in store.telemetry_seqs(link.device_id)) + [
            e["seq"] for e in store.event_rows(link.device_id)
        ]
        seqs.sort()
        expected = link._seq
        lost += max(0, expected - len(set(seqs)))
        dup += len(seqs) - len(set(seqs))
        if sorted(set(seqs)) != list(range(1, expected + 1)):
            gaps += 1
            if gaps <= 3:
                missing = sorted(set(range(1, expected + 1)) - set(seqs))
                print(f"{link.device_id}: expected 1..{expected}, missing {missing[:10]}", flush=True)
    with store.engine.connect() as conn:
        import sqlalchemy as sa

        sizes = [len(r[0]) for r in conn.execute(sa.select(store.telemetry.c.payload).limit(5000))]
        topic_len = len(protocol.telemetry("sim-00000"))
    store.close()
    avg = sum(sizes) / max(1, len(sizes))
    per_hour = 3600 / interval
    result.update(
        {
            "samples": totals["samples"],
            "lost": lost,
            "duplicates": dup,
            "devices_with_gaps": gaps,
            "telemetry_payload_bytes": round(avg),
            "telemetry_bytes_per_hour_per_device": round(per_hour * avg),
            "wire_bytes_per_hour_per_device": round(per_hour * (avg + topic_len + MQTT_OVERHEAD)),
        }
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=30.0, help="telemetry interval, s")
    ap.add_argument(
        "--reconnect-min",
        type=float,
        default=4.0,
        help="mqtt.reconnect_min_s: the first retry is uniform in [0, this] (default %(default)s)",
    )
    ap.add_argument("--reconnect-max", type=float, default=20.0, help="mqtt.reconnect_max_s, the backoff cap")
    args = ap.parse_args()
    raise_nofile()
    logging.basicConfig(level=logging.ERROR)
    res = asyncio.run(soak(args.devices, args.minutes, args.interval, args.reconnect_min, args.reconnect_max))
    print(json.dumps(res))
    print("\nreconnect delay after the broker came back (1 s bins):")
    for label, count in res["reconnect_histogram"]:
        print(f"  {label} {count:5d} {'#' * max(0, round(200 * count / max(1, res['devices'])))}")
    ok = (
        res["lost"] == 0
        and res["duplicates"] == 0
        and res["reconnect_s"]["never"] == 0
        and res["reconnect_s"]["within_30s"] == res["devices"]
    )
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
