"""`device-agent ota verify|install|status` and `device-agent boot-check`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from device_agent.config import AgentConfig, ConfigError, load_config
from ota import bundle as bundle_mod
from ota import signing
from ota.errors import OtaError
from ota.layout import Layout
from ota.layout import main as boot_main


def register(sub: argparse._SubParsersAction) -> None:
    ota = sub.add_parser("ota", help="OTA updates on this device")
    osub = ota.add_subparsers(dest="ota_command", metavar="OTA_COMMAND")

    p = osub.add_parser("verify", help="check a bundle's signature, manifest and every payload")
    p.add_argument("bundle", type=Path)
    p.add_argument("--config", help="agent.toml (trusted keys, hardware, installed version)")
    p.add_argument("--keys", type=Path, help="trusted public keys directory (overrides the config)")
    p.set_defaults(func=cmd_verify)

    p = osub.add_parser("install", help="install a bundle (path or URL) into the inactive slot and switch")
    p.add_argument("source", help="bundle.tar or http(s):// URL")
    p.add_argument("--sha256", help="expected sha256 (required for a URL)")
    p.add_argument("--size", type=int, help="expected size in bytes (required for a URL)")
    p.add_argument("--config")
    p.add_argument(
        "--as-root",
        action="store_true",
        help="install even though the state/slot directories belong to another user",
    )
    p.set_defaults(func=cmd_install)

    p = osub.add_parser("status", help="slots, versions, update in flight, last result")
    p.add_argument("--config")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("boot-check", help="pick a complete slot before the service starts (ExecStartPre)")
    p.add_argument("--config")
    p.add_argument("--root")
    p.add_argument("--state-dir")
    p.set_defaults(func=cmd_boot_check)


def _config(path: str | None) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _layout(cfg: AgentConfig) -> Layout:
    return Layout(cfg.ota.root, cfg.device.state_dir)


def cmd_verify(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    try:
        trusted = signing.load_trusted(args.keys or Path(cfg.ota.trusted_keys_dir))
        layout = _layout(cfg)
        slot = layout.current_slot()
        current = (layout.slot_info(slot) or {}).get("version") if slot else None
        manifest = bundle_mod.verify_and_extract(
            args.bundle,
            trusted,
            None,
            cfg.device.hardware if args.config else None,
            current if args.config else None,
        )
    except OtaError as exc:
        print(f"REFUSED ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"ok": True, **bundle_mod.describe(manifest)}, indent=1))
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from ota.download import download
    from ota.installer import Installer, InstallOptions, check_owner

    cfg = _config(args.config)
    layout = _layout(cfg)
    source = args.source
    try:
        check_owner([layout.state_dir, layout.root], as_root=args.as_root)
    except OtaError as exc:
        print(f"REFUSED ({exc.code}): {exc.message}", file=sys.stderr, flush=True)
        return 1
    try:
        if source.startswith(("http://", "https://")):
            if not args.sha256 or not args.size:
                print("error: a URL needs --sha256 and --size", file=sys.stderr)
                return 2
            dest = layout.work_dir / "bundle.tar"

            def progress(done: int, total: int, eta: float | None) -> None:
                _bar(done, total, eta)

            res = asyncio.run(
                download(
                    source,
                    dest,
                    args.size,
                    args.sha256,
                    rate_bps=cfg.ota.download_rate_bps,
                    retries=cfg.ota.download_retries,
                    reserve_bytes=cfg.ota.free_space_reserve_bytes,
                    progress=progress,
                    ca_file=cfg.ota.download_ca_file,
                )
            )
            print(
                f"\ndownloaded {res.bytes_fetched} bytes in {res.seconds:.1f} s ({res.attempts} attempt(s))",
                flush=True,
            )
            path = dest
        else:
            path = Path(source)

        def on_step(name: str, info: dict) -> None:
            if name != "verify.progress":
                print(f"ota: step {name} {json.dumps(info)}", flush=True)

        update = Installer(layout, InstallOptions.from_config(cfg), on_step).install(path)
    except OtaError as exc:
        print(f"FAILED ({exc.code}): {exc.message}", file=sys.stderr, flush=True)
        return 1
    finally:
        if source.startswith(("http://", "https://")):  # installed or refused: free the disk
            (layout.work_dir / "bundle.tar").unlink(missing_ok=True)
    print(
        f"switched to slot {update.target_slot} ({update.version}); restart the service to start the trial",
        flush=True,
    )
    return 0


def _bar(done: int, total: int, eta: float | None) -> None:
    width = 30
    frac = done / total if total else 1.0
    eta_s = f" ETA {eta:.0f}s" if eta is not None else ""
    sys.stdout.write(f"\r[{'#' * int(frac * width):<{width}}] {frac * 100:5.1f}% {done}/{total}{eta_s}")
    sys.stdout.flush()


def cmd_status(args: argparse.Namespace) -> int:
    from device_agent.ota_component import status
    from ota.layout import lock_holder

    cfg = _config(args.config)
    layout = _layout(cfg)
    print(json.dumps(status(layout, lock_holder(layout) is not None), indent=1, sort_keys=True))
    return 0


def cmd_boot_check(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    return boot_main(
        ["--root", args.root or cfg.ota.root, "--state-dir", args.state_dir or cfg.device.state_dir]
    )
