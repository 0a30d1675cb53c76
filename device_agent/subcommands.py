"""Command lines made of feature modules: each module adds its own subcommands (``device-agent``, ``fleetctl``)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence


def build_parser(prog: str, description: str | None, modules: Sequence[str]) -> argparse.ArgumentParser:
    """A parser whose subcommands come from ``modules``: each exposes ``register(subparsers)`` and adds its
    subcommands with ``set_defaults(func=...)``, where ``func(args) -> int``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; help and exit code 2 without one."""
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
