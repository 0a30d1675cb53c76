"""The API's read queries: filtered, paginated pages of devices and alerts, and alert acknowledgements.

Built on the fleet store's tables (``fleet.store.Store``), one SQLAlchemy Core code path for SQLite
and PostgreSQL. A page is one ``COUNT(*)`` with the filters plus one ``LIMIT/OFFSET`` select
ordered by the primary key; per-device alert counts are fetched for the page's ids only.
Acknowledgements are the store's (``alert_acks``, ``Store.ack_alert``): one per raise of an alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from fleet.store import Store

SEVERITIES = ("P1", "P2", "P3")


@dataclass
class DeviceFilter:
    """``GET /api/v1/devices`` filters; None means any."""

    group: str | None = None
    online: bool | None = None
    version: str | None = None
    severity: str | None = None  # devices holding an active alert of this severity
    prefix: str | None = None  # device id prefix, or (with provisioning) name prefix
    ids: list[str] | None = None  # extra ids matching the prefix by name (from provisioning)
    after: str | None = None  # keyset cursor: ids greater than this (not counted in ``total``)


@dataclass
class AlertFilter:
    severity: str | None = None
    active: bool | None = True
    device: str | None = None
    scope: str | None = None


def _like_prefix(col: sa.ColumnElement[Any], prefix: str) -> sa.ColumnElement[bool]:
    esc = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return col.like(esc + "%", escape="\\")


class ApiQueries:
    """Read side of the API over one :class:`Store` (thread-safe: each call has its own connection)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: Any = None

    @property
    def jobs(self) -> Any:
        """The store's rollout jobs (fleet/ota/jobs.py), opened on first use."""
        if self._jobs is None:
            from fleet.ota.jobs import Jobs

            self._jobs = Jobs(self.store)
        return self._jobs

    # ---- devices ---------------------------------------------------------------------------
    def devices_page(self, f: DeviceFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        d, a = self.store.devices.c, self.store.alerts.c
        where: list[sa.ColumnElement[bool]] = []
        if f.group is not None:
            where.append(d.grp == f.group)
        if f.online is not None:
            where.append(d.online == (sa.true() if f.online else sa.false()))
        if f.version is not None:
            where.append(d.version == f.version)
        if f.severity is not None:
            where.append(
                d.device_id.in_(
                    sa.select(a.device_id).where(
                        a.active == sa.true(), a.severity == f.severity, a.scope == "device"
                    )
                )
            )
        if f.prefix:
            match = _like_prefix(d.device_id, f.prefix)
            where.append(sa.or_(match, d.device_id.in_(f.ids)) if f.ids else match)
        cols = (
            d.device_id,
            d.grp,
            d.online,
            d.version,
            d.slot,
            d.hardware,
            d.boot,
            d.first_seen,
            d.last_seen,
            d.status_changed,
        )
        with self.store.engine.connect() as conn:
            total = int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(self.store.devices).where(*where)
                ).scalar()
                or 0
            )
            page = [*where, d.device_id > f.after] if f.after is not None else where
            rows = conn.execute(
                sa.select(*cols).where(*page).order_by(d.device_id).limit(limit).offset(offset)
            ).all()
            ids = [r.device_id for r in rows]
            counts: dict[str, dict[str, int]] = {}
            if ids:
                for dev, sev, n in conn.execute(
                    sa.select(a.device_id, a.severity, sa.func.count())
                    .where(a.device_id.in_(ids), a.active == sa.true(), a.scope == "device")
                    .group_by(a.device_id, a.severity)
                ):
                    counts.setdefault(dev, {})[sev] = int(n)
        return [
            {
                "id": r.device_id,
                "group": r.grp,
                "online": bool(r.online),
                "version": r.version,
                "slot": r.slot,
                "hardware": r.hardware,
                "boot": r.boot,
                "first_seen": r.first_seen,
                "last_seen": r.last_seen,
                "status_changed": r.status_changed,
                "active_alerts": sum(counts.get(r.device_id, {}).values()),
                "alerts_by_severity": counts.get(r.device_id, {}),
            }
            for r in rows
        ], total

    def device_online(self, device_id: str) -> bool | None:
        """True/False, or None for a device the store has never seen."""
        d = self.store.devices.c
        with self.store.engine.connect() as conn:
            r = conn.execute(sa.select(d.online).where(d.device_id == device_id)).first()
        return None if r is None else bool(r[0])

    # ---- alerts ----------------------------------------------------------------------------
    def alerts_page(self, f: AlertFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        a, k = self.store.alerts.c, self.store.acks.c
        where: list[sa.ColumnElement[bool]] = []
        if f.severity is not None:
            where.append(a.severity == f.severity)
        if f.active is not None:
            where.append(a.active == (sa.true() if f.active else sa.false()))
        if f.device is not None:
            where.append(a.device_id == f.device)
        if f.scope is not None:
            where.append(a.scope == f.scope)
        j = self.store.alerts.outerjoin(self.store.acks, sa.and_(k.key == a.key, k.raised == a.raised))
        with self.store.engine.connect() as conn:
            total = int(
                conn.execute(sa.select(sa.func.count()).select_from(self.store.alerts).where(*where)).scalar()
                or 0
            )
            rows = conn.execute(
                sa.select(self.store.alerts, k.by, k.at, k.note)
                .select_from(j)
                .where(*where)
                .order_by(a.raised.desc(), a.key)
                .limit(limit)
                .offset(offset)
            ).all()
        return [_alert(r) for r in rows], total

    def alert(self, key: str) -> dict[str, Any] | None:
        """One alert by its id (``device:ID:CODE`` or ``fleet:CODE``), with its acknowledgement."""
        a, k = self.store.alerts.c, self.store.acks.c
        j = self.store.alerts.outerjoin(self.store.acks, sa.and_(k.key == a.key, k.raised == a.raised))
        with self.store.engine.connect() as conn:
            r = conn.execute(
                sa.select(self.store.alerts, k.by, k.at, k.note).select_from(j).where(a.key == key)
            ).first()
        return None if r is None else _alert(r)

    # ---- metrics ---------------------------------------------------------------------------
    def device_counts(self) -> list[tuple[str, str, bool, int]]:
        """(group, version, online, count) over the registry."""
        d = self.store.devices.c
        with self.store.engine.connect() as conn:
            return [
                (r[0], r[1], bool(r[2]), int(r[3]))
                for r in conn.execute(
                    sa.select(d.grp, d.version, d.online, sa.func.count()).group_by(
                        d.grp, d.version, d.online
                    )
                )
            ]

    def open_alert_counts(self) -> list[tuple[str, str, str, int]]:
        """(scope, severity, code, count) of the active alerts."""
        a = self.store.alerts.c
        with self.store.engine.connect() as conn:
            return [
                (r[0], r[1], r[2], int(r[3]))
                for r in conn.execute(
                    sa.select(a.scope, a.severity, a.code, sa.func.count())
                    .where(a.active == sa.true())
                    .group_by(a.scope, a.severity, a.code)
                )
            ]

    def rollout_counts(self) -> tuple[list[tuple[str, int]], list[tuple[str, str, str, int]]]:
        """((status, jobs) over every rollout, (rollout, version, device state, devices) of the driven
        ones)."""
        from fleet.ota.jobs import DRIVEN

        r, d = self.jobs.rollouts.c, self.jobs.devices.c
        with self.store.engine.connect() as conn:
            jobs = [
                (row[0], int(row[1]))
                for row in conn.execute(sa.select(r.status, sa.func.count()).group_by(r.status))
            ]
            devs = [
                (row[0], row[1], row[2], int(row[3]))
                for row in conn.execute(
                    sa.select(r.id, r.version, d.state, sa.func.count())
                    .select_from(self.jobs.rollouts.join(self.jobs.devices, d.rollout_id == r.id))
                    .where(r.status.in_(DRIVEN))
                    .group_by(r.id, r.version, d.state)
                )
            ]
        return jobs, devs


def _alert(r: Any) -> dict[str, Any]:
    ack = {"by": r.by, "at": r.at, "note": r.note} if r.at is not None else None
    return {
        "id": r.key,
        "scope": r.scope,
        "device": r.device_id,
        "code": r.code,
        "severity": r.severity,
        "message": r.message,
        "active": bool(r.active),
        "raised": r.raised,
        "cleared": r.cleared,
        "acknowledged": ack,
    }
