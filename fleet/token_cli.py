"""fleetctl token create | list | revoke: API tokens with roles (fleet/tokens.py, docs/fleet-api.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fleet.core_cli import _db_args, table
from fleet.errors import Exit, FleetctlError
from fleet.tokens import ROLES, TokenError, TokenStore


def register(sub: Any) -> None:
    p = sub.add_parser("token", help="API tokens for fleetctl serve --http: create, list, revoke")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    c = tsub.add_parser("create", help="create a token and print it (once: only its hash is stored)")
    _db_args(c)
    c.add_argument("--role", choices=ROLES, required=True)
    c.add_argument("--name", default="", help="who or what uses it (shown in lists and logs)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_create)
    ls = tsub.add_parser("list", help="tokens (id, name, role, created, revoked), never their secrets")
    _db_args(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    r = tsub.add_parser("revoke", help="revoke a token by its id")
    _db_args(r)
    r.add_argument("id")
    r.set_defaults(func=cmd_revoke)


def _tokens(args: argparse.Namespace, create: bool = False) -> TokenStore:
    """The store's tokens; ``create`` (token create, before the first serve) may create the store."""
    from fleet.lookup import open_store

    store = open_store(args, create=create, announce=create)
    return TokenStore(store.engine, store.prefix)


def cmd_create(args: argparse.Namespace) -> int:
    tok, clear = _tokens(args, create=True).create(args.role, args.name)
    if args.json:
        print(json.dumps({**tok.to_dict(), "token": clear}))
    else:
        print(clear)
        print(
            f"token {tok.id} ({tok.role}{', ' + tok.name if tok.name else ''}): shown once, keep it safe",
            file=sys.stderr,
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [t.to_dict() for t in _tokens(args).list()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, ["id", "name", "role", "created", "revoked"]) if rows else "no tokens")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    try:
        tok = _tokens(args).revoke(args.id)
    except TokenError as exc:
        raise FleetctlError(Exit.NOT_FOUND, f"token revoke: {exc.message}") from None
    print(f"token {tok.id} revoked")
    return 0
