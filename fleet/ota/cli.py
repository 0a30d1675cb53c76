"""`fleetctl ota keygen|build|sign|serve|rollout|status`: the operator's side of OTA."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fleet.ota import rollout_cli
from ota import bundle as bundle_mod
from ota import signing
from ota.errors import OtaError


def register(sub: argparse._SubParsersAction) -> None:
    ota = sub.add_parser("ota", help="OTA bundles and rollouts")
    osub = ota.add_subparsers(dest="ota_command", metavar="OTA_COMMAND")

    p = osub.add_parser("keygen", help="new Ed25519 signing key (NAME.key 0600, NAME.pub for devices)")
    p.add_argument("name", type=Path, help="path prefix, e.g. keys/release-2026")
    p.set_defaults(func=cmd_keygen)

    p = osub.add_parser("build", help="build a bundle from a wheelhouse (+ hooks, firmware)")
    p.add_argument("--version", required=True)
    p.add_argument("--wheelhouse", type=Path, required=True)
    p.add_argument("--hooks", type=Path)
    p.add_argument("--firmware", type=Path)
    p.add_argument("--hardware", action="append", default=[], help="compatible hardware model (repeatable)")
    p.add_argument("--min-version", help="devices must run at least this version")
    p.add_argument(
        "--allow-downgrade", action="store_true", help="signed permission to install an older version"
    )
    p.add_argument(
        "--key", type=Path, action="append", default=[], help="sign with this private key (repeatable)"
    )
    p.add_argument("--notes", default="")
    p.add_argument(
        "--platform",
        default="",
        help="check the wheelhouse for this pip platform tag (e.g. "
        "manylinux2014_aarch64; default: this machine's)",
    )
    p.add_argument("--python-version", default="", help="... and this device Python (e.g. 3.11)")
    p.add_argument(
        "--skip-wheelhouse-check",
        action="store_true",
        help="do not check that the wheelhouse installs offline (pip --no-index --dry-run)",
    )
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_build)

    p = osub.add_parser("sign", help="sign (or re-sign) a bundle's manifest; several keys for rotation")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", type=Path, action="append", required=True)
    p.add_argument("-o", "--output", type=Path)
    p.set_defaults(func=cmd_sign)

    p = osub.add_parser("serve", help="serve bundles over HTTP with Range resume")
    p.add_argument("directory", type=Path)
    p.add_argument("--listen", default="0.0.0.0:8081")
    p.add_argument("--cert", help="TLS certificate (PEM; with --key): serve HTTPS")
    p.add_argument("--key", dest="tls_key", help="TLS private key (PEM)")
    p.set_defaults(func=cmd_serve)

    rollout_cli.register(osub)


def cmd_keygen(args: argparse.Namespace) -> int:
    private, public = args.name.with_suffix(".key"), args.name.with_suffix(".pub")
    try:
        kid = signing.generate(private, public)
    except FileExistsError:
        print(f"error: {private} exists; not overwriting a signing key", file=sys.stderr)
        return 1
    print(f"key {kid}: private {private} (keep offline), public {public} (copy to devices' trusted keys dir)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from fleet.ota.wheelhouse import WheelhouseIncomplete, check_installs

    if not args.skip_wheelhouse_check:
        try:
            check_installs(args.wheelhouse, args.platform, args.python_version)
        except WheelhouseIncomplete as exc:
            print(f"error (incomplete_wheelhouse): {exc}", file=sys.stderr)
            return 1
    try:
        keys = [signing.load_private(k) for k in args.key]
        manifest = bundle_mod.build(
            args.output,
            args.version,
            args.wheelhouse,
            args.hardware or ["generic"],
            hooks=args.hooks,
            firmware=args.firmware,
            min_version=args.min_version,
            allow_downgrade=args.allow_downgrade,
            keys=keys,
            notes=args.notes,
        )
    except OtaError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {"bundle": str(args.output), "signed": bool(keys), **bundle_mod.describe(manifest)}, indent=1
        )
    )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        kids = bundle_mod.sign_bundle(args.bundle, [signing.load_private(k) for k in args.key], args.output)
    except (OtaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"signed {args.output or args.bundle} with {kids}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from fleet.ota.serve import make_app

    host, _, port = args.listen.rpartition(":")
    ssl_ctx = None
    if args.cert or args.tls_key:
        import ssl

        if not (args.cert and args.tls_key):
            print("error: --cert and --key go together", file=sys.stderr)
            return 2
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(args.cert, args.tls_key)
    scheme = "https" if ssl_ctx else "http"
    print(f"serving bundles from {args.directory} on {scheme}://{args.listen}/", flush=True)
    web.run_app(
        make_app(args.directory), host=host or "0.0.0.0", port=int(port), ssl_context=ssl_ctx, print=None
    )
    return 0
