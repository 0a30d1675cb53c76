"""`device-agent` command line: each feature registers its own subcommands."""

from __future__ import annotations

import argparse
import sys

from device_agent import subcommands

# Modules exposing ``register(subparsers)`` (``subcommands.build_parser``). Kept as a list so a feature
# can be added without touching the others.
COMMAND_MODULES = [
    "device_agent.commands.run",  # run, demo
    "device_agent.ns.cli",  # ns denoise, ns bench
    "device_agent.commands.ota",  # ota verify/install/status, boot-check
    "device_agent.commands.service",  # install-service
    "provisioning.cli",  # provision, doctor, factory-reset
    "device_agent.diag.cli",  # (optional) local diagnostics
]


def build_parser() -> argparse.ArgumentParser:
    return subcommands.build_parser("device-agent", __doc__, COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return subcommands.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
