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
from typing import Any

DEFAULT_MQTT = os.environ.get("FLEET_MQTT_URL", "mqtt://127.0.0.1:1883")
DEFAULT_DB = os.environ.get("FLEET_DB", "fleet.db")


def _mqtt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mqtt", default=DEFAULT_MQTT, help="broker URL (env FLEET_MQTT_URL; default %(default)s)"
    )
    p.add_argument("--ca", default="", help="CA file for mqtts://")
    p.add_argument("--cert", default="", help="client certificate (mutual TLS)")
    p.add_argument("--key", default="", help="client key")


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        help="SQLite path or postgresql:// URL (env FLEET_DB; default %(default)s)",
    )
    p.add_argument("--prefix", default="", help="table name prefix")


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
        help="also answer device claims and certificate renewals with the fleet CA in STATE_DIR",
    )
    p.add_argument(
        "--rollout-lease",
        type=float,
        default=15.0,
        metavar="S",  # fleet/ota/driver.py
        help="rollout jobs: lease length; another worker takes a dead worker's job after it (default 15)",
    )
    p.add_argument(
        "--http",
        default="",
        metavar="HOST:PORT",
        help="also serve the HTTP API and /metrics (docs/fleet-api.md); a token is required "
        "unless HOST is loopback",
    )
    p.add_argument("--http-require-token", action="store_true", help="require a token on loopback too")
    add_retention_flags(p)  # --config FILE ([retention]) and --retention-* (fleet/rollups.py)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("devices", help="list devices")
    _db_args(p)
    p.add_argument("--group", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("show", help="one device: status, latest health, alerts, recent events")
    _db_args(p)
    p.add_argument("device")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("ack", help="acknowledge an active alert: who, when and a note")
    _db_args(p)
    p.add_argument("device", help="device id, or 'fleet' for a fleet-wide alert")
    p.add_argument("code", help="alert code, e.g. freeze_rate_high or group_alert:lobby:fps_low")
    p.add_argument("--by", default=os.environ.get("USER", "") or "operator", help="who (default: $USER)")
    p.add_argument("--note", default="", help="why, what is being done")
    p.set_defaults(func=cmd_ack)

    p = sub.add_parser("sessions", help="one device's viewer sessions: duration, fps, freezes, loss, MOS")
    _db_args(p)
    p.add_argument("device")
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
    p.add_argument("device")
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
def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and v > 1e9:
        return _ago(v)
    return str(v)


def _ago(ts: float) -> str:
    d = max(0.0, time.time() - ts)
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}m ago"
    return f"{d / 3600:.1f}h ago"


def _store(args: argparse.Namespace) -> Any:
    from fleet.store import Store

    return Store(args.db, prefix=args.prefix)


# ---- commands --------------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace) -> int:
    rows = _store(args).list_devices(args.group)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, ["device", "group", "online", "version", "slot", "last_seen", "active_alerts"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    info = _store(args).device(args.device)
    if info is None:
        print(f"fleetctl: no device {args.device!r}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k in (
        "device",
        "group",
        "online",
        "version",
        "slot",
        "hardware",
        "boot",
        "last_seen",
        "telemetry_count",
    ):
        print(f"{k:16} {_cell(info[k])}")
    print("\nhealth:")
    for section, values in info["health"].items():
        if isinstance(values, dict):
            flat = ", ".join(f"{k}={v}" for k, v in values.items() if not isinstance(v, (dict, list)))
            print(f"  {section}: {flat}")
    print("\nactive alerts:")
    print(
        table(info["active_alerts"], ["severity", "code", "message", "raised"])
        if info["active_alerts"]
        else "  none"
    )
    print("\nrecent events:")
    for e in info["recent_events"][:10]:
        print(
            f"  {_cell(e.get('ts'))}  {e.get('type')}  {e.get('severity', '')} {e.get('code', '')} "
            f"{'raised' if e.get('active') else 'cleared' if e.get('type') == 'alert' else ''}"
        )
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    from fleet.store import AlertNotFound

    try:
        ack = _store(args).ack_alert(
            "" if args.device == "fleet" else args.device, args.code, args.by, args.note
        )
    except AlertNotFound as exc:
        print(f"fleetctl ack: {exc}", file=sys.stderr)
        return 1
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
    rows = _store(args).sessions(args.device, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no viewer sessions recorded for {args.device}")
    else:
        print(table(rows, SESSION_COLUMNS))
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    rows = _store(args).list_alerts(include_cleared=args.all)
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
    from fleet.client import CommandFailed, FleetClient

    try:
        params = json.loads(args.params)
    except ValueError as exc:
        print(f"fleetctl: params: not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print("fleetctl: params: must be a JSON object", file=sys.stderr)
        return 2

    async def run() -> int:
        client = FleetClient(args.mqtt, ca_file=args.ca, cert_file=args.cert, key_file=args.key)
        try:
            await client.connect(timeout=min(args.timeout, 10.0))
        except ConnectionError as exc:
            print(f"fleetctl: {exc}", file=sys.stderr)
            return 3
        try:
            result = await client.send_command(args.device, args.name, params, timeout=args.timeout)
        except CommandFailed as exc:
            if args.json:
                print(json.dumps({"ok": False, "error": {"code": exc.code, "message": exc.message}}))
            else:
                print(f"fleetctl: {exc}", file=sys.stderr)
            return 1
        finally:
            await client.close()
        if args.json:
            print(json.dumps({"ok": True, "result": result}, indent=2))
        elif isinstance(result, dict):
            for k, v in result.items():
                print(f"{k:16} {json.dumps(v) if isinstance(v, (dict, list)) else v}")
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

    async def run() -> int:
        store = _store(args)
        svc = FleetService(
            args.mqtt,
            store,
            args.worker_id,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.key,
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
            print(f"fleetctl: cannot reach {args.mqtt}: {svc.conn.last_connect_error}", file=sys.stderr)
            return 3
        print(f"fleetctl serve: worker {args.worker_id} on {args.mqtt}, store {store.dialect}", flush=True)
        api = None
        if args.http:  # the HTTP API (fleet/api/), on this loop and this worker's MQTT session
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
                    *parse_listen(args.http),
                    service=svc,
                    provisioning_dir=args.claims,
                    require_token=True if args.http_require_token else None,
                )
                await api.start()
            except (ListenError, OSError) as exc:
                print(f"fleetctl serve: --http {args.http}: {exc}", file=sys.stderr)
                await svc.stop()
                return 2
            print(
                f"fleetctl serve: API on {api.url}/api/v1/ (token {'required' if api.require_token else 'optional'})",
                flush=True,
            )
        claims = claims_task = None
        if args.claims:  # the claim responder (fleet/provisioning/responder.py), its own connection
            from device_agent.fleetlink.mqtt import parse_broker_url
            from fleet.provisioning.responder import ClaimResponder

            broker = parse_broker_url(args.mqtt)  # the service's own URL: mqtt:// 1883, mqtts:// 8883
            claims = ClaimResponder(
                args.claims, broker.host, broker.port, client_id=f"fleet-provisioning-{args.worker_id}"
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

    async def run() -> int:
        state = args.state_dir or tempfile.mkdtemp(prefix="fleet-sim-")
        sim = Simulation(
            args.mqtt,
            args.devices,
            state,
            prefix=args.prefix,
            group=args.group,
            interval_s=args.interval,
            faults=faults,
            fault_seed=args.fault_seed,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await sim.start()
        print(
            f"fleetctl simulate: {args.devices} devices ({args.prefix}00000..) on {args.mqtt}, "
            f"spools in {state}",
            flush=True,
        )
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
