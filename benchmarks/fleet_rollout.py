"""Fleet rollout end to end: 1,000 simulated devices, one `fleetctl serve` killed mid-wave and restarted.

    .venv/bin/python -m benchmarks.fleet_rollout [--devices 1000] [--db sqlite|postgresql] [--no-kill]
    .venv/bin/python -m benchmarks.fleet_rollout --degrade [--soak 12 --interval 3]

Method: a local mosquitto; one `fleetctl serve --http` worker subprocess (persistent session, store
on SQLite or PostgreSQL) runs the rollout driver and the API; N simulated devices
(fleet/simulate.py, the real fleet link) answer ``ota.install`` with the OTA events a real agent
sends (fleet/sim_ota.py, ``--install-s`` from accepted to committed). The job (canary, then
growing batches, health gate with ``--soak``) is created through ``POST /api/v1/rollouts``, the
request ``fleetctl ota rollout`` sends. When a batch is installing the worker is killed with
SIGKILL and started again (same worker id: its MQTT session holds the events queued meanwhile; a
new owner id: it takes the lease once it expires). Figures: time to complete, how long the job
stood still after the kill, devices whose install was sent twice (the devices' own count; must be
0), devices failed or timed out.

``--degrade``: the new version makes every updated device's viewers lossy (fleet.sim_media fault
``lossy``: rendered fps and freezes degrade). Expected: the health gate compares the canary wave
with the devices not yet updated over the soak window, halts the job, rolls the canaries back and
never installs on the rest. Figures: time to the gate's verdict and to the end of the rollback,
devices updated, rolled back, untouched, and the gate's two groups' figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet.ota.jobs import GatePolicy, Jobs  # noqa: E402
from fleet.ota.rollout import Policy  # noqa: E402
from fleet.sim_ota import SimOtaOptions  # noqa: E402
from fleet.simulate import Simulation  # noqa: E402
from fleet.store import Store  # noqa: E402
from tests.support.mosquitto import Mosquitto, free_port  # noqa: E402

PG_URL = os.environ.get("FLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHA = "cd" * 32


def _serve(url: str, db: str, prefix: str, log: Path, lease_s: float, http_port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.cli",
            "serve",
            "--mqtt",
            url,
            "--db",
            db,
            "--prefix",
            prefix,
            "--worker-id",
            "bench",
            "--rollout-lease",
            str(lease_s),
            "--http",
            f"127.0.0.1:{http_port}",
        ],
        cwd=ROOT,
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
    )


def _create_via_api(port: int, body: dict, timeout_s: float = 60.0) -> dict:
    """``POST /api/v1/rollouts`` (loopback: no token), retried until the API is up."""
    deadline = time.monotonic() + timeout_s
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/rollouts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    while True:
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError:
            raise
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def run(
    devices: int,
    db_kind: str,
    kill: bool,
    install_s: float,
    soak_s: float,
    interval_s: float,
    lease_s: float = 15.0,
    degrade: bool = False,
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fleet-rollout-"))
    broker = Mosquitto(tmp / "broker", extra_config="max_connections -1\nmax_queued_messages 100000\n")
    broker.start()
    db, prefix = (str(tmp / "fleet.db"), "") if db_kind == "sqlite" else (PG_URL, f"b{uuid.uuid4().hex[:8]}_")
    store = Store(db, prefix=prefix)
    jobs = Jobs(store)
    http_port = free_port()
    serve = _serve(broker.url, db, prefix, tmp / "serve.log", lease_s, http_port)
    faults = frozenset({"lossy"}) if degrade else frozenset()
    sim = Simulation(
        broker.url,
        devices,
        tmp / "sim",
        interval_s=interval_s,
        reconnect_min_s=0.5,
        ota=SimOtaOptions(install_s=install_s, versions={SHA: "2.0.0"}, faults_after=faults),
    )
    result: dict = {
        "devices": devices,
        "db": db_kind,
        "install_s": install_s,
        "soak_s": soak_s,
        "telemetry_interval_s": interval_s,
        "killed": kill,
        "lease_s": lease_s,
        "degrade": degrade,
    }
    try:
        await sim.start(spread_s=5.0)
        result["connected"] = await sim.wait_connected(120)
        deadline = time.monotonic() + 120
        while len(store.list_devices("sim")) < devices and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        targets = [d["device"] for d in store.list_devices("sim")]
        policy = Policy(
            canary=10,
            batch_size=100,
            growth=2.0,
            max_failure_rate=0.05,
            min_executed=10,
            in_progress_timeout_s=120,
        )
        result["policy"] = {"canary": 10, "batch_size": 100, "growth": 2.0}
        body = {
            "version": "2.0.0",
            "url": "http://127.0.0.1:9/v2.tar",
            "sha256": SHA,
            "size": 1000000,
            "devices": targets,
            "policy": asdict(policy),
            "gate": asdict(GatePolicy(soak_s=soak_s)),
        }
        t0 = time.monotonic()
        rid = (await asyncio.to_thread(_create_via_api, http_port, body))["id"]
        result["create_s"] = round(time.monotonic() - t0, 2)
        killed_at = resumed_at = verdict_at = None
        last = ""
        while True:
            job = jobs.get(rid)
            r = job.rollout
            counts = {k: v for k, v in r.counts().items() if v}
            line = f"{job.status} wave {r.waves} {counts} owner {job.owner}"
            if line != last:
                print(f"{time.monotonic() - t0:6.1f}s {line}", flush=True)
                last = line
            if verdict_at is None and job.status != "running":
                verdict_at = time.monotonic()
            if job.status not in ("running", "rolling_back"):
                break
            prog = r.in_progress()
            if (
                kill
                and killed_at is None
                and r.waves >= 2
                and prog
                and sum(r.per_device[d].phase not in ("dispatched", "") for d in prog) >= len(prog) // 2
            ):
                serve.send_signal(signal.SIGKILL)
                serve.wait()
                killed_at, dead_owner = time.monotonic(), job.owner
                result["killed_with_in_progress"] = len(prog)
                print(f"killed the worker with {len(prog)} devices in progress", flush=True)
                serve = _serve(broker.url, db, prefix, tmp / "serve.log", lease_s, http_port)
            if killed_at is not None and resumed_at is None and job.owner not in ("", dead_owner):
                resumed_at = time.monotonic()
            await asyncio.sleep(0.25)
        job = jobs.get(rid)
        result["status"] = job.status
        result["reason"] = job.rollout.reason
        result["complete_s"] = round(time.monotonic() - t0, 1)
        result["waves"] = job.rollout.waves
        result["counts"] = {k: v for k, v in job.rollout.counts().items() if v}
        if killed_at is not None:
            result["takeover_s"] = round((resumed_at or time.monotonic()) - killed_at, 1)
        result["installs_sent_twice"] = sum(o.installs > 1 for o in sim.otas)
        result["dispatched_twice_in_store"] = sum(v > 1 for v in job.dispatches.values())
        result["not_updated"] = sum(o.sensors.version != "2.0.0" for o in sim.otas)
        if degrade:
            gate = job.last_gate or {}
            result["verdict_s"] = round((verdict_at or time.monotonic()) - t0, 1)
            result["updated"] = sum(o.installs > 0 for o in sim.otas)
            result["rolled_back"] = sum(o.rollbacks > 0 for o in sim.otas)
            result["untouched"] = sum(o.installs == 0 for o in sim.otas)
            result["gate"] = {
                side: {
                    k: (round(v, 2) if isinstance(v, float) else v)
                    for k, v in gate.get(side, {}).items()
                    if k in ("devices", "rendered_fps", "freeze_rate")
                }
                for side in ("updated", "baseline")
            }
    finally:
        await sim.stop()
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        broker.stop()
        if db_kind == "postgresql":
            store.drop_all()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--no-kill", action="store_true", help="do not kill the worker mid-wave")
    ap.add_argument("--install-s", type=float, default=3.0)
    ap.add_argument("--soak", type=float, default=2.0)
    ap.add_argument("--interval", type=float, default=5.0, help="simulated telemetry interval (s)")
    ap.add_argument("--lease", type=float, default=15.0, help="fleetctl serve --rollout-lease (s)")
    ap.add_argument(
        "--degrade",
        action="store_true",
        help="the new version degrades its viewers: the health gate must halt and roll back (no kill)",
    )
    args = ap.parse_args()
    kill = not args.no_kill and not args.degrade
    res = asyncio.run(
        run(
            args.devices,
            args.db,
            kill,
            args.install_s,
            args.soak,
            args.interval,
            args.lease,
            degrade=args.degrade,
        )
    )
    print(json.dumps(res, indent=1))
    if args.degrade:
        ok = (
            res.get("status") == "halted"
            and "health gate" in res.get("reason", "")
            and res.get("rolled_back") == res.get("updated")
            and res.get("installs_sent_twice") == 0
        )
        return 0 if ok else 1
    return 0 if res.get("installs_sent_twice") == 0 and res.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
