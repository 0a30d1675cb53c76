"""`fleetctl ota rollout|rollouts|rollout-status|rollout-halt|rollout-resume|status` (fleet.ota.cli).

``ota rollout`` creates a rollout job in the fleet store (``--db`` / ``FLEET_DB``) that the
``fleetctl serve`` workers drive (fleet/ota/driver.py); ``--follow`` shows its progress. With
``--state FILE`` it runs the rollout in this process instead, over ``--mqtt`` / ``FLEET_MQTT_URL``
(fleet/ota/rollout_runner.py): the rollout then stops when this process does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tarfile
import time
from pathlib import Path

from fleet.ota.rollout import Policy, Rollout
from ota.bundle import MAX_MANIFEST_BYTES, Manifest, sha256_file


def register(osub: argparse._SubParsersAction) -> None:
    p = osub.add_parser("rollout", help="roll a bundle out to a group: canary, batches, auto-halt")
    p.add_argument("bundle", type=Path)
    p.add_argument("--url", required=True, help="where devices download the bundle (e.g. fleetctl ota serve)")
    p.add_argument("--group", help="devices of this group in the fleet store")
    p.add_argument("--devices", help="comma-separated device ids (instead of --group)")
    p.add_argument(
        "--db",
        default=None,
        help="fleet store: SQLite path or postgresql:// URL (env FLEET_DB; default fleet.db)",
    )
    p.add_argument("--prefix", default="", help="table name prefix of the fleet store")
    p.add_argument("--mqtt", default=None, help="broker URL, with --state only (env FLEET_MQTT_URL)")
    p.add_argument("--ca", default="")
    p.add_argument("--cert", default="")
    p.add_argument("--key", default="")
    p.add_argument("--canary", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--growth", type=float, default=1.0, help="batch growth factor (2.0: exponential)")
    p.add_argument("--max-failure-rate", type=float, default=0.1)
    p.add_argument("--min-executed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0, help="per-device in-progress timeout (s)")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        help="run the rollout in this process, saving its state here (no job in the store)",
    )
    p.add_argument("--soak", type=float, default=300.0, help="health gate: soak window after each wave (s)")
    p.add_argument(
        "--max-alert-increase", type=float, default=0.5, help="P1/P2 alerts per device, updated - rest"
    )
    p.add_argument(
        "--max-crashloop-increase", type=float, default=0.1, help="share in a crash loop, updated - rest"
    )
    p.add_argument(
        "--max-freeze-rate-increase", type=float, default=2.0, help="viewer freeze_rate %%, updated - rest"
    )
    p.add_argument("--min-fps-ratio", type=float, default=0.8, help="viewer rendered_fps, updated / rest")
    p.add_argument(
        "--max-ns-rtf-ratio", type=float, default=1.5, help="noise suppression rtf, updated / rest"
    )
    p.add_argument("--follow", action="store_true", help="show the job's progress until it ends")
    p.set_defaults(func=cmd_rollout)

    p = osub.add_parser("rollouts", help="list the rollout jobs in the fleet store")
    _store_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rollouts)

    p = osub.add_parser("rollout-status", help="one rollout job: counts, gate, devices")
    _store_args(p)
    p.add_argument("id")
    p.add_argument("--follow", action="store_true", help="until the job ends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rollout_status)

    for name, what in (
        ("rollout-halt", "halt a running rollout job (pending devices are skipped)"),
        ("rollout-resume", "resume a halted rollout job (skipped devices are pending again)"),
    ):
        p = osub.add_parser(name, help=what)
        _store_args(p)
        p.add_argument("id")
        p.set_defaults(func=cmd_rollout_halt if name == "rollout-halt" else cmd_rollout_resume)

    p = osub.add_parser("status", help="each device's phase in the last rollout")
    p.add_argument("--state", type=Path, default=Path("rollout.json"))
    p.set_defaults(func=cmd_status)


def bundle_facts(path: Path) -> tuple[str, str, int]:
    """(version, sha256, size) of a bundle file; the devices verify the signature themselves."""
    with tarfile.open(path, "r|") as tar:
        first = tar.next()
        if first is None or first.name != "manifest.json" or first.size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{path} is not a bundle")
        version = Manifest.from_json(tar.extractfile(first).read()).version  # type: ignore[union-attr]
    return version, sha256_file(path), path.stat().st_size


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", default=None, help="SQLite path or postgresql:// URL (env FLEET_DB; default fleet.db)"
    )
    p.add_argument("--prefix", default="", help="table name prefix")


def db_url(arg: str | None) -> str:
    """``--db``, else ``FLEET_DB``, else ``fleet.db`` (read when the command runs)."""
    return arg or os.environ.get("FLEET_DB") or "fleet.db"


def select_devices(devices: str | None, group: str | None, db: str, prefix: str = "") -> list[str]:
    """The rollout's targets: an explicit comma-separated list, or every device of ``group`` in the fleet store."""
    if devices:
        return [d for d in devices.split(",") if d]
    if group:
        from fleet.store import Store

        store = Store(db, prefix=prefix)
        try:
            return [r["device"] for r in store.list_devices(group)]
        finally:
            store.close()
    raise ValueError("give --group or --devices")


