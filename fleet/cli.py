"""fleetctl: the fleet's command line: service, devices, alerts, updates, claims (docs/fleetctl.md).

Each feature module registers its own subcommands.

Every command reads its broker, credentials, store and API from one profile (fleet/profile.py,
docs/fleetctl.md) and ends with one of the exit codes of :class:`fleet.errors.Exit`; a failure is
one line on stderr, never a traceback (``FLEETCTL_DEBUG=1`` shows one for a bug).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from device_agent import subcommands
from fleet.errors import Exit, FleetctlError, database_error

# Modules exposing ``register(subparsers)`` (``subcommands.build_parser``).
COMMAND_MODULES = [
    "fleet.core_cli",  # serve, devices, show, alerts, cmd, simulate
    "fleet.ota.cli",  # ota keygen/build/sign/serve/rollout/status
    "fleet.provisioning_cli",  # ca init, claim create, broker-config
    "fleet.diag_cli",  # logs, diag, view
    "fleet.token_cli",  # token create/list/revoke (the HTTP API's tokens)
    "fleet.profile_cli",  # profile show
]


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:  # noqa: SLF001 -- argparse has no public walk of subparsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in dict.fromkeys(action.choices.values()):
                out += _leaf_parsers(child)
    return out


def build_parser() -> argparse.ArgumentParser:
    from fleet.profile import add_selection_flags

    parser = subcommands.build_parser("fleetctl", __doc__.split("\n", 1)[0], COMMAND_MODULES)
    for p in _leaf_parsers(parser):  # --profile NAME / --profile-file PATH before or after the command
        add_selection_flags(p)
    return parser


def _db_of(args: argparse.Namespace) -> str:
    s = getattr(args, "_fleet_settings", None)
    return str(s.get("db")) if s is not None else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return Exit.USAGE
    try:
        return int(args.func(args) or 0)
    except FleetctlError as exc:
        message, code = exc.message, int(exc.code)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback
        from device_agent.fleetlink.mqtt import BrokerUrlError

        err = (
            FleetctlError(Exit.USAGE, str(exc))
            if isinstance(exc, BrokerUrlError)
            else database_error(exc, _db_of(args))
        )
        if err is None:
            if os.environ.get("FLEETCTL_DEBUG"):
                traceback.print_exc()
            message = f"internal error: {type(exc).__name__}: {exc} (FLEETCTL_DEBUG=1 shows the traceback)"
            code = int(Exit.INTERNAL)
        else:
            message, code = err.message, int(err.code)
    print(f"fleetctl: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
