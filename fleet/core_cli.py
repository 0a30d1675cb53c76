"""fleetctl serve | devices | show | alerts | cmd | simulate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fleet.errors import Exit, FleetctlError
from fleet.lookup import ago, connect, identities, open_store, reachable, resolve
from fleet.profile import add_flags, settings


def _mqtt_args(p: argparse.ArgumentParser) -> None:
    add_flags(p, "mqtt", "ca", "cert", "key")


def _db_args(p: argparse.ArgumentParser) -> None:
    add_flags(p, "db", "db_prefix")


def _wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="a device that is offline or not yet known: wait for it (up to --timeout), not fail at once",
    )


def register(sub: Any) -> None:
    from fleet.rollups import add_retention_flags

    p = sub.add_parser("serve", help="run a fleet worker (ingest, registry, fleet rules)")
    _mqtt_args(p)
    _db_args(p)
    p.add_argument("--worker-id", default="1", help="unique per worker; workers share the load")
    p.add_argument(
        "--share-group",
        default="fleet",
        help="shared subscription group (default %(default)s); '' for one worker with plain "
        "subscriptions that survive a mosquitto crash",
    )
    p.add_argument(
        "--offline-pct", type=float, default=20.0, help="group offline alert: percent (default 20)"
    )
    p.add_argument("--offline-window", type=float, default=300.0, help="... within seconds (default 300)")
    p.add_argument("--offline-min-devices", type=int, default=3, help="... in groups of at least N devices")
    p.add_argument(
        "--stats-interval", type=float, default=0.0, help="print ingest stats every N s (0: never)"
    )
    p.add_argument(
        "--claims",
        default="",
        metavar="STATE_DIR",  # provisioning (issue 6)
        help="answer device claims and certificate renewals with the fleet CA in STATE_DIR (default: the "
        "profile's state_dir, when it holds a fleet CA)",
    )
    p.add_argument("--no-claims", action="store_true", help="do not answer claims (another worker does)")
    p.add_argument(
        "--rollout-lease",
        type=float,
        default=15.0,
        metavar="S",  # fleet/ota/driver.py
        help="rollout jobs: lease length; another worker takes a dead worker's job after it (default 15)",
    )
    add_flags(
        p,
        "http",
        help_={
            "http": "also serve the HTTP API and /metrics on HOST:PORT (docs/fleet-api.md); a token is "
            "required unless HOST is loopback"
        },
    )
    p.add_argument("--http-require-token", action="store_true", help="require a token on loopback too")
    add_retention_flags(p)  # --config FILE ([retention]) and --retention-* (fleet/rollups.py)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("devices", help="list devices: name, location, group, online, version, last seen")
    _db_args(p)
    add_flags(p, "state_dir")
    p.add_argument("match", nargs="?", default="", help="only devices whose id or name starts with this")
    p.add_argument("--group", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("show", help="one device: identity, status, latest health, alerts, recent events")
    _db_args(p)
    add_flags(p, "state_dir")
    p.add_argument("device", help="device id, name, or a unique prefix of either")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("ack", help="acknowledge an active alert: who, when and a note")
    _db_args(p)
    add_flags(p, "state_dir")
    p.add_argument("device", help="device id, name or unique prefix, or 'fleet' for a fleet-wide alert")
    p.add_argument("code", help="alert code, e.g. freeze_rate_high or group_alert:lobby:fps_low")
    p.add_argument("--by", default=os.environ.get("USER", "") or "operator", help="who (default: $USER)")
    p.add_argument("--note", default="", help="why, what is being done")
    p.set_defaults(func=cmd_ack)

    p = sub.add_parser("sessions", help="one device's viewer sessions: duration, fps, freezes, loss, MOS")
    _db_args(p)
    add_flags(p, "state_dir")
    p.add_argument("device", help="device id, name, or a unique prefix of either")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("alerts", help="active alerts (device and fleet-wide)")
    _db_args(p)
    p.add_argument("--all", action="store_true", help="include cleared alerts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("cmd", help="run a command on a device and wait for its answer")
    _mqtt_args(p)
    _db_args(p)
    add_flags(p, "state_dir")
    _wait_arg(p)
    p.add_argument("device", help="device id, name, or a unique prefix of either")
    p.add_argument("name", help="e.g. ping, config.get, config.set, media.restart, agent.restart, reboot")
    p.add_argument("params", nargs="?", default="{}", help="JSON object of parameters")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cmd)

    p = sub.add_parser("simulate", help="run N simulated devices (real fleet link, simulated sensors)")
    _mqtt_args(p)
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--interval", type=float, default=30.0, help="telemetry interval, s")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--prefix", default="sim-", help="device id prefix")
    p.add_argument("--group", default="sim")
    p.add_argument("--state-dir", default="", help="spools live here (default: a temp dir)")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=SHARE",
        help="inject a fault on a share of the fleet (repeatable): freeze, lossy, camera, crashloop, "
        "avdrift, e.g. --fault freeze=0.1",
    )
    p.add_argument("--fault-seed", type=int, default=0, help="which devices get the faults")
    p.set_defaults(func=cmd_simulate)


# ---- output ------------------------------------------------------------------------------
TIME_KEYS = (
    "last_seen",
    "first_seen",
    "status_changed",
    "raised",
    "cleared",
    "started",
    "ts",
    "at",
    "created",
)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table; times (epoch seconds) are shown as "5m ago"."""
    cells = [[_cell(r.get(c), c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(v: Any, column: str = "") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float) and (column in TIME_KEYS or (isinstance(v, float) and v > 1e9)):
        return ago(v)
    return str(v)


def _ago(ts: float) -> str:
    return ago(ts)


def _store(args: argparse.Namespace, create: bool = False) -> Any:
    return open_store(args, create=create)


def _flat(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    """Nested health values as dotted keys (``talkback.state``, ``cameras[0].fps``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        for i, v in enumerate(value):
            _flat(f"{prefix}[{i}]", v, out)
    elif isinstance(value, list):
        out.append((prefix, ", ".join(str(v) for v in value) or "[]"))
    else:
        out.append((prefix, value))


def health_lines(health: dict[str, Any], per_section: int = 40) -> list[str]:
    """Every health section with all its nested values (at most ``per_section`` lines each)."""
    lines = []
    for section, values in health.items():
        flat: list[tuple[str, Any]] = []
        _flat("", values, flat)
        lines.append(f"  {section}:")
        width = max((len(k) for k, _ in flat[:per_section]), default=0)
        lines += [f"    {k:{width}}  {_cell(v)}" for k, v in flat[:per_section]]
        if len(flat) > per_section:
            lines.append(f"    ... {len(flat) - per_section} more (--json shows everything)")
    return lines


# ---- commands --------------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace) -> int:
    from fleet.lookup import match

    store = _store(args)
    try:
        rows = store.list_devices(args.group)
    finally:
        store.close()
    idents = identities(settings(args))
    for r in rows:
        ident = idents.get(r["device"]) or {}
        r["name"] = ident.get("name") or r.get("name") or ""  # the API's rows carry the name
        r["location"] = ident.get("location") or ""
    if args.match:
        keep = set(match(args.match, [r["device"] for r in rows], {r["device"]: r for r in rows}))
        rows = [r for r in rows if r["device"] in keep]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no devices" + (f" matching {args.match!r}" if args.match else ""))
    else:
        columns = ["device", "name", "location", "group", "online", "version", "last_seen", "active_alerts"]
        if not any(r["name"] or r["location"] for r in rows):
            columns = [c for c in columns if c not in ("name", "location")]
        print(table(rows, columns))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        device = resolve(args, args.device, store)
        info = store.device(device)
    finally:
        store.close()
    if info is None:
        raise FleetctlError(
            Exit.NOT_FOUND, f"no device {device!r} in the fleet store (it never sent a status)"
        )
    ident = info.get("identity") or identities(settings(args)).get(device) or {}  # the API gives it
    info["identity"] = ident or None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    head = {
        "device": info["device"],
        "name": ident.get("name"),
        "location": ident.get("location"),
        "group": info["group"],
        "online": info["online"],
        "reason": (info.get("status") or {}).get("reason"),
        "version": info["version"],
        "slot": info["slot"],
        "hardware": info["hardware"] or ident.get("hardware"),
        "boot": info["boot"],
        "first_seen": info["first_seen"],
        "last_seen": info["last_seen"],
        "health_sample": info["health_ts"],
        "telemetry_count": info["telemetry_count"],
    }
    for k, v in head.items():
        if v not in (None, "") or k in ("device", "online", "last_seen"):
            print(f"{k:16} {_cell(v, 'ts' if k in ('first_seen', 'last_seen', 'health_sample') else k)}")
    print("\nhealth:")
    print("\n".join(health_lines(info["health"])) if info["health"] else "  none yet")
    print("\nactive alerts:")
    print(
        table(info["active_alerts"], ["severity", "code", "message", "raised"])
        if info["active_alerts"]
        else "  none"
    )
    print("\nrecent events:")
    for e in info["recent_events"][:10]:
        print(
            f"  {_cell(e.get('ts'), 'ts')}  {e.get('type')}  {e.get('severity', '')} {e.get('code', '')} "
            f"{'raised' if e.get('active') else 'cleared' if e.get('type') == 'alert' else ''}".rstrip()
        )
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    from fleet.store import AlertNotFound

    store = _store(args)
    try:
        device = "" if args.device == "fleet" else resolve(args, args.device, store)
        ack = store.ack_alert(device, args.code, args.by, args.note)
    except AlertNotFound as exc:
        raise FleetctlError(Exit.NOT_FOUND, f"ack: {exc}") from None
    finally:
        store.close()
    print(f"acknowledged {ack['key']} by {ack['by']}" + (f": {ack['note']}" if ack["note"] else ""))
    return 0


SESSION_COLUMNS = [
    "started",
    "duration_s",
    "client",
    "reason",
    "ttff_ms",
    "fps_mean",
    "fps_min",
    "freeze_rate",
    "kbps",
    "loss_pct",
    "rtt_ms",
    "av_sync_p95_ms",
    "mos",
]


def cmd_sessions(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        device = resolve(args, args.device, store)
        rows = store.sessions(device, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no viewer sessions recorded for {device}")
    else:
        print(table(rows, SESSION_COLUMNS))
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = store.list_alerts(include_cleared=args.all)
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            table(rows, ["severity", "scope", "device", "code", "active", "message", "raised", "acked_by"])
            if rows
            else "no active alerts"
        )
    return 0


def cmd_cmd(args: argparse.Namespace) -> int:
    from fleet.client import CommandFailed

    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise FleetctlError(Exit.USAGE, f"params: not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise FleetctlError(Exit.USAGE, "params: must be a JSON object")
    device = resolve(args, args.device, required=False)

    async def run() -> int:
        client = await connect(args, "fleetctl cmd", timeout=min(args.timeout, 10.0))
        try:
            await reachable(client, device, args.wait, args.timeout)
            result = await client.send_command(device, args.name, params, timeout=args.timeout)
        except CommandFailed as exc:
            if args.json:
                print(json.dumps({"ok": False, "error": {"code": exc.code, "message": exc.message}}))
            raise FleetctlError(Exit.DEVICE, str(exc)) from None
        finally:
            await client.close()
        if args.json:
            print(json.dumps({"ok": True, "result": result}, indent=2))
        elif isinstance(result, dict):
            for k, v in result.items():
                print(f"{k:16} {json.dumps(v) if isinstance(v, dict | list) else v}")
        else:
            print(result)
        return 0

    return asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> int:
    from fleet.service import FleetService, GroupOfflineRule

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from fleet.rollups import retention_from_args

    try:
        retention = retention_from_args(args)
    except ValueError as exc:
        print(f"fleetctl serve: {exc}", file=sys.stderr)
        return 2

    prof = settings(args)
    url, ca, cert, key = prof.mqtt("fleetctl serve")
    claims_dir = "" if args.no_claims else args.claims
    if not claims_dir and not args.no_claims:  # the profile's state directory, when it holds a fleet CA
        state = Path(str(prof.get("state_dir") or ""))
        claims_dir = str(state) if (state / "ca" / "ca.crt").exists() else ""
    http = str(prof.get("http") or "")

    async def run() -> int:
        probe = await connect(args, "fleetctl serve", timeout=30.0)  # one-line reason, at once
        await probe.close()
        store = _store(args, create=True)
        svc = FleetService(
            url,
            store,
            args.worker_id,
            ca_file=ca,
            cert_file=cert,
            key_file=key,
            share_group=args.share_group,
            rollout_options={"lease_s": args.rollout_lease},
            rule=GroupOfflineRule(args.offline_pct, args.offline_window, args.offline_min_devices),
            retention=retention,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await svc.start(connect_timeout=30.0)
        except TimeoutError:
            await svc.stop()
            raise FleetctlError(
                Exit.UNREACHABLE, f"cannot connect to {url}: {svc.conn.last_error or 'no answer within 30 s'}"
            ) from None
        print(
            f"fleetctl serve: worker {args.worker_id} on {url}, store {store.dialect}"
            + (f", answering claims with the fleet CA in {claims_dir}" if claims_dir else ", no claims"),
            flush=True,
        )
        api = None
        if http:  # the HTTP API (fleet/api/), on this loop and this worker's MQTT session
            try:
                from fleet.api.server import ApiServer, ListenError, parse_listen
            except ImportError as exc:  # prometheus_client: the [fleet] extra
                print(
                    f"fleetctl serve: --http needs {exc.name}: pip install 'device-agent[fleet]'",
                    file=sys.stderr,
                )
                await svc.stop()
                return 2
            try:
                api = ApiServer(
                    store,
                    *parse_listen(http),
                    service=svc,
                    provisioning_dir=claims_dir,
                    require_token=True if args.http_require_token else None,
                )
                await api.start()
            except (ListenError, OSError) as exc:
                print(f"fleetctl serve: --http {http}: {exc}", file=sys.stderr)
                await svc.stop()
                return 2
            print(
                f"fleetctl serve: console on {api.url}/, API on {api.url}/api/v1/ "
                f"(token {'required' if api.require_token else 'optional'})",
                flush=True,
            )
        claims = claims_task = None
        if claims_dir:  # the claim responder (fleet/provisioning/responder.py), its own connection
            from device_agent.fleetlink.mqtt import parse_broker_url
            from fleet.provisioning.responder import ClaimResponder

            broker = parse_broker_url(url)  # the service's own URL: mqtt:// 1883, mqtts:// 8883
            claims = ClaimResponder(
                claims_dir, broker.host, broker.port, client_id=f"fleet-provisioning-{args.worker_id}"
            )
            claims_task = asyncio.create_task(claims.run())
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.stats_interval or None)
            except TimeoutError:
                print(json.dumps({"ts": round(time.time(), 3), **svc.stats}), flush=True)
        if claims is not None and claims_task is not None:
            await claims.stop()
            await claims_task
        if api is not None:
            await api.stop()
        await svc.stop()
        print(json.dumps({"final": True, **svc.stats}), flush=True)
        return 0

    return asyncio.run(run())


def raise_nofile() -> None:
    """Many simulated devices need many descriptors (socket + SQLite files each)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_faults(items: list[str]) -> dict[str, float]:
    """``["freeze=0.1", "crashloop=0.05"]`` -> shares; names are checked by the simulation."""
    from fleet.sim_media import FAULTS

    out: dict[str, float] = {}
    for item in items:
        name, _, share = item.partition("=")
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        try:
            out[name] = float(share)
        except ValueError:
            raise ValueError(f"--fault {item!r}: give NAME=SHARE, e.g. {name}=0.1") from None
        if not 0 <= out[name] <= 1:
            raise ValueError(f"--fault {item!r}: the share must be within 0..1")
    return out


def cmd_simulate(args: argparse.Namespace) -> int:
    from fleet.simulate import Simulation

    logging.basicConfig(level=logging.WARNING)
    raise_nofile()

    try:
        faults = parse_faults(args.fault)
    except ValueError as exc:
        print(f"fleetctl simulate: {exc}", file=sys.stderr)
        return 2

    url, ca, cert, key = settings(args).mqtt("fleetctl simulate")
    # the simulated devices use the profile's identity: on a fleet broker, the service listener (the
    # device listener would need one certificate per simulated device)
    tls = {k: v for k, v in (("ca_file", ca), ("cert_file", cert), ("key_file", key)) if v}

    async def run() -> int:
        probe = await connect(args, "fleetctl simulate")  # a wrong broker or TLS setup: one line, at once
        await probe.close()
        state = args.state_dir or tempfile.mkdtemp(prefix="fleet-sim-")
        sim = Simulation(
            url,
            args.devices,
            state,
            prefix=args.prefix,
            group=args.group,
            interval_s=args.interval,
            faults=faults,
            fault_seed=args.fault_seed,
            extra_mqtt=tls,
            client_ids=bool(cert),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await sim.start(spread_s=min(10.0, 0.01 * args.devices))  # 10 ms apart: 1,000 devices over 10 s
        print(
            f"fleetctl simulate: {args.devices} devices ({args.prefix}00000..) on {url}, spools in {state}",
            flush=True,
        )
        connected = await sim.wait_connected(min(30.0, args.duration or 30.0))
        print(f"fleetctl simulate: {connected}/{args.devices} devices connected", flush=True)
        if not connected:
            await sim.stop()
            err = next((link.conn.last_error for link in sim.links if link.conn.last_error), None)
            raise FleetctlError(Exit.UNREACHABLE, f"no simulated device could connect to {url}: {err}")
        t_end = time.monotonic() + args.duration if args.duration else None
        while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
            try:
                await asyncio.wait_for(
                    stop.wait(), 10.0 if t_end is None else max(0.01, min(10.0, t_end - time.monotonic()))
                )
            except TimeoutError:
                print(json.dumps(sim.totals()), flush=True)
        await sim.stop()
        print(json.dumps({"final": True, **sim.totals()}), flush=True)
        return 0

    return asyncio.run(run())
