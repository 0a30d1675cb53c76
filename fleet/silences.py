"""Alert silences: an operator mutes one alert until a given time (who, when, why), stored next to the store.

A silence is keyed by the alert's id (``device:ID:CODE`` or ``fleet:CODE``) and holds until its
``until`` (epoch seconds): it covers every raise of that alert within the window, unlike an
acknowledgement, which holds for one raise only. Silencing again replaces the window; lifting it
deletes the row. An expired silence is simply ignored (and replaced by the next one). Silences
change what the console shows (a silenced alert leaves the "needs attention" count); they do not
stop the store from raising or clearing the alert.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa


class SilenceStore:
    """The ``{prefix}alert_silences`` table on the fleet store's engine (blocking: call from a thread)."""

    def __init__(self, engine: sa.Engine, prefix: str = "") -> None:
        self.engine = engine
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            f"{prefix}alert_silences",
            self.metadata,
            sa.Column("key", sa.String(300), primary_key=True),
            sa.Column("until", sa.Float, nullable=False),
            sa.Column("by", sa.String(128), nullable=False),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("note", sa.Text, nullable=False, server_default=""),
        )
        self.metadata.create_all(engine)

    def silence(
        self, key: str, until: float, by: str, note: str = "", now: float | None = None
    ) -> dict[str, Any]:
        """Silence alert ``key`` until ``until``; replaces an earlier silence of it."""
        at = time.time() if now is None else now
        row = {"key": key, "until": until, "by": by, "at": at, "note": note}
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self.table).where(self.table.c.key == key))
            conn.execute(sa.insert(self.table).values(**row))
        return _public(row)

    def lift(self, key: str) -> bool:
        """Remove the silence of ``key``; False when there was none."""
        with self.engine.begin() as conn:
            return bool(conn.execute(sa.delete(self.table).where(self.table.c.key == key)).rowcount)

    def active(self, keys: list[str], now: float | None = None) -> dict[str, dict[str, Any]]:
        """key -> {until, by, at, note} for those of ``keys`` silenced at ``now``."""
        if not keys:
            return {}
        t = self.table.c
        now = time.time() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(keys), 500):
                for r in conn.execute(
                    sa.select(self.table).where(t.key.in_(keys[i : i + 500]), t.until > now)
                ).mappings():
                    out[r["key"]] = _public(r)
        return out

    def all_active(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Every silence in force at ``now``."""
        t = self.table.c
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            return {
                r["key"]: _public(r)
                for r in conn.execute(sa.select(self.table).where(t.until > now)).mappings()
            }

    def drop(self) -> None:
        self.metadata.drop_all(self.engine)


def _public(row: Any) -> dict[str, Any]:
    return {"until": row["until"], "by": row["by"], "at": row["at"], "note": row["note"]}
