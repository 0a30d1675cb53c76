"""The provisioning registry: claims, devices, issued certificates, revocations and an audit log.

SQLite at ``<state>/provisioning.db``. Each call opens its own connection, so the store can be
used from worker threads; the redeem step is one transaction, so a token is used at most once
even with several responders. Like the CA key, the registry is private: the state directory is
0700 and the database with its ``-wal``/``-shm``/``-journal`` files 0600 (wrong modes left by an
older version are fixed on open; what cannot be fixed is refused with :class:`UnsafeStateError`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.provisioning.ca import CAError
from provisioning.token import ClaimToken, hash_secret, secret_matches

DIR_MODE, FILE_MODE = 0o700, 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, group_name TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL, device_id TEXT);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, group_name TEXT NOT NULL, name TEXT, location TEXT, hardware TEXT,
    claim_id TEXT, claimed_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS certs (
    serial TEXT PRIMARY KEY, cn TEXT NOT NULL, kind TEXT NOT NULL, not_before REAL, not_after REAL,
    issued_at REAL NOT NULL, revoked_at REAL, reason TEXT, pem TEXT);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, event TEXT NOT NULL, claim_id TEXT,
    device_id TEXT, detail TEXT);
"""


class UnsafeStateError(CAError):
    """The fleet state directory or registry is readable by others and cannot be made private."""


def make_private(path: Path, mode: int) -> None:
    """Take every permission bit beyond ``mode`` off ``path`` (a directory or a regular file)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeStateError(f"{path} is a symbolic link: the fleet state must be a real file or directory")
    extra = stat.S_IMODE(st.st_mode) & ~mode
    if not extra:
        return
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    except OSError as exc:
        raise UnsafeStateError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o} (others can read the claims, "
            f"registry and audit log) and it cannot be changed ({exc.strerror}): run "
            f"`chmod {mode:o} {path}` as its owner"
        ) from None


class ClaimRefused(Exception):
    """A claim or renewal is refused; ``code`` goes to the device, ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Claim:
    id: str
    group: str
    created_at: float
    expires_at: float
    used_at: float | None
    device_id: str | None


class ProvisioningStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "provisioning.db"
        self._secure()
        with self._db() as db:
            db.executescript(SCHEMA)

    def _secure(self) -> None:
        """State directory 0700, database and SQLite's side files 0600 (created so, or fixed)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        make_private(self.path.parent, DIR_MODE)
        if not self.path.exists():  # SQLite would create it 0644 and give its -wal/-shm the same mode
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE))
        for p in (self.path, *(self.path.with_name(self.path.name + s) for s in SQLITE_SIDE_FILES)):
            if p.exists() or p.is_symlink():
                make_private(p, FILE_MODE)

    def _db(self) -> Any:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        return _Tx(db)

    # -- claims ----------------------------------------------------------------------------
    def create_claims(self, group: str, ttl_s: float, count: int, ca_der: bytes) -> list[ClaimToken]:
        now = time.time()
        tokens = [ClaimToken.new(ca_der) for _ in range(count)]
        with self._db() as db:
            for t in tokens:
                db.execute(
                    "INSERT INTO claims (id, secret_hash, group_name, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (t.id, hash_secret(t.secret), group, now, now + ttl_s),
                )
                self._audit(db, "claim_created", t.id, None, {"group": group, "expires_at": now + ttl_s})
        return tokens

    def claims(self) -> list[Claim]:
        with self._db() as db:
            rows = db.execute(
                "SELECT id, group_name, created_at, expires_at, used_at, device_id "
                "FROM claims ORDER BY created_at"
            ).fetchall()
        return [Claim(*r) for r in rows]

    def open_claims_with_hashes(self, now: float | None = None) -> list[tuple[Claim, str]]:
        """Unused, unexpired claims with their stored secret hash (for the claim listener's logins)."""
        now = time.time() if now is None else now
        with self._db() as db:
            rows = db.execute(
                "SELECT id, group_name, created_at, expires_at, used_at, device_id, secret_hash "
                "FROM claims WHERE used_at IS NULL AND expires_at > ? ORDER BY created_at",
                (now,),
            ).fetchall()
        return [(Claim(*r[:6]), r[6]) for r in rows]

    def check_claim(
        self, token_id: str, secret: str, now: float | None = None, device_id: str | None = None
    ) -> Claim:
        """Validate a token without using it; refusals are audited. A token already used by
        ``device_id`` itself (the device re-sent its request) is returned with ``used_at`` set."""
        now = time.time() if now is None else now
        with self._db() as db:
            row = db.execute(
                "SELECT id, group_name, created_at, expires_at, used_at, device_id, secret_hash "
                "FROM claims WHERE id = ?",
                (token_id,),
            ).fetchone()
            if row is None or not secret_matches(secret, row[6]):
                self._audit(db, "claim_refused", token_id, None, {"code": "bad_token"})
                raise ClaimRefused(
                    "bad_token", "unknown claim token: check it was typed correctly, or ask for a new one"
                )
            claim = Claim(*row[:6])
            if claim.used_at is not None and device_id and claim.device_id == device_id:
                self._audit(db, "claim_repeated", token_id, device_id, {})
                return claim
            if claim.used_at is not None:
                self._audit(
                    db, "claim_refused", token_id, None, {"code": "used_token", "device_id": claim.device_id}
                )
                raise ClaimRefused(
                    "used_token",
                    "this claim token was already used "
                    f"({_iso(claim.used_at)}): each token works once; ask for a new one",
                )
            if now >= claim.expires_at:
                self._audit(db, "claim_refused", token_id, None, {"code": "expired_token"})
                raise ClaimRefused(
                    "expired_token",
                    f"this claim token expired at {_iso(claim.expires_at)}: ask for a new one",
                )
        return claim

    def redeem(
        self,
        claim: Claim,
        device_id: str,
        info: dict[str, str],
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
        pem: bytes = b"",
    ) -> None:
        """Mark the claim used and register the device and its certificate, atomically."""
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "UPDATE claims SET used_at = ?, device_id = ? WHERE id = ? AND used_at IS NULL",
                (now, device_id, claim.id),
            )
            if cur.rowcount != 1:
                db.execute("ROLLBACK")
                with self._db() as db2:
                    self._audit(
                        db2, "claim_refused", claim.id, device_id, {"code": "used_token", "race": True}
                    )
                raise ClaimRefused("used_token", "this claim token was already used: each token works once")
            db.execute(
                "INSERT OR REPLACE INTO devices (id, group_name, name, location, hardware, claim_id, "
                "claimed_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    device_id,
                    claim.group,
                    info.get("name", ""),
                    info.get("location", ""),
                    info.get("hardware", ""),
                    claim.id,
                    now,
                ),
            )
            self._insert_cert(db, serial, device_id, "device", not_before, not_after, pem)
            self._audit(
                db, "device_claimed", claim.id, device_id, {"group": claim.group, "serial": f"{serial:x}"}
            )
            db.execute("COMMIT")

    # -- devices and certificates ----------------------------------------------------------
    def device(self, device_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute(
                "SELECT id, group_name, name, location, hardware, claim_id, claimed_at, revoked_at "
                "FROM devices WHERE id = ?",
                (device_id,),
            ).fetchone()
        if row is None:
            return None
        keys = ("id", "group", "name", "location", "hardware", "claim_id", "claimed_at", "revoked_at")
        return dict(zip(keys, row, strict=True))

    def devices(self) -> list[dict[str, Any]]:
        with self._db() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM devices ORDER BY claimed_at")]
        return [d for d in (self.device(i) for i in ids) if d]

    def record_cert(
        self,
        serial: int,
        cn: str,
        kind: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        event: str = "cert_issued",
        pem: bytes = b"",
    ) -> None:
        with self._db() as db:
            self._insert_cert(db, serial, cn, kind, not_before, not_after, pem)
            self._audit(db, event, None, cn, {"kind": kind, "serial": f"{serial:x}"})

    def _insert_cert(
        self, db: Any, serial: int, cn: str, kind: str, nb: dt.datetime, na: dt.datetime, pem: bytes = b""
    ) -> None:
        db.execute(
            "INSERT INTO certs (serial, cn, kind, not_before, not_after, issued_at, pem) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (f"{serial:x}", cn, kind, nb.timestamp(), na.timestamp(), time.time(), pem.decode() or None),
        )

    def latest_cert_pem(self, cn: str) -> bytes | None:
        """The newest unrevoked certificate issued to ``cn`` (PEM), if recorded."""
        with self._db() as db:
            row = db.execute(
                "SELECT pem FROM certs WHERE cn = ? AND revoked_at IS NULL AND pem IS NOT NULL "
                "ORDER BY issued_at DESC LIMIT 1",
                (cn,),
            ).fetchone()
        return row[0].encode() if row else None

    def revoke_device(self, device_id: str, reason: str = "") -> int:
        """Revoke every certificate issued to ``device_id``; returns how many."""
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is None:
                db.execute("ROLLBACK")
                raise ClaimRefused("unknown_device", f"no device {device_id!r} in the registry")
            db.execute("UPDATE devices SET revoked_at = ? WHERE id = ?", (now, device_id))
            n = db.execute(
                "UPDATE certs SET revoked_at = ?, reason = ? WHERE cn = ? AND revoked_at IS NULL",
                (now, reason, device_id),
            ).rowcount
            self._audit(db, "device_revoked", None, device_id, {"certs": n, "reason": reason})
            db.execute("COMMIT")
        return n

    def is_revoked(self, device_id: str) -> bool:
        d = self.device(device_id)
        return d is None or d["revoked_at"] is not None

    def revoked(self) -> list[tuple[int, dt.datetime]]:
        with self._db() as db:
            rows = db.execute("SELECT serial, revoked_at FROM certs WHERE revoked_at IS NOT NULL").fetchall()
        return [(int(s, 16), dt.datetime.fromtimestamp(t, dt.UTC)) for s, t in rows]

    # -- audit -----------------------------------------------------------------------------
    def audit(
        self, event: str, claim_id: str | None = None, device_id: str | None = None, **detail: Any
    ) -> None:
        with self._db() as db:
            self._audit(db, event, claim_id, device_id, detail)

    @staticmethod
    def _audit(
        db: Any, event: str, claim_id: str | None, device_id: str | None, detail: dict[str, Any]
    ) -> None:
        db.execute(
            "INSERT INTO audit (ts, event, claim_id, device_id, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), event, claim_id, device_id, json.dumps(detail, sort_keys=True)),
        )

    def audit_log(self, claim_id: str | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            q = "SELECT ts, event, claim_id, device_id, detail FROM audit"
            rows = db.execute(
                q + (" WHERE claim_id = ?" if claim_id else "") + " ORDER BY id",
                (claim_id,) if claim_id else (),
            ).fetchall()
        return [
            {"ts": r[0], "event": r[1], "claim_id": r[2], "device_id": r[3], "detail": json.loads(r[4])}
            for r in rows
        ]


class _Tx:
    """``with`` support that always closes the connection (autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None and self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self.db.close()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
