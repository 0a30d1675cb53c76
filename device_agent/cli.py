"""`device-agent` command line: each feature registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules exposing ``register(subparsers)``; each adds its subcommands with ``set_defaults(func=...)``
# where ``func(args) -> int``. Kept as a list so a feature can be added without touching the others.
COMMAND_MODULES = [
    "device_agent.commands.run",  # run, demo
    "device_agent.ns.cli",  # ns denoise, ns bench
    "ota.cli",  # ota verify/install/status, boot-check
    "device_agent.commands.service",  # install-service
    "provisioning.cli",  # provision, doctor, factory-reset
    "device_agent.diag.cli",  # (optional) local diagnostics
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="device-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # feature not built into this tree yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
