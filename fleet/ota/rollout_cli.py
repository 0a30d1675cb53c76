"""`fleetctl ota rollout` and `fleetctl ota status` (registered by fleet.ota.cli)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tarfile
from pathlib import Path

from fleet.ota.rollout import Policy, Rollout
from ota.bundle import MAX_MANIFEST_BYTES, Manifest, sha256_file


def register(osub: argparse._SubParsersAction) -> None:
    p = osub.add_parser("rollout", help="roll a bundle out to a group: canary, batches, auto-halt")
    p.add_argument("bundle", type=Path)
    p.add_argument("--url", required=True, help="where devices download the bundle (e.g. fleetctl ota serve)")
    p.add_argument("--group", help="devices of this group in the fleet store")
    p.add_argument("--devices", help="comma-separated device ids (instead of --group)")
    p.add_argument("--db", default="fleet.db", help="fleet store (for --group)")
    p.add_argument("--mqtt", required=True, help="broker URL")
    p.add_argument("--ca", default="")
    p.add_argument("--cert", default="")
    p.add_argument("--key", default="")
    p.add_argument("--canary", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--growth", type=float, default=1.0, help="batch growth factor (2.0: exponential)")
    p.add_argument("--max-failure-rate", type=float, default=0.1)
    p.add_argument("--min-executed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0, help="per-device in-progress timeout (s)")
    p.add_argument("--state", type=Path, default=Path("rollout.json"))
    p.set_defaults(func=cmd_rollout)

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


def select_devices(devices: str | None, group: str | None, db: str) -> list[str]:
    """The rollout's targets: an explicit comma-separated list, or every device of ``group`` in the fleet store."""
    if devices:
        return [d for d in devices.split(",") if d]
    if group:
        from fleet.store import Store

        store = Store(db)
        try:
            return [r["device"] for r in store.list_devices(group)]
        finally:
            store.close()
    raise ValueError("give --group or --devices")


def cmd_rollout(args: argparse.Namespace) -> int:
    from fleet.client import FleetClient
    from fleet.ota.rollout_runner import render, run_rollout

    try:
        version, sha, size = bundle_facts(args.bundle)
        devices = select_devices(args.devices, args.group, args.db)
        if not devices:
            print("error: no devices to update", file=sys.stderr)
            return 1
        rollout = Rollout(version, devices, Policy(canary=args.canary, batch_size=args.batch_size,
                                                   growth=args.growth, max_failure_rate=args.max_failure_rate,
                                                   min_executed=args.min_executed,
                                                   in_progress_timeout_s=args.timeout))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def show(r: Rollout) -> None:
        print(render(r), flush=True)

    async def main() -> Rollout:
        async with FleetClient(args.mqtt, ca_file=args.ca, cert_file=args.cert, key_file=args.key) as client:
            return await run_rollout(client, rollout, {"url": args.url, "sha256": sha, "size": size},
                                     args.state, on_change=show)

    result = asyncio.run(main())
    return 0 if result.status == "completed" and not (result.counts()["failed"] + result.counts()["timed_out"]) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from fleet.ota.rollout_runner import load, render

    try:
        print(render(load(args.state)))
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read {args.state}: {exc}", file=sys.stderr)
        return 1
    return 0
