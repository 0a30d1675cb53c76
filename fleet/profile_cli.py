"""fleetctl profile show: the effective settings of the profile (fleet/profile.py), and their sources."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fleet.profile import KEYS, add_flags, settings


def register(sub: Any) -> None:
    p = sub.add_parser("profile", help="the profile: broker, credentials, store and API of every command")
    psub = p.add_subparsers(dest="profile_command", metavar="ACTION", required=True)
    s = psub.add_parser("show", help="the effective values (secrets redacted) and where each comes from")
    add_flags(s, *KEYS)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    from fleet.core_cli import table

    s = settings(args)
    rows = s.rows()
    if args.json:
        print(
            json.dumps(
                {"file": str(s.file) if s.file else None, "profile": s.name, "settings": rows}, indent=1
            )
        )
        return 0
    print(f"profile {s.name or '(top level)'} from {s.file or 'no file'}")
    print(table(rows, ["key", "value", "source"]))
    return 0
