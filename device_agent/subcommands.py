"""Command lines made of feature modules: each module adds its own subcommands (``device-agent``,
``fleetctl``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

DISTRIBUTION = "device-agent"


def package_version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser(prog: str, description: str | None, modules: Sequence[str]) -> argparse.ArgumentParser:
    """A parser whose subcommands come from ``modules``: each exposes ``register(subparsers)`` and adds its
    subcommands with ``set_defaults(func=...)``, where ``func(args) -> int``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; help and exit code 2 without one.

    A broker URL the transport refuses is a usage error like a bad flag: one line, exit code 2.
    """
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # here: a command line starts without the fleet link
    from device_agent.fleetlink.mqtt import BrokerUrlError

    try:
        return int(args.func(args) or 0)
    except BrokerUrlError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
