"""fleetctl subcommands for provisioning: ``ca``, ``claim``, ``broker-config``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
from pathlib import Path

from fleet.errors import Exit, FleetctlError
from fleet.profile import DEFAULT_STATE_DIR, add_flags, settings


def _state_dir(args: argparse.Namespace) -> Path:
    """The profile's ``state_dir`` (``--state-dir``, ``FLEETCTL_STATE_DIR``, the profile, the default)."""
    return Path(str(settings(args).get("state_dir") or DEFAULT_STATE_DIR))


def _broker_host_port(args: argparse.Namespace) -> tuple[str, int] | None:
    """Host and port of the profile's broker URL (the fleet-service listener), if one is configured."""
    from device_agent.fleetlink.mqtt import parse_broker_url

    url = settings(args).get("mqtt")
    if not url:
        return None
    addr = parse_broker_url(str(url))
    return addr.host, addr.port


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` (or plain seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use e.g. 30m, 24h, 7d")
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError("duration must be > 0")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    state = argparse.ArgumentParser(add_help=False)
    add_flags(state, "state_dir", help_={"state_dir": f"fleet state directory (default {DEFAULT_STATE_DIR})"})

    ca = sub.add_parser("ca", help="the fleet certificate authority")
    ca.set_defaults(func=lambda a: ca.print_help() or 2)
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND")
    p = ca_sub.add_parser("init", parents=[state], help="create the fleet CA (EC P-256)")
    p.add_argument("--name", default="device-agent fleet CA")
    p.add_argument("--days", type=int, default=3650)
    p.add_argument("--force", action="store_true", help="replace an existing CA (every device must re-claim)")
    p.set_defaults(func=cmd_ca_init)
    p = ca_sub.add_parser(
        "revoke", parents=[state], help="revoke every certificate of a device and rewrite the CRL"
    )
    p.add_argument("device_id")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_ca_revoke)
    p = ca_sub.add_parser("devices", parents=[state], help="devices registered by claim")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ca_devices)

    claim = sub.add_parser("claim", help="single-use claim tokens for technicians")
    claim.set_defaults(func=lambda a: claim.print_help() or 2)
    claim_sub = claim.add_subparsers(dest="claim_command", metavar="CLAIM_COMMAND")
    p = claim_sub.add_parser("create", parents=[state], help="create claim tokens")
    p.add_argument("--group", required=True, help="device group the claimed devices join")
    p.add_argument("--expires", type=parse_duration, default=parse_duration("24h"), help="e.g. 30m, 24h, 7d")
    p.add_argument("--count", type=int, default=1)
    p.add_argument(
        "--fleet",
        default="",
        help="claim endpoint HOST:PORT to put in the QR code (default: the profile's broker host and "
        "claim_port)",
    )
    add_flags(p, "mqtt", "claim_port")
    p.add_argument("--qr-dir", default="", help="write one PNG QR code per token here")
    p.add_argument("--qr", action="store_true", help="print each QR code on the terminal")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_claim_create)
    p = claim_sub.add_parser("list", parents=[state], help="claims and their state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_claim_list)
    p = claim_sub.add_parser("audit", parents=[state], help="the provisioning audit log")
    p.add_argument("--claim", default="")
    p.add_argument("--json", action="store_true", help="one JSON object per line (epoch times)")
    p.set_defaults(func=cmd_claim_audit)
    p = claim_sub.add_parser(
        "serve", parents=[state], help="answer claims and renewals (the claim responder)"
    )
    p.add_argument(
        "--broker",
        default="",
        help="service listener HOST[:PORT] (mutual TLS, service CA), e.g. fleet.example:8885 (default: the "
        "profile's broker)",
    )
    add_flags(p, "mqtt")
    p.add_argument("--cert-days", type=int, default=365)
    p.set_defaults(func=cmd_claim_serve)

    p = sub.add_parser("broker-config", parents=[state], help="write a locked-down mosquitto configuration")
    add_flags(
        p,
        "broker_dir",
        "device_port",
        "claim_port",
        "mqtt",
        help_={"broker_dir": "directory for mosquitto.conf, ACLs, certificates, CRL"},
    )
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="broker name or address devices use (repeatable; goes into the certificate; default: the "
        "host of the profile's broker URL)",
    )
    p.add_argument(
        "--service-port",
        type=int,
        default=None,
        help="fleet service listener (mutual TLS with the service CA; default: the port of the profile's "
        "broker URL, else 8885)",
    )
    p.add_argument("--bind", default="", help="bind address for the listeners (default: all)")
    p.add_argument("--log-dest", default="stderr")
    p.add_argument("--user", default="", help="mosquitto `user` (default: mosquitto's own)")
    p.set_defaults(func=cmd_broker_config)


def _fail(message: str, code: int = Exit.USAGE) -> int:
    """One line on stderr (a missing or existing CA, a bad flag: nothing was done), the exit code."""
    raise FleetctlError(Exit(code), message)


def cmd_ca_init(args: argparse.Namespace) -> int:
    from fleet.provisioning.ca import CAError, FleetCA
    from provisioning.token import ca_pin

    try:
        ca = FleetCA.init(_state_dir(args), args.name, args.days, args.force)
    except CAError as exc:
        return _fail(str(exc))
    print(
        f"fleet CA created in {ca.directory} (pin {ca_pin(ca.cert_der)}), valid until "
        f"{ca.cert.not_valid_after_utc:%Y-%m-%d}"
    )
    return 0


def cmd_ca_revoke(args: argparse.Namespace) -> int:
    from fleet.provisioning.broker import write_crl
    from fleet.provisioning.ca import CAError, FleetCA
    from fleet.provisioning.store import ClaimRefused, ProvisioningStore

    try:
        ca = FleetCA.load(_state_dir(args))
        store = ProvisioningStore(_state_dir(args))
        n = store.revoke_device(args.device_id, args.reason)
    except (CAError, ClaimRefused) as exc:
        return _fail(str(exc))
    paths = write_crl(ca, store, _state_dir(args))
    print(f"revoked {n} certificate(s) of {args.device_id}; CRL written to {', '.join(map(str, paths))}")
    print(
        "reload the broker so it reads the new CRL: systemctl reload mosquitto (SIGHUP) refuses new "
        "connections; restart it to also drop a connection already open"
    )
    return 0


def cmd_ca_devices(args: argparse.Namespace) -> int:
    from fleet.provisioning.store import ProvisioningStore

    devices = ProvisioningStore(_state_dir(args)).devices()
    if args.json:
        print(json.dumps(devices, indent=2))
    else:
        for d in devices:
            state = "REVOKED" if d["revoked_at"] else "active"
            print(f"{d['id']}  {d['group']:<12} {state:<8} {d['name']} {d['location']}")
    return 0


def cmd_claim_create(args: argparse.Namespace) -> int:
    from fleet.provisioning.broker import write_claim_passwords
    from fleet.provisioning.ca import CAError, FleetCA
    from fleet.provisioning.qr import terminal, write_png
    from fleet.provisioning.store import ProvisioningStore
    from provisioning.token import qr_payload

    if not 1 <= args.count <= 10000:
        return _fail("--count must be 1..10000", 2)
    try:
        ca = FleetCA.load(_state_dir(args))
    except CAError as exc:
        return _fail(str(exc))
    store = ProvisioningStore(_state_dir(args))
    tokens = store.create_claims(args.group, args.expires, args.count, ca.cert_der)
    if write_claim_passwords(store, _state_dir(args)):
        print(
            "reload the broker so its claim listener accepts the new tokens: systemctl reload mosquitto "
            "(SIGHUP)",
            file=sys.stderr,
        )
    broker = _broker_host_port(args)
    endpoint = args.fleet or (f"{broker[0]}:{settings(args).get('claim_port')}" if broker else "")
    out = []
    for t in tokens:
        item = {
            "token": str(t),
            "id": t.id,
            "group": args.group,
            "expires_in_s": args.expires,
            "qr": qr_payload(t, endpoint),
        }
        if args.qr_dir:
            item["png"] = str(write_png(item["qr"], Path(args.qr_dir) / f"claim-{t.id}.png"))
        out.append(item)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for item in out:
        print(item["token"])
        if args.qr:
            print(terminal(item["qr"]))
        if "png" in item:
            print(f"  QR code: {item['png']}")
    print(
        f"{len(out)} claim token(s) for group {args.group!r}, single use, valid {args.expires / 3600:g} h",
        file=sys.stderr,
    )
    return 0


def cmd_claim_list(args: argparse.Namespace) -> int:
    import time

    from fleet.provisioning.store import ProvisioningStore

    claims = ProvisioningStore(_state_dir(args)).claims()
    if args.json:
        print(json.dumps([c.__dict__ for c in claims], indent=2))
        return 0
    now = time.time()
    for c in claims:
        state = f"used by {c.device_id}" if c.used_at else ("expired" if now >= c.expires_at else "open")
        print(f"{c.id}  {c.group:<12} {state}")
    return 0


def cmd_claim_audit(args: argparse.Namespace) -> int:
    import time

    from fleet.provisioning.store import ProvisioningStore

    rows = ProvisioningStore(_state_dir(args)).audit_log(args.claim or None)
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    if not rows:
        print("no audit entries" + (f" for claim {args.claim}" if args.claim else ""))
    for row in rows:
        detail = row.get("detail") or {}
        text = (
            ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))
            if isinstance(detail, dict)
            else str(detail)
        )
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["ts"]))
        print(
            f"{when}  {row['event']:<16} claim {row.get('claim_id') or '-':<8} "
            f"device {row.get('device_id') or '-'}" + (f"  {text}" if text else "")
        )
    return 0


def cmd_claim_serve(args: argparse.Namespace) -> int:
    from device_agent.fleetlink.mqtt import split_endpoint
    from fleet.provisioning.ca import CAError
    from fleet.provisioning.responder import ClaimResponder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = args.broker or str(settings(args).get("mqtt") or "")
    if not broker:
        return _fail("claim serve needs --broker HOST:PORT or a broker URL in the profile (mqtt)", 2)
    try:
        host, port = split_endpoint(broker, 8885)
    except ValueError as exc:
        return _fail(f"--broker: {exc}", 2)

    async def main() -> None:
        responder = ClaimResponder(_state_dir(args), host, port, cert_days=args.cert_days)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(responder.stop()))
        await responder.run()

    try:
        asyncio.run(main())
    except CAError as exc:
        return _fail(str(exc))
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    from fleet.provisioning.broker import write_broker_config
    from fleet.provisioning.ca import CAError

    prof = settings(args)
    broker = _broker_host_port(args)
    hosts = args.host or ([broker[0]] if broker else [])
    if not hosts:
        return _fail("broker-config needs --host NAME, or a broker URL in the profile (mqtt)", 2)
    out = prof.require("broker_dir", "fleetctl broker-config")
    service_port = args.service_port or (broker[1] if broker else 8885)
    try:
        files = write_broker_config(
            _state_dir(args),
            out,
            hosts,
            int(prof.get("device_port")),
            int(prof.get("claim_port")),
            args.bind,
            args.log_dest,
            args.user,
            service_port=service_port,
        )
    except CAError as exc:
        return _fail(str(exc))
    print(f"mosquitto configuration written: {files.config}")
    print(
        f"  devices (mutual TLS): port {files.port}; claims: port {files.claim_port}; "
        f"fleet service (mutual TLS, service CA): port {files.service_port}"
    )
    print(f"  run: mosquitto -c {files.config}")
    return 0
