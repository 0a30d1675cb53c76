"""`fleetctl`: the operator's command line; each feature registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules exposing ``register(subparsers)``; each adds subcommands with ``set_defaults(func=...)``
# where ``func(args) -> int``.
COMMAND_MODULES = [
    "fleet.core_cli",  # serve, devices, show, alerts, cmd, simulate
    "ota.fleet_cli",  # ota keygen/build/sign/serve/rollout/status
    "fleet.provisioning_cli",  # ca init, claim create, broker-config
    "fleet.diag_cli",  # logs, diag, view
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetctl", description=__doc__)
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
