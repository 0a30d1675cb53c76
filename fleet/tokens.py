"""API tokens with roles, stored hashed in the fleet store's database.

A token reads ``fleet_<id>_<secret>``: ``id`` (8 hex digits) names the row, ``secret`` (32 random
bytes, urlsafe base64) is never stored: the table keeps its SHA-256 only, compared in constant
time. Roles are ordered: ``viewer`` (read) < ``operator`` (+ commands, alert acknowledgement) <
``admin`` (+ token management). A revoked token stays listed (who, when) and is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

ROLES = ("viewer", "operator", "admin")
PREFIX = "fleet_"


class TokenError(ValueError):
    """A bad role, an unknown token id (``code``: bad_role | not_found)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Token:
    """One token's row (never its secret)."""

    id: str
    name: str
    role: str
    created: float
    revoked: float | None

    def allows(self, role: str) -> bool:
        """True when this token's role is ``role`` or above it."""
        return role_allows(self.role, role)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created": self.created,
            "revoked": self.revoked,
        }


def role_allows(have: str, need: str) -> bool:
    """Whether role ``have`` includes role ``need``."""
    return ROLES.index(have) >= ROLES.index(need)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """The ``{prefix}api_tokens`` table next to the fleet store's tables (same engine)."""

    def __init__(self, engine: sa.Engine, prefix: str = "") -> None:
        self.engine = engine
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            f"{prefix}api_tokens",
            self.metadata,
            sa.Column("id", sa.String(16), primary_key=True),
            sa.Column("name", sa.String(128), nullable=False, server_default=""),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("secret_sha256", sa.String(64), nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("revoked", sa.Float, nullable=True),
        )
        self.metadata.create_all(engine)

    def create(self, role: str, name: str = "") -> tuple[Token, str]:
        """A new token: returns its row and the clear token (shown once, stored nowhere)."""
        if role not in ROLES:
            raise TokenError("bad_role", f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        secret = secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            while True:
                tid = secrets.token_hex(4)
                if conn.execute(sa.select(self.table.c.id).where(self.table.c.id == tid)).first() is None:
                    break
            row = {
                "id": tid,
                "name": name,
                "role": role,
                "secret_sha256": _hash(secret),
                "created": time.time(),
                "revoked": None,
            }
            conn.execute(sa.insert(self.table).values(**row))
        return self._token(row), f"{PREFIX}{tid}_{secret}"

    def verify(self, token: str) -> Token | None:
        """The token's row if ``token`` is a valid, unrevoked token; otherwise None."""
        if not token.startswith(PREFIX):
            return None
        tid, sep, secret = token[len(PREFIX) :].partition("_")
        if not sep or not secret or len(tid) > 16:
            return None
        t = self.table.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table).where(t.id == tid)).mappings().first()
        if row is None or row["revoked"] is not None or row["role"] not in ROLES:
            return None
        if not hmac.compare_digest(_hash(secret), row["secret_sha256"]):
            return None
        return self._token(row)

    def list(self) -> list[Token]:
        with self.engine.connect() as conn:
            return [
                self._token(r)
                for r in conn.execute(sa.select(self.table).order_by(self.table.c.created)).mappings()
            ]

    def revoke(self, token_id: str) -> Token:
        """Revoke (idempotent); raises TokenError(not_found) for an unknown id."""
        t = self.table.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.table).where(t.id == token_id, t.revoked.is_(None)).values(revoked=time.time())
            )
            row = conn.execute(sa.select(self.table).where(t.id == token_id)).mappings().first()
        if row is None:
            raise TokenError("not_found", f"no token {token_id!r}")
        return self._token(row)

    def drop(self) -> None:
        self.metadata.drop_all(self.engine)

    @staticmethod
    def _token(row: Any) -> Token:
        return Token(row["id"], row["name"], row["role"], row["created"], row["revoked"])
