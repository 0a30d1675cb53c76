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
from typing import TYPE_CHECKING, Any

from fleet.errors import Exit, FleetctlError
from fleet.ota.rollout import Policy, Rollout
from fleet.profile import add_flags, settings
from ota.bundle import MAX_MANIFEST_BYTES, Manifest, sha256_file

if TYPE_CHECKING:  # imported lazily at run time: the store needs the fleet extra
    pass


def register(osub: argparse._SubParsersAction) -> None:
    p = osub.add_parser("rollout", help="roll a bundle out to a group: canary, batches, auto-halt")
    p.add_argument("bundle", type=Path)
    p.add_argument("--url", required=True, help="where devices download the bundle (e.g. fleetctl ota serve)")
    p.add_argument("--group", help="devices of this group in the fleet store")
    p.add_argument("--devices", help="comma-separated device ids (instead of --group)")
    add_flags(
        p, "db", "db_prefix", "mqtt", "ca", "cert", "key", help_={"mqtt": "broker URL, with --state only"}
    )
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
    _api_args(p)
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
    add_flags(p, "db", "db_prefix")
    _api_args(p)


def _api_args(p: argparse.ArgumentParser) -> None:
    add_flags(
        p, "api", "token", help_={"api": "fleet API URL (fleetctl serve --http): use it instead of the store"}
    )


def db_url(args: argparse.Namespace) -> str:
    """The profile's fleet store (``--db``, ``FLEET_DB``, the profile file, ``fleet.db``)."""
    return str(settings(args).get("db"))


def select_devices(devices: str | None, group: str | None, db: str, prefix: str = "") -> list[str]:
    """The rollout's targets: a comma-separated list, or every device of ``group`` in the fleet store."""
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
    mqtt_url, ca, cert, key = settings(args).mqtt("ota rollout --state (the rollout runs here)")
    try:
        version, sha, size = bundle_facts(args.bundle)
        devices = select_devices(args.devices, args.group, db_url(args), settings(args).get("db_prefix"))
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
        async with FleetClient(mqtt_url, ca_file=ca, cert_file=cert, key_file=key) as client:
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


