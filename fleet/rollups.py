"""Numeric telemetry rolled up per minute and per hour, the retention of raw rows, and the series query.

At ingest (``Store.ingest``, the same transaction as the raw rows) each *new* telemetry sample
(not a redelivery: only rows the de-duplicating insert returned count) adds to its device's minute
and hour buckets of the sample's own time: per metric a count, a sum, a minimum and a maximum, by an
``INSERT .. ON CONFLICT DO UPDATE`` that adds (``n = n + excluded.n`` ...). So averages over any
span are exact (sum of sums / sum of counts) whichever worker stored which sample, and a rollup
outlives the raw rows it came from.

Metrics (``METRICS``), from the health sample (docs/protocol.md): ``fps`` the device's video frame
rate (``media.video.fps``), ``freeze_rate`` / ``loss`` / ``rtt_ms`` the worst viewer's figure in the
sample (``media.viewers.sessions[].qoe.freeze_rate``, ``...qoe.loss_pct``, ``...rtt_ms``; no viewers,
no value), ``cpu`` (``system.cpu_pct``) and ``temp_c`` (``system.temperature_c``).

Retention (:class:`Retention`): :func:`prune` deletes raw telemetry (and events) older than their
days by arrival order in batches of ``batch_rows``, each its own short transaction, and rollup rows
older than theirs device by device, so ingest is never blocked for long (the service runs it in its
own thread, fleet/service.py).
"""

from __future__ import annotations

import argparse
import math
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

METRICS: dict[str, str] = {  # name -> unit
    "fps": "fps",
    "freeze_rate": "%",
    "loss": "%",
    "rtt_ms": "ms",
    "cpu": "%",
    "temp_c": "°C",
}
# range -> (seconds, rollup table, step of the answer's points in seconds)
RANGES: dict[str, tuple[int, str, int]] = {
    "1h": (3600, "minute", 60),
    "24h": (86400, "minute", 300),
    "7d": (7 * 86400, "hour", 3600),
}
_INDEX = {m: 4 * i for i, m in enumerate(METRICS)}  # a cell: n, sum, min, max per metric, in order
_COLUMNS = ("device_id", "bucket", *(f"{m}_{k}" for m in METRICS for k in ("n", "sum", "min", "max")))


def _empty() -> list[Any]:
    return [0, 0.0, None, None] * len(METRICS)


FUTURE_SLACK_S = 300.0  # a sample time further ahead of its arrival than this is filed at arrival