def cmd_rollout(args: argparse.Namespace) -> int:
    from fleet.client import FleetClient
    from fleet.ota.rollout_runner import render, run_rollout

    if args.state is None:
        return create_job(args)
    mqtt_url = args.mqtt or os.environ.get("FLEET_MQTT_URL")
    if not mqtt_url:
        print("error: --state runs the rollout here and needs --mqtt (or FLEET_MQTT_URL)", file=sys.stderr)
        return 2
    try:
        version, sha, size = bundle_facts(args.bundle)
        devices = select_devices(args.devices, args.group, db_url(args.db), args.prefix)
        if not devices:
            print("error: no devices to update", file=sys.stderr)
            return 1
        rollout = Rollout(
            version,
            devices,
            Policy(
                canary=args.canary,
                batch_size=args.batch_size,
                growth=args.growth,
                max_failure_rate=args.max_failure_rate,
                min_executed=args.min_executed,
                in_progress_timeout_s=args.timeout,
            ),
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def show(r: Rollout) -> None:
        print(render(r), flush=True)

    async def main() -> Rollout:
        async with FleetClient(mqtt_url, ca_file=args.ca, cert_file=args.cert, key_file=args.key) as client:
            return await run_rollout(
                client, rollout, {"url": args.url, "sha256": sha, "size": size}, args.state, on_change=show
            )

    result = asyncio.run(main())
    return (
        0
        if result.status == "completed" and not (result.counts()["failed"] + result.counts()["timed_out"])
        else 1
    )


def cmd_status(args: argparse.Namespace) -> int:
    from fleet.ota.rollout_runner import load, render

    try:
        print(render(load(args.state)))
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read {args.state}: {exc}", file=sys.stderr)
        return 1
    return 0


# ---- jobs in the fleet store ------------------------------------------------------------------
def _jobs(args: argparse.Namespace):  # -> (Store, Jobs)
    from fleet.ota.jobs import Jobs
    from fleet.store import Store

    store = Store(db_url(args.db), prefix=args.prefix)
    return store, Jobs(store)


def create_job(args: argparse.Namespace) -> int:
    """``ota rollout`` without ``--state``: a job the fleet service drives."""
    from fleet.ota.jobs import GatePolicy

    try:
        version, sha, size = bundle_facts(args.bundle)
        store, jobs = _jobs(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        devices = select_devices(args.devices, args.group, db_url(args.db), args.prefix)
        if not devices:
            print(
                f"error: no devices to update (group {args.group!r} is empty in {store.url})", file=sys.stderr
            )
            return 1
        policy = Policy(
            canary=args.canary,
            batch_size=args.batch_size,
            growth=args.growth,
            max_failure_rate=args.max_failure_rate,
            min_executed=args.min_executed,
            in_progress_timeout_s=args.timeout,
        )
        gate = GatePolicy(
            soak_s=args.soak,
            max_alert_increase=args.max_alert_increase,
            max_crashloop_increase=args.max_crashloop_increase,
            max_freeze_rate_increase=args.max_freeze_rate_increase,
            min_fps_ratio=args.min_fps_ratio,
            max_ns_rtf_ratio=args.max_ns_rtf_ratio,
        )
        rid = jobs.create(version, devices, {"url": args.url, "sha256": sha, "size": size}, policy, gate)
        print(
            f"rollout {rid}: {version} to {len(devices)} devices; driven by the fleetctl serve workers "
            f"(fleetctl ota rollout-status {rid} --follow)",
            flush=True,
        )
        return follow(jobs, rid) if args.follow else 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def render_job(s: dict, width: int = 30) -> str:
    """One job's summary line: a progress bar over finished devices, then the counts and the gate."""
    c = s["counts"]
    done = sum(c.get(k, 0) for k in ("succeeded", "failed", "timed_out", "skipped"))
    frac = done / s["devices"] if s["devices"] else 1.0
    bar = "#" * int(frac * width)
    gate = s.get("last_gate") or {}
    line = (
        f"{s['id']} {s['version']:<10} {s['status']:<12} [{bar:<{width}}] {done}/{s['devices']} "
        + ", ".join(f"{k} {v}" for k, v in c.items())
    )
    if s.get("rolled_back"):
        line += f", rolled back {s['rolled_back']}"
    if gate:
        line += f"  gate wave {gate.get('wave')}: {'passed' if gate.get('passed') else 'FAILED'}"
    if s.get("reason"):
        line += f"  ({s['reason']})"
    return line


def follow(jobs, rid: str, interval_s: float = 1.0) -> int:
    """Print the job's progress whenever it changes, until it ends; 0 when it completed without failures."""
    last = ""
    while True:
        s = jobs.get(rid).summary()
        line = render_job(s)
        if line != last:
            print(line, flush=True)
            last = line
        if s["status"] in ("completed", "halted"):
            bad = s["counts"].get("failed", 0) + s["counts"].get("timed_out", 0)
            return 0 if s["status"] == "completed" and not bad else 1
        time.sleep(interval_s)


def cmd_rollouts(args: argparse.Namespace) -> int:
    store, jobs = _jobs(args)
    try:
        rows = jobs.list()
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print("no rollouts")
    for s in rows if not args.json else ():
        print(render_job(s))
    return 0


def cmd_rollout_status(args: argparse.Namespace) -> int:
    from fleet.ota.jobs import JobNotFound

    store, jobs = _jobs(args)
    try:
        if args.follow:
            return follow(jobs, args.id)
        job = jobs.get(args.id)
    except JobNotFound as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    **job.summary(),
                    "per_device": {
                        d: {
                            **vars(st),
                            "dispatches": job.dispatches.get(d, 0),
                            "rollback": job.rollback.get(d, ""),
                        }
                        for d, st in job.rollout.per_device.items()
                    },
                },
                indent=1,
            )
        )
        return 0
    print(render_job(job.summary()))
    for reg in (job.last_gate or {}).get("regressions", []):
        print(f"  gate: {reg}")
    return 0


def _transition(args: argparse.Namespace, op: str) -> int:
    from fleet.ota.jobs import JobNotFound, JobStateError

    store, jobs = _jobs(args)
    try:
        jobs.halt(args.id) if op == "halt" else jobs.resume(args.id)
        print(render_job(jobs.get(args.id).summary()))
        return 0
    except (JobNotFound, JobStateError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    finally:
        store.close()


def cmd_rollout_halt(args: argparse.Namespace) -> int:
    return _transition(args, "halt")


def cmd_rollout_resume(args: argparse.Namespace) -> int:
    return _transition(args, "resume")