# ---- jobs: through the fleet API or the store ------------------------------------------------
class CliError(Exception):
    """A one-line failure of a rollout command and its exit code (``fleet.errors.Exit``): 1 the
    fleet refused (wrong status, no devices), 2 a bad request or token, 3 unreachable, 4 not found."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def api_target(args: argparse.Namespace) -> tuple[str, str] | None:
    """(API URL, token) when the rollout commands go through the fleet API, None for the store.

    The profile's ``api`` and ``token`` (``--api`` / ``FLEET_API_URL``, ``--token`` / ``FLEET_TOKEN``,
    the profile file; fleet/profile.py), ``FLEET_API_TOKEN`` also accepted for the token."""
    s = settings(args)
    url = str(s.get("api") or "")
    token = str(s.get("token") or os.environ.get("FLEET_API_TOKEN") or "")
    return (url.rstrip("/"), token) if url else None


class StoreJobs:
    """Rollout jobs straight in the fleet store (``--db`` / ``FLEET_DB``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from fleet.errors import database_error
        from fleet.lookup import open_store
        from fleet.ota.jobs import Jobs

        try:
            self.store = open_store(args)  # a SQLite file that does not exist: not found (4)
        except FleetctlError as exc:
            raise CliError(exc.message, int(exc.code)) from None
        except Exception as exc:  # a bad URL, an unreachable PostgreSQL: one line
            err = database_error(exc, db_url(args))
            if err is None:
                raise
            raise CliError(err.message, int(err.code)) from None
        self.jobs = Jobs(self.store)
        self.where = self.store.url

    def _call(self, fn: Any, *a: Any) -> Any:
        from fleet.ota.jobs import JobNotFound, JobStateError, NoDevices

        try:
            return fn(*a)
        except (JobNotFound, JobStateError, NoDevices) as exc:
            raise CliError(str(exc.args[0]), 4 if isinstance(exc, JobNotFound) else 1) from None
        except (ValueError, TypeError) as exc:
            raise CliError(str(exc), 2) from None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.detail(self._call(self.jobs.create_from_request, body))

    def detail(self, rid: str) -> dict[str, Any]:
        return self._call(self.jobs.detail, rid)

    def list(self) -> list[dict[str, Any]]:
        return self._call(self.jobs.list)

    def halt(self, rid: str) -> dict[str, Any]:
        self._call(self.jobs.halt, rid)
        return self.detail(rid)

    def resume(self, rid: str) -> dict[str, Any]:
        self._call(self.jobs.resume, rid)
        return self.detail(rid)

    def close(self) -> None:
        self.store.close()


class ApiJobs:
    """Rollout jobs through ``fleetctl serve --http`` (``/api/v1/rollouts``), same answers as the store."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.base = url
        self.token = token
        self.timeout_s = timeout_s
        self.where = url

    def _req(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        from fleet.lookup import api_request  # the one fleet API client of fleetctl

        try:
            return api_request(self.base, self.token, method, path, body, self.timeout_s)
        except FleetctlError as exc:
            raise CliError(exc.message, int(exc.code)) from None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._req("POST", "/rollouts", body)

    def detail(self, rid: str) -> dict[str, Any]:
        return self._req("GET", f"/rollouts/{_quote(rid)}")

    def list(self) -> list[dict[str, Any]]:
        return self._req("GET", "/rollouts")["rollouts"]

    def halt(self, rid: str) -> dict[str, Any]:
        return self._req("POST", f"/rollouts/{_quote(rid)}/halt", {})

    def resume(self, rid: str) -> dict[str, Any]:
        return self._req("POST", f"/rollouts/{_quote(rid)}/resume", {})

    def close(self) -> None:
        pass


def _quote(rid: str) -> str:
    from urllib.parse import quote

    return quote(rid, safe="")


def open_jobs(args: argparse.Namespace) -> StoreJobs | ApiJobs:
    """The API when one is configured (:func:`api_target`), else the store."""
    target = api_target(args)
    if target is not None:
        return ApiJobs(*target)
    return StoreJobs(args)


def _run(args: argparse.Namespace, body: Any) -> int:
    """Open the jobs backend, run ``body(jobs)``, turn a CliError into one line and its exit code."""
    jobs: StoreJobs | ApiJobs | None = None
    try:
        jobs = open_jobs(args)
        return int(body(jobs))
    except CliError as exc:
        raise FleetctlError(Exit(exc.exit_code), exc.message) from None
    finally:
        if jobs is not None:
            jobs.close()


def rollout_request(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of ``POST /api/v1/rollouts`` (also handed to the store): the bundle's facts
    read here, the targets, the planner's policy and the health gate's."""
    if not (args.devices or args.group):
        raise CliError("give --group or --devices", 2)
    try:
        version, sha, size = bundle_facts(args.bundle)
    except (ValueError, OSError, tarfile.TarError) as exc:
        raise CliError(str(exc), 2) from None
    body: dict[str, Any] = {"version": version, "url": args.url, "sha256": sha, "size": size}
    if args.devices:  # an explicit list wins over --group
        body["devices"] = [d for d in args.devices.split(",") if d]
    else:
        body["group"] = args.group
    body["policy"] = {
        "canary": args.canary,
        "batch_size": args.batch_size,
        "growth": args.growth,
        "max_failure_rate": args.max_failure_rate,
        "min_executed": args.min_executed,
        "in_progress_timeout_s": args.timeout,
    }
    body["gate"] = {
        "soak_s": args.soak,
        "max_alert_increase": args.max_alert_increase,
        "max_crashloop_increase": args.max_crashloop_increase,
        "max_freeze_rate_increase": args.max_freeze_rate_increase,
        "min_fps_ratio": args.min_fps_ratio,
        "max_ns_rtf_ratio": args.max_ns_rtf_ratio,
    }
    return body


def create_job(args: argparse.Namespace) -> int:
    """``ota rollout`` without ``--state``: a job the fleet service drives."""

    def body(jobs: StoreJobs | ApiJobs) -> int:
        ro = _summary(jobs.create(rollout_request(args)))
        print(
            f"rollout {ro['id']}: {ro['version']} to {ro['devices']} devices; driven by the fleetctl "
            f"serve workers (fleetctl ota rollout-status {ro['id']} --follow)",
            flush=True,
        )
        return follow(jobs, ro["id"]) if args.follow else 0

    return _run(args, body)


def _summary(d: dict[str, Any]) -> dict[str, Any]:
    """A rollout detail (summary + device list) as a summary: ``devices`` is the count."""
    if isinstance(d.get("devices"), list):
        return {**d, "devices": len(d["devices"])}
    return d


def _done(s: dict[str, Any]) -> int:
    c = s["counts"]
    return sum(c.get(k, 0) for k in ("succeeded", "failed", "timed_out", "skipped"))


def render_job(s: dict, width: int = 30) -> str:
    """One job's summary line: a progress bar over finished devices, then the counts and the gate."""
    s = _summary(s)
    c = s["counts"]
    done = _done(s)
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


def follow(
    jobs: StoreJobs | ApiJobs, rid: str, interval_s: float = 1.0, tty: bool | None = None, out: Any = None
) -> int:
    """Show the job's progress until it ends: on a terminal one progress bar redrawn in place, else
    one line whenever it changes. 0 when it completed without failures, 1 when it halted or some
    devices failed or timed out."""
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    last = ""
    while True:
        s = _summary(jobs.detail(rid))
        if tty:
            import shutil

            cols = shutil.get_terminal_size((100, 20)).columns
            line = render_job(s, width=max(10, min(40, cols // 4)))[: cols - 1]
            if line != last:
                out.write("\r\x1b[K" + line)
                out.flush()
        else:
            line = render_job(s)
            if line != last:
                print(line, file=out, flush=True)
        last = line
        if s["status"] in ("completed", "halted"):
            if tty:
                out.write("\n")
                out.flush()
            bad = s["counts"].get("failed", 0) + s["counts"].get("timed_out", 0)
            return 0 if s["status"] == "completed" and not bad else 1
        time.sleep(interval_s)


def cmd_rollouts(args: argparse.Namespace) -> int:
    def body(jobs: StoreJobs | ApiJobs) -> int:
        rows = jobs.list()
        if args.json:
            print(json.dumps(rows, indent=1))
        elif not rows:
            print("no rollouts")
        for s in rows if not args.json else ():
            print(render_job(s))
        return 0

    return _run(args, body)


def cmd_rollout_status(args: argparse.Namespace) -> int:
    def body(jobs: StoreJobs | ApiJobs) -> int:
        if args.follow:
            return follow(jobs, args.id)
        d = jobs.detail(args.id)
        if args.json:
            print(json.dumps(d, indent=1))
            return 0
        print(render_job(d))
        for reg in (d.get("last_gate") or {}).get("regressions", []):
            print(f"  gate: {reg}")
        return 0

    return _run(args, body)


def cmd_rollout_halt(args: argparse.Namespace) -> int:
    return _run(args, lambda jobs: print(render_job(jobs.halt(args.id))) or 0)


def cmd_rollout_resume(args: argparse.Namespace) -> int:
    return _run(args, lambda jobs: print(render_job(jobs.resume(args.id))) or 0)
