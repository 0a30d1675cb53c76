"""The fleet store: device registry, latest status, health history, events and alerts.

One SQLAlchemy Core code path for SQLite (default, WAL) and PostgreSQL (``postgresql://`` URLs,
psycopg 3). Telemetry and events are de-duplicated by (device, boot, seq) with a unique index and
``INSERT .. ON CONFLICT DO NOTHING``, so a redelivered message is stored once whichever worker
sees it. ``prefix`` prefixes every table name (several fleets or test runs in one database).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fleet.rollups import FUTURE_SLACK_S, Rollups, sample_metrics


@dataclass
class Incoming:
    """One message as received: ``kind`` is status | telemetry | events."""

    kind: str
    device: str
    payload: bytes
    received: float


def normalise_url(url: str) -> str:
    """``postgresql://`` uses psycopg 3; a bare path means a SQLite file."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().absolute()}"
    return url


class Store:
    """Synchronous store; the service calls it from one worker thread."""

    def __init__(self, url: str, prefix: str = "", rollups: bool = True) -> None:
        self.url = normalise_url(url)
        self.engine = sa.create_engine(self.url, future=True)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":

            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()

        self.prefix = prefix
        md = self.metadata = sa.MetaData()
        p = prefix
        self.devices = sa.Table(
            f"{p}devices",
            md,
            sa.Column("device_id", sa.String(128), primary_key=True),
            sa.Column("grp", sa.String(128), nullable=False, server_default="default"),
            sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("boot", sa.String(64), nullable=False, server_default=""),
            sa.Column("version", sa.String(64), nullable=False, server_default=""),
            sa.Column("slot", sa.String(16), nullable=False, server_default=""),
            sa.Column("hardware", sa.String(64), nullable=False, server_default=""),
            sa.Column("first_seen", sa.Float, nullable=False),
            sa.Column("last_seen", sa.Float, nullable=False),
            sa.Column("status_changed", sa.Float, nullable=False),
            sa.Column("status", sa.Text, nullable=False, server_default="{}"),
            sa.Column("health", sa.Text, nullable=False, server_default="{}"),
            sa.Column("health_ts", sa.Float, nullable=False, server_default="0"),
        )
        self.telemetry = sa.Table(
            f"{p}telemetry",
            md,
            sa.Column(
                "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
            ),
            sa.Column("device_id", sa.String(128), nullable=False),
            sa.Column("boot", sa.String(64), nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("received", sa.Float, nullable=False),
            sa.Column("payload", sa.Text, nullable=False),
            sa.UniqueConstraint("device_id", "boot", "seq", name=f"{p}telemetry_dbs"),
        )
        self.events = sa.Table(
            f"{p}events",
            md,
            sa.Column(
                "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
            ),
            sa.Column("device_id", sa.String(128), nullable=False),
            sa.Column("boot", sa.String(64), nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("received", sa.Float, nullable=False),
            sa.Column("type", sa.String(64), nullable=False),
            sa.Column("payload", sa.Text, nullable=False),
            sa.UniqueConstraint("device_id", "boot", "seq", name=f"{p}events_dbs"),
        )
        self.alerts = sa.Table(
            f"{p}alerts",
            md,
            sa.Column("key", sa.String(300), primary_key=True),  # "device:ID:CODE" or "fleet:CODE"
            sa.Column("scope", sa.String(16), nullable=False),
            sa.Column("device_id", sa.String(128), nullable=False, server_default=""),
            sa.Column("code", sa.String(128), nullable=False),
            sa.Column("severity", sa.String(4), nullable=False),
            sa.Column("message", sa.Text, nullable=False, server_default=""),
            sa.Column("active", sa.Boolean, nullable=False),
            sa.Column("raised", sa.Float, nullable=False),
            sa.Column("cleared", sa.Float, nullable=True),
        )
        self.acks = sa.Table(  # an acknowledgement holds for one raising of an alert (a new raise is unacked)
            f"{p}alert_acks",
            md,
            sa.Column("key", sa.String(300), primary_key=True),
            sa.Column("raised", sa.Float, primary_key=True),
            sa.Column("by", sa.String(128), nullable=False),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("note", sa.Text, nullable=False, server_default=""),
        )
        self.group_metrics = sa.Table(  # per-group figures over time, for baselines (fleet/trend_rules.py)
            f"{p}group_metrics",
            md,
            sa.Column(
                "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
            ),
            sa.Column("grp", sa.String(128), nullable=False),
            sa.Column("metric", sa.String(64), nullable=False),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("value", sa.Float, nullable=False),
        )
        sa.Index(
            f"{p}group_metrics_gmt",
            self.group_metrics.c.grp,
            self.group_metrics.c.metric,
            self.group_metrics.c.ts,
        )
        sa.Index(f"{p}telemetry_dev_id", self.telemetry.c.device_id, self.telemetry.c.id)
        sa.Index(f"{p}events_dev_id", self.events.c.device_id, self.events.c.id)
        # per-minute and per-hour rollups of the numeric metrics (fleet/rollups.py), filled at ingest
        self.rollups = Rollups(md, p, self.dialect)
        self.rollups_on = rollups
        md.create_all(self.engine)

    def _insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    def drop_all(self) -> None:
        self.metadata.drop_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # ---- ingest --------------------------------------------------------------------------
    def ingest(self, batch: list[Incoming]) -> dict[str, int]:
        """Store one batch in one transaction; returns counts (stored, duplicate, bad)."""
        tele: list[dict[str, Any]] = []
        metrics: dict[tuple[str, str, int], tuple[float, dict[str, float]]] = {}  # for the rollups
        events: list[dict[str, Any]] = []
        devices: dict[str, dict[str, Any]] = {}
        alert_ops: list[tuple[str, dict[str, Any]]] = []
        event_alerts: dict[tuple[str, str, int], tuple[str, dict[str, Any]]] = {}
        flipped: set[str] = set()  # devices whose online state changed within this batch
        bad = 0
        for m in batch:
            try:
                obj = json.loads(m.payload)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError:
                bad += 1
                continue
            dev = devices.setdefault(m.device, {"device_id": m.device, "last_seen": m.received})
            dev["last_seen"] = max(dev["last_seen"], m.received)
            if m.kind == "status":
                online = bool(obj.get("online"))
                # status_changed = start of the batch's last run of equal states; the upsert keeps
                # the stored time unless ``online`` really flips (replayed retained statuses)
                if dev.get("online", online) != online:
                    flipped.add(m.device)
                    dev["status_changed"] = m.received
                elif "status_changed" not in dev:
                    dev["status_changed"] = m.received
                dev.update(
                    online=online,
                    status=json.dumps(obj, separators=(",", ":")),
                    boot=str(obj.get("boot", "")),
                    version=str(obj.get("version", "")),
                    slot=str(obj.get("slot", "")),
                    hardware=str(obj.get("hardware", "")),
                    grp=str(obj.get("group") or "default"),
                )
                if online:
                    alert_ops.append(("clear", {"device_id": m.device, "code": "offline", "ts": m.received}))
                elif obj.get("reason") != "stopped":
                    alert_ops.append(
                        (
                            "raise",
                            {
                                "device_id": m.device,
                                "code": "offline",
                                "severity": "P1",
                                "message": "device lost its connection (last will)",
                                "ts": m.received,
                            },
                        )
                    )
                continue
            try:
                boot, seq, ts = str(obj["boot"]), int(obj["seq"]), float(obj.get("ts", m.received))
            except (KeyError, TypeError, ValueError):
                bad += 1
                continue
            text = m.payload.decode("utf-8", "replace")
            if m.kind == "telemetry":
                tele.append(
                    {
                        "device_id": m.device,
                        "boot": boot,
                        "seq": seq,
                        "ts": ts,
                        "received": m.received,
                        "payload": text,
                    }
                )
                if self.rollups_on:
                    metrics.setdefault(
                        (m.device, boot, seq),
                        (min(ts, m.received + FUTURE_SLACK_S), sample_metrics(obj.get("health"))),
                    )
                if ts >= dev.get("health_ts", 0):
                    dev["health"] = obj.get("health", {})  # serialised once per device, below
                    dev["health_ts"] = ts
            else:
                events.append(
                    {
                        "device_id": m.device,
                        "boot": boot,
                        "seq": seq,
                        "ts": ts,
                        "received": m.received,
                        "type": str(obj.get("type", "")),
                        "payload": text,
                    }
                )
                if obj.get("type") == "alert" and obj.get("code"):
                    op = "raise" if obj.get("active", True) else "clear"
                    # applied only if this event row is new (not a redelivery), see below
                    event_alerts.setdefault(
                        (m.device, boot, seq),
                        (
                            op,
                            {
                                "device_id": m.device,
                                "code": str(obj["code"]),
                                "severity": str(obj.get("severity", "P3")),
                                "message": str(obj.get("message", "")),
                                "ts": ts,
                            },
                        ),
                    )
        for dev in devices.values():
            if "health" in dev:
                dev["health"] = json.dumps(dev["health"], separators=(",", ":"))
        stored = 0
        with self.engine.begin() as conn:
            self._upsert_devices(conn, list(devices.values()))
            for dev_id in flipped:  # the last in-batch flip wins whatever the stored state was
                conn.execute(
                    sa.update(self.devices)
                    .where(self.devices.c.device_id == dev_id)
                    .values(status_changed=devices[dev_id]["status_changed"])
                )
            if tele:
                fresh_tele = self._insert_new(conn, self.telemetry, tele)
                stored += len(fresh_tele)
                if metrics:  # new samples only: a redelivery adds nothing
                    self.rollups.add(conn, [(k[0], *metrics[k]) for k in fresh_tele if k in metrics])
            if events:
                fresh = set(self._insert_new(conn, self.events, events))
                stored += len(fresh)
                alert_ops += [op for k, op in event_alerts.items() if k in fresh]
            alert_ops.sort(key=lambda o: o[1]["ts"])  # stable: per alert, oldest operation first
            for op, a in alert_ops:
                self._device_alert(conn, op, a)
        n = len(tele) + len(events)
        return {"stored": stored, "duplicate": n - stored, "bad": bad}

    def _insert_new(
        self, conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> list[tuple[str, str, int]]:
        """Insert the rows that are not stored yet (unique on device, boot, seq); returns their keys.

        On PostgreSQL the rows are COPYed into a per-connection temporary table and moved with one
        ``INSERT .. SELECT .. ON CONFLICT DO NOTHING``: a multi-row ``VALUES`` statement of a batch
        costs more CPU to build and parse than the rows themselves. SQLite takes the ``executemany``.
        """
        c = table.c
        if self.dialect != "postgresql":
            res = conn.execute(
                self._insert(table)
                .on_conflict_do_nothing(index_elements=["device_id", "boot", "seq"])
                .returning(c.device_id, c.boot, c.seq),
                rows,
            )
            return [(r[0], r[1], int(r[2])) for r in res]
        cols = list(rows[0])
        quote = conn.dialect.identifier_preparer.quote
        target, stage = quote(table.name), quote(f"{table.name}_stage")
        types = ", ".join(f"{k} {c[k].type.compile(conn.dialect)}" for k in cols)
        # every time: a rolled-back transaction takes a table it created with it
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ({types}) ON COMMIT DELETE ROWS")
        names = ", ".join(cols)
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row([r[k] for k in cols])
            cur.execute(
                f"INSERT INTO {target} ({names}) SELECT {names} FROM {stage} "
                "ON CONFLICT (device_id, boot, seq) DO NOTHING RETURNING device_id, boot, seq"
            )
            fresh = [(r[0], r[1], int(r[2])) for r in cur.fetchall()]
            cur.execute(f"TRUNCATE {stage}")  # a later batch in this transaction starts empty
        finally:
            cur.close()
        return fresh

    def _upsert_devices(self, conn: sa.Connection, devs: list[dict[str, Any]]) -> None:
        """One executemany per distinct set of changed columns (telemetry-only, with status...)."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for dev in devs:
            groups.setdefault(tuple(sorted(dev)), []).append(dev)
        for keys, rows in groups.items():
            ins = self._insert(self.devices)
            d = self.devices.c
            update = {k: ins.excluded[k] for k in keys if k not in ("device_id", "first_seen")}
            update["last_seen"] = sa.case(
                (ins.excluded.last_seen > d.last_seen, ins.excluded.last_seen), else_=d.last_seen
            )
            if "status_changed" in keys:
                update["status_changed"] = sa.case(
                    (d.online != ins.excluded.online, ins.excluded.status_changed), else_=d.status_changed
                )
            if "health_ts" in keys:  # a slower worker's older sample must not replace a newer one
                newer = ins.excluded.health_ts >= d.health_ts
                update["health"] = sa.case((newer, ins.excluded.health), else_=d.health)
                update["health_ts"] = sa.case((newer, ins.excluded.health_ts), else_=d.health_ts)
            full = [
                {"first_seen": r["last_seen"], "status_changed": r.get("status_changed", r["last_seen"]), **r}
                for r in rows
            ]
            conn.execute(ins.on_conflict_do_update(index_elements=["device_id"], set_=update), full)

    def _device_alert(self, conn: sa.Connection, op: str, a: dict[str, Any]) -> None:
        key = f"device:{a['device_id']}:{a['code']}"
        self._set_alert(
            conn,
            op,
            key,
            "device",
            a["device_id"],
            a["code"],
            a.get("severity", "P3"),
            a.get("message", ""),
            a.get("ts", time.time()),
        )

    def _set_alert(
        self,
        conn: sa.Connection,
        op: str,
        key: str,
        scope: str,
        device: str,
        code: str,
        severity: str,
        message: str,
        ts: float,
    ) -> bool:
        """Raise or clear; returns True when the state changed. An operation older than the
        alert's last change (raised or cleared) is stale and ignored."""
        al = self.alerts.c
        cur = conn.execute(sa.select(al.active, al.raised, al.cleared).where(al.key == key)).first()
        if cur is not None and ts < max(cur[1], cur[2] or cur[1]):
            return False
        if op == "raise":
            if cur is not None and cur[0]:
                return False
            row = {
                "key": key,
                "scope": scope,
                "device_id": device,
                "code": code,
                "severity": severity,
                "message": message,
                "active": True,
                "raised": ts,
                "cleared": None,
            }
            conn.execute(
                self._insert(self.alerts)
                .values(**row)
                .on_conflict_do_update(
                    index_elements=["key"], set_={k: v for k, v in row.items() if k != "key"}
                )
            )
            return True
        if cur is None or not cur[0]:
            return False
        values: dict[str, Any] = {"active": False, "cleared": ts}
        if message:
            values["message"] = message
        conn.execute(sa.update(self.alerts).where(self.alerts.c.key == key).values(**values))
        return True

    def set_fleet_alert(self, op: str, code: str, severity: str, message: str) -> bool:
        with self.engine.begin() as conn:
            return self._set_alert(
                conn, op, f"fleet:{code}", "fleet", "", code, severity, message, time.time()
            )

    # ---- queries -------------------------------------------------------------------------
    def list_devices(self, group: str | None = None) -> list[dict[str, Any]]:
        d, a = self.devices, self.alerts
        active = (
            sa.select(sa.func.count())
            .where(a.c.device_id == d.c.device_id, a.c.active == sa.true())
            .scalar_subquery()
        )
        q = sa.select(
            d.c.device_id,
            d.c.grp,
            d.c.online,
            d.c.version,
            d.c.slot,
            d.c.last_seen,
            d.c.status_changed,
            active.label("alerts"),
        ).order_by(d.c.device_id)
        if group:
            q = q.where(d.c.grp == group)
        with self.engine.connect() as conn:
            return [
                {
                    "device": r.device_id,
                    "group": r.grp,
                    "online": bool(r.online),
                    "version": r.version,
                    "slot": r.slot,
                    "last_seen": r.last_seen,
                    "status_changed": r.status_changed,
                    "active_alerts": int(r.alerts),
                }
                for r in conn.execute(q)
            ]

    def device(self, device_id: str, history: int = 20) -> dict[str, Any] | None:
        d, t, e, a = self.devices, self.telemetry, self.events, self.alerts
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(d).where(d.c.device_id == device_id)).first()
            if r is None:
                return None
            tel = conn.execute(
                sa.select(t.c.boot, t.c.seq, t.c.ts, t.c.payload)
                .where(t.c.device_id == device_id)
                .order_by(t.c.id.desc())
                .limit(history)
            ).all()
            ev = conn.execute(
                sa.select(e.c.payload)
                .where(e.c.device_id == device_id)
                .order_by(e.c.id.desc())
                .limit(history)
            ).all()
            al = conn.execute(sa.select(a).where(a.c.device_id == device_id, a.c.active == sa.true())).all()
            count = conn.execute(
                sa.select(sa.func.count()).select_from(t).where(t.c.device_id == device_id)
            ).scalar()
        return {
            "device": r.device_id,
            "group": r.grp,
            "online": bool(r.online),
            "boot": r.boot,
            "version": r.version,
            "slot": r.slot,
            "hardware": r.hardware,
            "first_seen": r.first_seen,
            "last_seen": r.last_seen,
            "status_changed": r.status_changed,
            "status": json.loads(r.status),
            "health": json.loads(r.health),
            "health_ts": r.health_ts,
            "telemetry_count": int(count or 0),
            "recent_telemetry": [{"boot": x.boot, "seq": x.seq, "ts": x.ts} for x in tel],
            "recent_events": [json.loads(x.payload) for x in ev],
            "active_alerts": [_alert_dict(x) for x in al],
        }

    def telemetry_seqs(self, device_id: str) -> list[tuple[str, int]]:
        """(boot, seq) of every stored sample in arrival order (tests and audits)."""
        t = self.telemetry
        with self.engine.connect() as conn:
            return [
                (r[0], int(r[1]))
                for r in conn.execute(
                    sa.select(t.c.boot, t.c.seq).where(t.c.device_id == device_id).order_by(t.c.id)
                )
            ]

    def event_rows(self, device_id: str) -> list[dict[str, Any]]:
        e = self.events
        with self.engine.connect() as conn:
            return [
                json.loads(r[0])
                for r in conn.execute(
                    sa.select(e.c.payload).where(e.c.device_id == device_id).order_by(e.c.id)
                )
            ]

    def sessions(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """A device's viewer-session records (``media.session`` events), newest first."""
        e = self.events
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(e.c.payload)
                .where(e.c.device_id == device_id, e.c.type == "media.session")
                .order_by(e.c.ts.desc(), e.c.id.desc())
                .limit(limit)
            )
            return [json.loads(r[0]) for r in rows]

    def latest_health(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(device, group, latest health sample) of every online device."""
        d = self.devices
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(d.c.device_id, d.c.grp, d.c.health).where(d.c.online == sa.true()))
            return [(r[0], r[1], json.loads(r[2] or "{}")) for r in rows]

    def add_group_metric(self, group: str, metric: str, ts: float, value: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(self.group_metrics).values(grp=group, metric=metric, ts=ts, value=value))

    def group_metric(self, group: str, metric: str, since: float, until: float) -> list[tuple[float, float]]:
        """(ts, value) of ``metric`` for ``group`` with ``since <= ts < until``, oldest first."""
        g = self.group_metrics
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(g.c.ts, g.c.value)
                .where(g.c.grp == group, g.c.metric == metric, g.c.ts >= since, g.c.ts < until)
                .order_by(g.c.ts)
            )
            return [(float(r[0]), float(r[1])) for r in rows]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                name: int(conn.execute(sa.select(sa.func.count()).select_from(tbl)).scalar() or 0)
                for name, tbl in (
                    ("devices", self.devices),
                    ("telemetry", self.telemetry),
                    ("events", self.events),
                )
            }

    def list_alerts(self, include_cleared: bool = False) -> list[dict[str, Any]]:
        a, k = self.alerts, self.acks
        q = (
            sa.select(a, k.c.by.label("acked_by"), k.c.at.label("acked_at"), k.c.note.label("ack_note"))
            .select_from(a.outerjoin(k, sa.and_(k.c.key == a.c.key, k.c.raised == a.c.raised)))
            .order_by(a.c.raised.desc())
        )
        if not include_cleared:
            q = q.where(a.c.active == sa.true())
        with self.engine.connect() as conn:
            return [
                {**_alert_dict(r), "acked_by": r.acked_by, "acked_at": r.acked_at, "ack_note": r.ack_note}
                for r in conn.execute(q)
            ]

    def ack_alert(
        self, device: str, code: str, by: str, note: str = "", now: float | None = None
    ) -> dict[str, Any]:
        """Acknowledge the active alert ``code`` of ``device`` (``""``: a fleet-wide alert): who, when, why.

        Raises ``AlertNotFound`` when no such alert is active. Acknowledging again replaces the note.
        """
        key = f"device:{device}:{code}" if device else f"fleet:{code}"
        a, k = self.alerts, self.acks
        at = time.time() if now is None else now
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(a.c.raised).where(a.c.key == key, a.c.active == sa.true())).first()
            if row is None:
                raise AlertNotFound(
                    f"no active alert {code!r}" + (f" on {device}" if device else " (fleet-wide)")
                )
            values = {"key": key, "raised": row[0], "by": by, "at": at, "note": note}
            conn.execute(
                self._insert(k)
                .values(**values)
                .on_conflict_do_update(
                    index_elements=["key", "raised"], set_={"by": by, "at": at, "note": note}
                )
            )
        return {"key": key, **{n: values[n] for n in ("by", "at", "note")}}

    def group_offline(self, window_s: float, now: float | None = None) -> dict[str, tuple[int, int]]:
        """Per group: (devices that went offline within the window and are still offline, group size)."""
        now = time.time() if now is None else now
        d = self.devices
        went = sa.case((sa.and_(d.c.online == sa.false(), d.c.status_changed >= now - window_s), 1), else_=0)
        q = sa.select(d.c.grp, sa.func.sum(went), sa.func.count()).group_by(d.c.grp)
        with self.engine.connect() as conn:
            return {r[0]: (int(r[1] or 0), int(r[2])) for r in conn.execute(q)}


class AlertNotFound(LookupError):
    """The alert to acknowledge is not active (never raised, or already cleared)."""


def _alert_dict(r: Any) -> dict[str, Any]:
    return {
        "scope": r.scope,
        "device": r.device_id,
        "code": r.code,
        "severity": r.severity,
        "message": r.message,
        "active": bool(r.active),
        "raised": r.raised,
        "cleared": r.cleared,
    }
