"""Store-and-forward spool: a bounded SQLite (WAL) queue of outgoing messages.

Every telemetry sample and event goes through the spool, so delivery order is the order of
``append`` across outages and restarts. When the byte bound is hit, the oldest *telemetry* rows are
dropped first; events are dropped only when no telemetry is left. Drops are counted in the database
(they survive restarts) and reported in the health sample.

The class is synchronous (SQLite); :class:`~device_agent.fleetlink.link.FleetLink` calls it through
a single worker thread so the event loop never blocks and call order is kept.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

KIND_TELEMETRY = "telemetry"
KIND_EVENT = "event"


@dataclass(frozen=True)
class SpoolRow:
    id: int
    kind: str
    topic: str
    payload: bytes


class Spool:
    """A bounded FIFO on disk; ``max_bytes`` counts payload and topic bytes."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.quarantined: Path | None = None  # a corrupt spool found at start was moved here
        try:
            self._open()
        except sqlite3.DatabaseError:
            self._db.close()
            self.quarantined = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(str(self.quarantined) + suffix)
            self._open()

    def _open(self) -> None:
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " kind TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,"
            " size INTEGER NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])

    # ---- counters ------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, key: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
            " SET value = value + excluded.value",
            (key, n),
        )

    def stats(self) -> dict[str, int]:
        """Depth, bytes and drop counters (cumulative, across restarts)."""
        with self._lock:
            return {
                "depth": self._count,
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "dropped_telemetry": self._meta("dropped_telemetry"),
                "dropped_events": self._meta("dropped_events"),
            }

    # ---- queue ---------------------------------------------------------------------------
    def append(self, kind: str, topic: str, payload: bytes) -> dict[str, int]:
        """Add one message; returns the rows dropped to stay within the bound by kind."""
        size = len(payload) + len(topic)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO spool(kind, topic, payload, size) VALUES (?, ?, ?, ?)",
                    (kind, topic, payload, size),
                )
                self._count += 1
                self._bytes += size
                dropped = self._enforce_bound()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
                self._count, self._bytes = int(row[0]), int(row[1])
                raise
            return dropped

    def _enforce_bound(self) -> dict[str, int]:
        dropped = {KIND_TELEMETRY: 0, KIND_EVENT: 0}
        for kind in (KIND_TELEMETRY, KIND_EVENT):
            while self._bytes > self.max_bytes:
                rows = self._db.execute(
                    "SELECT id, size FROM spool WHERE kind = ? ORDER BY id LIMIT 64", (kind,)
                ).fetchall()
                if not rows:
                    break
                ids = []
                for rid, size in rows:
                    if self._bytes <= self.max_bytes:
                        break
                    ids.append(rid)
                    self._bytes -= size
                    self._count -= 1
                self._db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
                dropped[kind] += len(ids)
        if dropped[KIND_TELEMETRY]:
            self._bump("dropped_telemetry", dropped[KIND_TELEMETRY])
        if dropped[KIND_EVENT]:
            self._bump("dropped_events", dropped[KIND_EVENT])
        return dropped

    def peek(self, after_id: int = 0, limit: int = 100) -> list[SpoolRow]:
        """The oldest rows with ``id > after_id``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, topic, payload FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [SpoolRow(int(r[0]), r[1], r[2], bytes(r[3])) for r in rows]

    def delete(self, ids: list[int]) -> None:
        """Forget delivered rows (ids that are already gone are ignored)."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for rid in ids:
                    row = self._db.execute("DELETE FROM spool WHERE id = ? RETURNING size", (rid,)).fetchone()
                    if row is not None:
                        self._count -= 1
                        self._bytes -= int(row[0])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
