"""fleetctl's exit codes and its one-line errors (docs/fleetctl.md, "Exit codes").

Every ``fleetctl`` command ends with one of :class:`Exit`; a failure is one line on stderr,
``fleetctl: error: <what, naming the broker, file, database or device>``, never a traceback.
Commands raise :class:`FleetctlError`; ``fleet.cli.main`` prints it, and turns the store's
database errors (:func:`database_error`) into the same one line.
"""

from __future__ import annotations

import re
from enum import IntEnum


class Exit(IntEnum):
    """fleetctl's exit codes, the same for every command."""

    OK = 0
    FAILED = 1  # it ran and the answer is a failure: a check failed, a rollout failed, no frames
    USAGE = 2  # bad flag, argument, profile, URL or file: nothing was sent
    UNREACHABLE = 3  # the broker, the database or the API cannot be reached, or refuses us
    NOT_FOUND = 4  # no such device (or name, alert, token, rollout); the fleet store does not exist
    DEVICE = 5  # the device is offline, refused the command or did not answer in time
    INTERNAL = 70  # a bug: FLEETCTL_DEBUG=1 shows the traceback


class FleetctlError(Exception):
    """A failure ``fleetctl`` reports in one line, with its exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def redact_url(url: str) -> str:
    """A database or API URL without its password (``postgresql://fleet:***@db/fleet``)."""
    return re.sub(r"(://[^/:@]+):[^/@]*@", r"\1:***@", url)


def database_error(exc: BaseException, url: str = "") -> FleetctlError | None:
    """A SQLAlchemy/driver error as one line (exit 3), or None when ``exc`` is not one."""
    try:
        import sqlalchemy.exc as sa_exc
    except ImportError:  # pragma: no cover - the [fleet] extra is missing
        return None
    if isinstance(exc, sa_exc.NoSuchModuleError | sa_exc.ArgumentError):
        return FleetctlError(Exit.USAGE, f"database URL: {exc}")
    if not isinstance(exc, sa_exc.DBAPIError | sa_exc.OperationalError):
        if isinstance(exc, ModuleNotFoundError) and exc.name in ("psycopg", "psycopg2"):
            return FleetctlError(
                Exit.USAGE, "a postgresql:// store needs psycopg: pip install 'device-agent[postgres]'"
            )
        return None
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    where = f" {redact_url(url)}" if url else ""
    return FleetctlError(Exit.UNREACHABLE, f"database{where}: {first}")