@dataclass
class Retention:
    """How long rows are kept, in days (0: forever), and how the pruning job runs."""

    raw_days: float = 7.0  # raw telemetry (the full health samples)
    events_days: float = 30.0  # raw events (alerts, viewer sessions, ...)
    minute_days: float = 14.0  # minute rollups (the 1 h and 24 h charts)
    hour_days: float = 400.0  # hour rollups (the 7 d chart)
    interval_s: float = 300.0  # how often the pruning job runs
    batch_rows: int = 5000  # rows per delete transaction
    pause_s: float = 0.05  # between two delete transactions (lets ingest commit in between)

    def validate(self) -> None:
        """Raises ValueError naming the field: days and pause >= 0, interval > 0, batch >= 1."""
        for f in (
            "raw_days",
            "events_days",
            "minute_days",
            "hour_days",
            "pause_s",
            "interval_s",
            "batch_rows",
        ):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"retention {f}: expected a number >= 0 (days: 0 keeps forever), got {v!r}")
        if self.interval_s <= 0:
            raise ValueError(f"retention interval_s: must be > 0, got {self.interval_s!r}")
        if self.batch_rows < 1:
            raise ValueError(f"retention batch_rows: must be >= 1, got {self.batch_rows!r}")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Retention:
        """From a ``[retention]`` TOML table (the keys are the field names); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"[retention]: unknown key(s) {', '.join(unknown)}")
        r = cls(**data)
        r.validate()
        return r


def add_retention_flags(p: argparse.ArgumentParser) -> None:
    """``fleetctl serve``'s retention flags: ``--config FILE`` (its ``[retention]`` table) and
    ``--retention-{raw,events,minute,hour}-days``, ``--retention-interval`` (these override the file)."""
    p.add_argument(
        "--config",
        default="",
        metavar="FILE",
        help="service TOML file; its [retention] table sets the retention (the flags below override it)",
    )
    defaults = Retention()
    for name, what in (
        ("raw", "raw telemetry"),
        ("events", "raw events"),
        ("minute", "minute rollups (1 h and 24 h charts)"),
        ("hour", "hour rollups (7 d chart)"),
    ):
        p.add_argument(
            f"--retention-{name}-days",
            type=float,
            default=None,
            metavar="DAYS",
            help=f"keep {what} this many days, 0: forever (default {getattr(defaults, name + '_days'):g})",
        )
    p.add_argument(
        "--retention-interval",
        type=float,
        default=None,
        metavar="S",
        help=f"run the pruning job every S seconds (default {defaults.interval_s:g})",
    )


def retention_from_args(args: argparse.Namespace) -> Retention:
    """The ``--config`` file's ``[retention]`` table, then the ``--retention-*`` flags.

    Raises ValueError with a one-line message naming the file or the key.
    """
    data: dict[str, Any] = {}
    path = getattr(args, "config", "") or ""
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ValueError(f"--config {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--config {path}: {exc}") from None
        section = raw.get("retention", {})
        if not isinstance(section, dict):
            raise ValueError(f"--config {path}: [retention] must be a table")
        data.update(section)
    for name in ("raw", "events", "minute", "hour"):
        value = getattr(args, f"retention_{name}_days", None)
        if value is not None:
            data[f"{name}_days"] = value
    if getattr(args, "retention_interval", None) is not None:
        data["interval_s"] = args.retention_interval
    return Retention.from_mapping(data)


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def sample_metrics(health: Any) -> dict[str, float]:
    """The rolled-up metrics found in one health sample (absent or non-numeric figures are left out)."""
    out: dict[str, float] = {}
    if not isinstance(health, dict):
        return out
    system = health.get("system")
    if isinstance(system, dict):
        for name, key in (("cpu", "cpu_pct"), ("temp_c", "temperature_c")):
            v = _num(system.get(key))
            if v is not None:
                out[name] = v
    media = health.get("media")
    if not isinstance(media, dict):
        return out
    video = media.get("video")
    if isinstance(video, dict):
        v = _num(video.get("fps"))
        if v is not None:
            out["fps"] = v
    viewers = media.get("viewers")
    sessions = viewers.get("sessions") if isinstance(viewers, dict) else None
    if isinstance(sessions, list):
        for s in sessions:
            if not isinstance(s, dict):
                continue
            qoe = s.get("qoe")
            figures = [("rtt_ms", s.get("rtt_ms"))]
            if isinstance(qoe, dict):
                figures += [("freeze_rate", qoe.get("freeze_rate")), ("loss", qoe.get("loss_pct"))]
            for name, raw in figures:
                v = _num(raw)
                if v is not None and (name not in out or v > out[name]):
                    out[name] = v  # the worst viewer
    return out


class Rollups:
    """The two rollup tables of one store (``{prefix}rollup_minute``, ``{prefix}rollup_hour``)."""

    def __init__(self, metadata: sa.MetaData, prefix: str, dialect: str) -> None:
        self.dialect = dialect
        self.minute = self._table(metadata, f"{prefix}rollup_minute")
        self.hour = self._table(metadata, f"{prefix}rollup_hour")
        self.tables = {"minute": (self.minute, 60), "hour": (self.hour, 3600)}
        self._upserts: dict[str, Any] = {}

    @staticmethod
    def _table(md: sa.MetaData, name: str) -> sa.Table:
        cols: list[sa.Column[Any]] = [
            sa.Column("device_id", sa.String(128), primary_key=True),
            sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),  # epoch s, start
        ]
        for m in METRICS:
            cols += [
                sa.Column(f"{m}_n", sa.Integer, nullable=False, server_default="0"),
                sa.Column(f"{m}_sum", sa.Float, nullable=False, server_default="0"),
                sa.Column(f"{m}_min", sa.Float, nullable=True),
                sa.Column(f"{m}_max", sa.Float, nullable=True),
            ]
        return sa.Table(name, md, *cols)

    def _upsert(self, which: str) -> Any:
        stmt = self._upserts.get(which)
        if stmt is not None:
            return stmt
        from sqlalchemy.dialects import postgresql, sqlite

        table = self.tables[which][0]
        ins = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)
        least, greatest = (
            (sa.func.least, sa.func.greatest) if self.dialect == "postgresql" else (sa.func.min, sa.func.max)
        )
        c, ex = table.c, ins.excluded
        update: dict[str, Any] = {}
        for m in METRICS:
            update[f"{m}_n"] = c[f"{m}_n"] + ex[f"{m}_n"]
            update[f"{m}_sum"] = c[f"{m}_sum"] + ex[f"{m}_sum"]
            lo, hi = f"{m}_min", f"{m}_max"  # NULL (no value yet) on either side keeps the other
            update[lo] = least(sa.func.coalesce(c[lo], ex[lo]), sa.func.coalesce(ex[lo], c[lo]))
            update[hi] = greatest(sa.func.coalesce(c[hi], ex[hi]), sa.func.coalesce(ex[hi], c[hi]))
        stmt = ins.on_conflict_do_update(index_elements=["device_id", "bucket"], set_=update)
        self._upserts[which] = stmt
        return stmt

    def _pg_upsert(self, conn: sa.Connection, which: str) -> Any:
        key = "pg-" + which
        stmt = self._upserts.get(key)
        if stmt is not None:
            return stmt
        table = self.tables[which][0]
        q = conn.dialect.identifier_preparer.quote
        names = [c.name for c in table.columns]
        types = ["varchar", "bigint"] + [
            "integer",
            "double precision",
            "double precision",
            "double precision",
        ] * len(METRICS)
        sets = []
        for m in METRICS:  # LEAST/GREATEST ignore NULLs (no value yet on one side)
            sets += [
                f"{m}_n = t.{m}_n + EXCLUDED.{m}_n",
                f"{m}_sum = t.{m}_sum + EXCLUDED.{m}_sum",
                f"{m}_min = LEAST(t.{m}_min, EXCLUDED.{m}_min)",
                f"{m}_max = GREATEST(t.{m}_max, EXCLUDED.{m}_max)",
            ]
        arrays = ", ".join(f"CAST(:a{i} AS {ty}[])" for i, ty in enumerate(types))
        stmt = sa.text(
            f"INSERT INTO {q(table.name)} AS t ({', '.join(names)}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT (device_id, bucket) DO UPDATE SET {', '.join(sets)}"
        )
        self._upserts[key] = stmt
        return stmt

    def add(self, conn: sa.Connection, samples: Iterable[tuple[str, float, dict[str, float]]]) -> int:
        """Add (device, sample time, metrics) to the minute and hour buckets; returns rows upserted."""
        idx = _INDEX
        minutes: dict[tuple[str, int], list[Any]] = {}
        for device, ts, metrics in samples:
            if not metrics:
                continue
            key = (device, int(ts // 60) * 60)
            cell = minutes.get(key)
            if cell is None:
                cell = minutes[key] = _empty()
            for m, v in metrics.items():
                k = idx[m]
                cell[k] += 1
                cell[k + 1] += v
                lo, hi = cell[k + 2], cell[k + 3]
                if lo is None or v < lo:
                    cell[k + 2] = v
                if hi is None or v > hi:
                    cell[k + 3] = v
        hours: dict[tuple[str, int], list[Any]] = {}
        for (device, bucket), cell in minutes.items():
            key = (device, bucket - bucket % 3600)
            h = hours.get(key)
            if h is None:
                hours[key] = list(cell)
                continue
            for k in range(0, len(cell), 4):
                if cell[k]:
                    h[k] += cell[k]
                    h[k + 1] += cell[k + 1]
                    if h[k + 2] is None or cell[k + 2] < h[k + 2]:
                        h[k + 2] = cell[k + 2]
                    if h[k + 3] is None or cell[k + 3] > h[k + 3]:
                        h[k + 3] = cell[k + 3]
        n = 0
        for which, cells in (("minute", minutes), ("hour", hours)):
            if not cells:
                continue
            ordered = sorted(cells.items())  # one lock order for every worker
            n += len(ordered)
            if self.dialect == "postgresql":  # one set-based statement: 26 arrays, not 26 binds per row
                cols = list(zip(*[(dev, bucket, *cell) for (dev, bucket), cell in ordered], strict=True))
                conn.execute(self._pg_upsert(conn, which), {f"a{i}": list(c) for i, c in enumerate(cols)})
            else:
                names = _COLUMNS
                conn.execute(
                    self._upsert(which),
                    [dict(zip(names, (dev, bucket, *cell), strict=True)) for (dev, bucket), cell in ordered],
                )
        return n

    def series(
        self, engine: sa.Engine, device: str, metric: str, range_: str, now: float | None = None
    ) -> dict[str, Any]:
        """The ``GET /api/v1/devices/{id}/series`` answer: points of ``step_s`` with data, oldest first."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        span, which, step = RANGES[range_]
        now = time.time() if now is None else now
        until = (int(now // step) + 1) * step  # the end of the current (partial) step
        since = until - span
        table = self.tables[which][0]
        c = table.c
        n, s, lo, hi = (c[f"{metric}_{k}"] for k in ("n", "sum", "min", "max"))
        t = (c.bucket - c.bucket % step).label("t")
        q = (
            sa.select(t, sa.func.sum(n), sa.func.sum(s), sa.func.min(lo), sa.func.max(hi))
            .where(c.device_id == device, c.bucket >= since, c.bucket < until, n > 0)
            .group_by(t)
            .order_by(t)
        )
        with engine.connect() as conn:
            rows = conn.execute(q).all()
        points = [
            {
                "t": int(r[0]),
                "avg": float(r[2]) / int(r[1]),
                "min": float(r[3]),
                "max": float(r[4]),
                "n": int(r[1]),
            }
            for r in rows
        ]
        return {
            "device": device,
            "metric": metric,
            "unit": METRICS[metric],
            "range": range_,
            "source": which,
            "step_s": step,
            "from": since,
            "to": until,
            "points": points,
        }


def prune(
    store: Any,
    retention: Retention,
    now: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    rollups: bool = True,
) -> dict[str, int]:
    """Delete what ``retention`` no longer keeps; returns rows deleted per table kind.

    Raw telemetry and events go by arrival order (their ``id``, walked from the oldest, up to the
    first row younger than the cutoff: no extra index to maintain at ingest); rollups go device
    by device over their primary key (device, bucket). Each delete is one transaction of at most
    ``batch_rows`` raw rows or 500 devices, with ``pause_s`` between them. ``rollups=False`` skips
    the rollups (their cutoffs move by days: the service prunes them at most hourly).
    """
    now = time.time() if now is None else now

    def stopped() -> bool:
        return should_stop is not None and should_stop()

    out = {"telemetry": 0, "events": 0, "minute": 0, "hour": 0}
    for kind, table, days in (
        ("telemetry", store.telemetry, retention.raw_days),
        ("events", store.events, retention.events_days),
    ):
        if days > 0:
            out[kind] = _prune_raw(store.engine, table, now - days * 86400, retention, stopped)
    for kind, days in (("minute", retention.minute_days), ("hour", retention.hour_days)):
        if rollups and days > 0 and not stopped():
            out[kind] = _prune_rollup(
                store, store.rollups.tables[kind][0], now - days * 86400, retention, stopped
            )
    return out


def _prune_raw(
    engine: sa.Engine, table: sa.Table, cutoff: float, r: Retention, stopped: Callable[[], bool]
) -> int:
    c = table.c
    last = -1
    total = 0
    while not stopped():
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.id, c.received).where(c.id > last).order_by(c.id).limit(int(r.batch_rows))
            ).all()
        hi = None
        younger = False
        for rid, received in rows:
            if received >= cutoff:
                younger = True
                break
            hi = rid
        if hi is None:
            break
        with engine.begin() as conn:
            res = conn.execute(sa.delete(table).where(c.id > last, c.id <= hi, c.received < cutoff))
            total += int(res.rowcount or 0)
        last = hi
        if younger or len(rows) < r.batch_rows:
            break
        time.sleep(r.pause_s)
    return total


def _prune_rollup(
    store: Any, table: sa.Table, cutoff: float, r: Retention, stopped: Callable[[], bool]
) -> int:
    d = store.devices.c
    with store.engine.connect() as conn:
        devices = [row[0] for row in conn.execute(sa.select(d.device_id).order_by(d.device_id))]
    stmt = sa.delete(table).where(table.c.device_id == sa.bindparam("dev"), table.c.bucket < int(cutoff))
    total = 0
    for i in range(0, len(devices), 500):
        if stopped():
            break
        with store.engine.begin() as conn:
            res = conn.execute(stmt, [{"dev": dev} for dev in devices[i : i + 500]])
            total += max(0, int(res.rowcount or 0))
        if i + 500 < len(devices):
            time.sleep(r.pause_s)
    return total
