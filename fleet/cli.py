"""`fleetctl`: the operator's command line; each feature registers its own subcommands."""

from __future__ import annotations

import argparse
import sys

from device_agent import subcommands

# Modules exposing ``register(subparsers)`` (``subcommands.build_parser``).
COMMAND_MODULES = [
    "fleet.core_cli",  # serve, devices, show, alerts, cmd, simulate
    "fleet.ota.cli",  # ota keygen/build/sign/serve/rollout/status
    "fleet.provisioning_cli",  # ca init, claim create, broker-config
    "fleet.diag_cli",  # logs, diag, view
    "fleet.token_cli",  # token create/list/revoke (the HTTP API's tokens)
]


def build_parser() -> argparse.ArgumentParser:
    return subcommands.build_parser("fleetctl", __doc__, COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return subcommands.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
