"""device-agent subcommands: ``provision``, ``doctor``, ``factory-reset``, ``renew-cert``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from device_agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("provision", help="join the fleet with a claim token (a technician, once)")
    p.add_argument("--claim", default="", help="claim token (or the text of its QR code)")
    p.add_argument("--fleet", default="", help="fleet claim endpoint HOST[:PORT] (default port 8884)")
    p.add_argument("--name", default="", help="a name for this device, e.g. 'Front door'")
    p.add_argument("--location", default="", help="where it is installed")
    p.add_argument("--interactive", action="store_true", help="ask for what is missing")
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="agent configuration to write")
    p.add_argument(
        "--identity-dir",
        default="",
        help="where the key and certificates go (default: provisioning.identity_dir or <state_dir>/identity)",
    )
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the fleet")
    p.add_argument("--force", action="store_true", help="replace an existing identity")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser(
        "doctor", help="checklist: identity, clock, broker, disk, NS model, mic, speaker, camera"
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--no-hardware", action="store_true", help="skip the microphone, speaker and camera checks"
    )
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("factory-reset", help="wipe the device identity and configuration")
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    p.add_argument("--identity-dir", default="")
    p.add_argument("--yes", action="store_true", help="really do it (without it: show what would go)")
    p.set_defaults(func=cmd_factory_reset)

    p = sub.add_parser("renew-cert", help="renew the device certificate now (normally automatic)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    p.set_defaults(func=cmd_renew)


def _ask(prompt: str, default: str = "") -> str:
    suffix = f" [{default}]" if default else ""
    try:
        answer = input(f"{prompt}{suffix}: ").strip()
    except EOFError:
        answer = ""
    return answer or default


def cmd_provision(args: argparse.Namespace) -> int:
    from provisioning.claim import ProvisionError
    from provisioning.provision import ProvisionRequest, provision
    from provisioning.token import TokenFormatError, parse_qr

    claim_text, fleet, name, location = args.claim, args.fleet, args.name, args.location
    if args.interactive:
        print("device-agent provisioning: type the claim token or scan its QR code.")
        claim_text = claim_text or _ask("Claim token")
    try:
        token, qr_fleet = parse_qr(claim_text) if claim_text else (None, "")
    except TokenFormatError as exc:
        print(f"Bad claim token: {exc}", file=sys.stderr)
        return ProvisionError("bad_token", "").exit_code
    fleet = fleet or qr_fleet
    if args.interactive:
        fleet = fleet or _ask("Fleet address (host or host:port)")
        name = name or _ask("Device name (optional)")
        location = location or _ask("Location (optional)")
    if token is None or not fleet:
        print(
            "error: --claim TOKEN and --fleet HOST[:PORT] are required (or use --interactive)",
            file=sys.stderr,
        )
        return 2
    req = ProvisionRequest(
        token=token,
        fleet=fleet,
        config_path=Path(args.config),
        name=name,
        location=location,
        identity_dir=Path(args.identity_dir) if args.identity_dir else None,
        force=args.force,
        timeout=args.timeout,
    )
    try:
        asyncio.run(provision(req))
    except ProvisionError as exc:
        print(f"PROVISIONING FAILED: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ConfigError, ValueError, OSError) as exc:
        print(f"PROVISIONING FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from provisioning.doctor import as_json, render, run_doctor

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(
            f"FAIL  Configuration: {exc}\n      fix: provision the device or correct the file",
            file=sys.stderr,
        )
        return 1
    results = asyncio.run(run_doctor(cfg, hardware=not args.no_hardware))
    report = as_json(results)
    print(json.dumps(report, indent=2) if args.json else render(results))
    return 0 if report["ok"] else 1


def cmd_factory_reset(args: argparse.Namespace) -> int:
    from provisioning.reset import factory_reset, reset_targets

    config = Path(args.config)
    ident = Path(args.identity_dir) if args.identity_dir else None
    if not args.yes:
        files, _ = reset_targets(config, ident)
        print("factory-reset would remove:" if files else "nothing to remove: no identity, no configuration")
        for f in files:
            print(f"  {f}")
        if files:
            print("the device must then be provisioned again with a new claim token; re-run with --yes")
        return 2 if files else 0
    removed = factory_reset(config, ident)
    for f in removed:
        print(f"removed {f}")
    print("factory reset done: provision the device again with a new claim token")
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    from device_agent.fleetlink.mqtt import MqttError
    from provisioning.identity import IdentityError, IdentityStore, service_owner
    from provisioning.renewal import RenewalError, renew_certificate

    try:
        cfg = load_config(args.config)
        store = IdentityStore(
            cfg.provisioning.resolve_identity_dir(cfg.device.state_dir),
            owner=service_owner(cfg.provisioning.service_user),
        )
        cert = asyncio.run(renew_certificate(store, cfg.mqtt.url, cfg.provisioning.renew_timeout_s))
    except (ConfigError, IdentityError, RenewalError, MqttError) as exc:
        print(f"renewal failed: {exc}", file=sys.stderr)
        return 1
    print(f"certificate renewed, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return 0
