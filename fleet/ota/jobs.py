"""Rollout jobs in the fleet store: ``rollouts`` and ``rollout_devices``, and the driver's lease.

The tables live on the store's engine and metadata (same ``prefix``, same SQLAlchemy Core path for
SQLite and PostgreSQL). A job is created by ``fleetctl ota rollout`` and driven by whichever
``fleetctl serve`` worker holds its lease: ``owner`` + ``lease_expires`` on the rollout row, taken
and renewed by one conditional ``UPDATE .. WHERE owner = me OR lease_expires < now`` (the row lock
on PostgreSQL, the database write lock on SQLite make it exclusive). Every driver step runs in one
transaction that starts with that UPDATE, so a worker that lost its lease changes nothing, and a
device's dispatch (``in_progress`` + ``dispatch_id``) is committed before its command is sent.

Job status: ``running`` -> ``completed`` | ``halted``; ``rolling_back`` while the health gate's
``ota.rollback`` commands are out (then ``halted``). Device rows carry the planner's states
(``fleet.ota.rollout``) plus ``dispatches`` (times an ``ota.install`` was sent: never above 1)
and ``rollback`` ('' | ``sent`` | ``done`` | ``failed``).
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import sqlalchemy as sa

from fleet.ota.rollout import DeviceState, Policy, Rollout
from fleet.store import Store

DRIVEN = ("running", "rolling_back")  # statuses a worker drives


class JobNotFound(LookupError):
    """No rollout with that id."""


class JobStateError(ValueError):
    """The operation does not apply to the rollout in its current status."""


class NoDevices(ValueError):
    """The rollout would target no device (an empty group, an empty list)."""


@dataclass
class GatePolicy:
    """The health gate (fleet/ota/health_gate.py); documented in docs/ota.md."""

    soak_s: float = 300.0  # watch the updated devices this long after each wave
    max_alert_increase: float = 0.5  # P1/P2 alerts raised per device over the soak: updated - baseline
    max_crashloop_increase: float = 0.1  # share of devices in a crash loop: updated - baseline
    max_freeze_rate_increase: float = 2.0  # viewers' freeze_rate (% of time frozen): updated - baseline
    min_fps_ratio: float = 0.8  # viewers' rendered_fps: updated / baseline at least this
    max_ns_rtf_ratio: float = 1.5  # noise suppression real-time factor: updated / baseline at most this
    min_samples: int = 1  # telemetry samples a device needs in the window to count

    def validate(self) -> None:
        if self.soak_s < 0 or self.min_fps_ratio < 0 or self.max_ns_rtf_ratio <= 0 or self.min_samples < 1:
            raise ValueError(
                "need soak_s >= 0, min_fps_ratio >= 0, max_ns_rtf_ratio > 0 and min_samples >= 1"
            )


POLICY_FIELDS = {f.name: str(f.type) for f in fields(Policy)}  # name -> "int" | "float"
GATE_FIELDS = {f.name: str(f.type) for f in fields(GatePolicy)}


@dataclass
class Job:
    """One rollout row with its devices, as the driver and the CLI see it."""

    id: str
    rollout: Rollout
    params: dict[str, Any]
    gate: GatePolicy
    status: str
    created: float
    updated: float
    owner: str = ""
    lease_expires: float = 0.0
    gated_waves: int = 0
    soak_start: float | None = None
    soak_until: float | None = None
    last_gate: dict[str, Any] = field(default_factory=dict)
    dispatches: dict[str, int] = field(default_factory=dict)
    dispatch_ids: dict[str, str] = field(default_factory=dict)
    rollback: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        c = self.rollout.counts()
        return {
            "id": self.id,
            "version": self.rollout.version,
            "status": self.status,
            "reason": self.rollout.reason,
            "devices": len(self.rollout.devices),
            "waves": self.rollout.waves,
            "counts": {k: v for k, v in c.items() if v},
            "owner": self.owner,
            "rolled_back": sum(1 for v in self.rollback.values() if v == "done"),
            "created": self.created,
            "updated": self.updated,
            "last_gate": self.last_gate,
        }


def _fields(name: str, raw: Any, allowed: dict[str, str]) -> dict[str, Any]:
    """A policy object of a rollout request: known fields, numbers only (integers where declared)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: expected an object")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {', '.join(unknown)} (known: {', '.join(allowed)})")
    for k, v in raw.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            raise ValueError(f"{name}.{k}: expected a number")
        if allowed[k] == "int" and not isinstance(v, int):
            raise ValueError(f"{name}.{k}: expected an integer")
    return dict(raw)


def _table(md: sa.MetaData, name: str, *cols: Any) -> sa.Table:
    return md.tables[name] if name in md.tables else sa.Table(name, md, *cols)


class Jobs:
    """Rollout jobs on ``store``'s engine (synchronous; call from a thread in async code)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine
        md, p = store.metadata, store.prefix
        self.rollouts = _table(
            md,
            f"{p}rollouts",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("version", sa.String(64), nullable=False),
            sa.Column("params", sa.Text, nullable=False),
            sa.Column("policy", sa.Text, nullable=False),
            sa.Column("gate", sa.Text, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("reason", sa.Text, nullable=False, server_default=""),
            sa.Column("waves", sa.Integer, nullable=False, server_default="0"),
            sa.Column("gated_waves", sa.Integer, nullable=False, server_default="0"),
            sa.Column("soak_start", sa.Float, nullable=True),
            sa.Column("soak_until", sa.Float, nullable=True),
            sa.Column("last_gate", sa.Text, nullable=False, server_default="{}"),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("updated", sa.Float, nullable=False),
            sa.Column("owner", sa.String(128), nullable=False, server_default=""),
            sa.Column("lease_expires", sa.Float, nullable=False, server_default="0"),
        )
        self.devices = _table(
            md,
            f"{p}rollout_devices",
            sa.Column("rollout_id", sa.String(32), primary_key=True),
            sa.Column("device_id", sa.String(128), primary_key=True),
            sa.Column("pos", sa.Integer, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("phase", sa.String(32), nullable=False, server_default=""),
            sa.Column("percent", sa.Float, nullable=True),
            sa.Column("reason", sa.Text, nullable=False, server_default=""),
            sa.Column("wave", sa.Integer, nullable=False, server_default="-1"),
            sa.Column("started", sa.Float, nullable=True),
            sa.Column("finished", sa.Float, nullable=True),
            sa.Column("dispatch_id", sa.String(32), nullable=False, server_default=""),
            sa.Column("dispatches", sa.Integer, nullable=False, server_default="0"),
            sa.Column("rollback", sa.String(16), nullable=False, server_default=""),
            sa.Column("rollback_at", sa.Float, nullable=True),
        )
        md.create_all(self.engine, tables=[self.rollouts, self.devices])

    # ---- operator side -------------------------------------------------------------------
    def create(
        self,
        version: str,
        devices: list[str],
        params: dict[str, Any],
        policy: Policy,
        gate: GatePolicy,
        now: float | None = None,
    ) -> str:
        """A new running job; returns its id. Raises ValueError for a bad policy or device list."""
        gate.validate()
        rollout = Rollout(version, devices, policy)  # validates the policy and the device list
        if not devices:
            raise ValueError("no devices to update")
        now = time.time() if now is None else now
        rid = uuid.uuid4().hex[:12]
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(self.rollouts).values(
                    id=rid,
                    version=version,
                    params=json.dumps(params),
                    policy=json.dumps(asdict(rollout.policy)),
                    gate=json.dumps(asdict(gate)),
                    status="running",
                    reason="",
                    waves=0,
                    gated_waves=0,
                    last_gate="{}",
                    created=now,
                    updated=now,
                    owner="",
                    lease_expires=0.0,
                )
            )
            conn.execute(
                sa.insert(self.devices),
                [
                    {
                        "rollout_id": rid,
                        "device_id": d,
                        "pos": i,
                        "state": "pending",
                        "phase": "",
                        "reason": "",
                        "wave": -1,
                        "dispatch_id": "",
                        "dispatches": 0,
                        "rollback": "",
                    }
                    for i, d in enumerate(devices)
                ],
            )
        return rid

    def create_from_request(self, body: dict[str, Any], now: float | None = None) -> str:
        """A job from the JSON request both ``POST /api/v1/rollouts`` and ``fleetctl ota rollout``
        (without an API) send: ``version``, ``url``, ``sha256``, ``size``, ``devices`` (a list) or
        ``group``, optional ``policy`` and ``gate`` objects (the fields of Policy / GatePolicy).
        Raises ValueError for a bad request, :class:`NoDevices` when it targets nothing."""
        version, url, sha = body.get("version"), body.get("url"), body.get("sha256")
        size, devices, group = body.get("size"), body.get("devices"), body.get("group")
        for name, value in (("version", version), ("url", url), ("sha256", sha)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}: expected a non-empty string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size: expected a byte count (integer >= 0)")
        if devices is not None and group is not None:
            raise ValueError("give devices or group, not both")
        if devices is not None:
            if not isinstance(devices, builtins.list) or not all(isinstance(d, str) and d for d in devices):
                raise ValueError("devices: expected a list of device ids")
            targets = builtins.list(devices)
        elif isinstance(group, str) and group:
            targets = [r["device"] for r in self.store.list_devices(group)]
        else:
            raise ValueError("give devices (a list of ids) or group (a group name)")
        if not targets:
            where = f"group {group!r} has no devices in the fleet store" if devices is None else "empty list"
            raise NoDevices(f"no devices to update ({where})")
        policy = Policy(**_fields("policy", body.get("policy"), POLICY_FIELDS))
        gate = GatePolicy(**_fields("gate", body.get("gate"), GATE_FIELDS))
        params = {"url": url, "sha256": sha, "size": size}
        return self.create(str(version), targets, params, policy, gate, now)

    def detail(self, rid: str) -> dict[str, Any]:
        """The job's summary and every device's state (``GET /api/v1/rollouts/{id}``)."""
        job = self.get(rid)
        devices = [
            {
                "id": dev,
                "state": st.state,
                "phase": st.phase,
                "percent": st.percent,
                "reason": st.reason,
                "wave": st.wave,
                "dispatches": job.dispatches.get(dev, 0),
                "rollback": job.rollback.get(dev, ""),
            }
            for dev, st in job.rollout.per_device.items()
        ]
        return {**job.summary(), "devices": devices}

    def get(self, rid: str, conn: sa.Connection | None = None) -> Job:
        if conn is None:
            with self.engine.connect() as c:
                return self.get(rid, c)
        r = conn.execute(sa.select(self.rollouts).where(self.rollouts.c.id == rid)).first()
        if r is None:
            raise JobNotFound(f"no rollout {rid!r}")
        d = self.devices.c
        rows = conn.execute(sa.select(self.devices).where(d.rollout_id == rid).order_by(d.pos)).all()
        per = {
            x.device_id: DeviceState(
                state=x.state,
                phase=x.phase,
                percent=x.percent,
                reason=x.reason,
                wave=x.wave,
                started=x.started,
                finished=x.finished,
            )
            for x in rows
        }
        planner_status = r.status if r.status in ("running", "completed") else "halted"
        rollout = Rollout(
            r.version,
            [x.device_id for x in rows],
            Policy(**json.loads(r.policy)),
            status=planner_status,
            reason=r.reason,
            waves=r.waves,
            per_device=per,
        )
        return Job(
            id=r.id,
            rollout=rollout,
            params=json.loads(r.params),
            gate=GatePolicy(**json.loads(r.gate)),
            status=r.status,
            created=r.created,
            updated=r.updated,
            owner=r.owner,
            lease_expires=r.lease_expires,
            gated_waves=r.gated_waves,
            soak_start=r.soak_start,
            soak_until=r.soak_until,
            last_gate=json.loads(r.last_gate),
            dispatches={x.device_id: x.dispatches for x in rows},
            dispatch_ids={x.device_id: x.dispatch_id for x in rows},
            rollback={x.device_id: x.rollback for x in rows if x.rollback},
        )

    def list(self, active_only: bool = False) -> list[dict[str, Any]]:
        """Every job's summary (as ``Job.summary``), newest first: counted in SQL, not by loading jobs."""
        r, d = self.rollouts.c, self.devices.c
        q = sa.select(self.rollouts).order_by(r.created.desc())
        if active_only:
            q = q.where(r.status.in_(DRIVEN))
        with self.engine.connect() as conn:
            jobs = conn.execute(q).all()
            ids = [j.id for j in jobs]
            counts: dict[str, dict[str, int]] = {rid: {} for rid in ids}
            rolled_back: dict[str, int] = dict.fromkeys(ids, 0)
            if ids:
                by_state = sa.select(d.rollout_id, d.state, sa.func.count()).where(d.rollout_id.in_(ids))
                for rid, state, n in conn.execute(by_state.group_by(d.rollout_id, d.state)):
                    counts[rid][state] = int(n)
                done = sa.select(d.rollout_id, sa.func.count()).where(
                    d.rollout_id.in_(ids), d.rollback == "done"
                )
                for rid, n in conn.execute(done.group_by(d.rollout_id)):
                    rolled_back[rid] = int(n)
        order = ("pending", "in_progress", "succeeded", "failed", "timed_out", "skipped")
        return [
            {
                "id": j.id,
                "version": j.version,
                "status": j.status,
                "reason": j.reason,
                "devices": sum(counts[j.id].values()),
                "waves": j.waves,
                "counts": {k: counts[j.id][k] for k in order if counts[j.id].get(k)},
                "owner": j.owner,
                "rolled_back": rolled_back[j.id],
                "created": j.created,
                "updated": j.updated,
                "last_gate": json.loads(j.last_gate),
            }
            for j in jobs
        ]

    def driven_ids(self) -> builtins.list[str]:
        r = self.rollouts.c
        with self.engine.connect() as conn:
            return [
                row[0]
                for row in conn.execute(sa.select(r.id).where(r.status.in_(DRIVEN)).order_by(r.created))
            ]

    def halt(self, rid: str, reason: str = "halted by the operator") -> None:
        """Stop dispatching: pending devices become skipped; devices in progress finish on their own."""
        with self.engine.begin() as conn:
            job = self.get(rid, conn)
            if job.status != "running":
                raise JobStateError(f"rollout {rid} is {job.status}, not running")
            self._set_status(conn, rid, "halted", reason)
            d = self.devices.c
            conn.execute(
                sa.update(self.devices)
                .where(d.rollout_id == rid, d.state == "pending")
                .values(state="skipped")
            )

    def resume(self, rid: str) -> None:
        """Run a halted job again: skipped devices become pending; the health gate starts afresh."""
        with self.engine.begin() as conn:
            job = self.get(rid, conn)
            if job.status != "halted":
                raise JobStateError(f"rollout {rid} is {job.status}, not halted")
            d = self.devices.c
            conn.execute(
                sa.update(self.devices)
                .where(d.rollout_id == rid, d.state == "skipped")
                .values(state="pending")
            )
            conn.execute(
                sa.update(self.rollouts)
                .where(self.rollouts.c.id == rid)
                .values(
                    status="running",
                    reason="",
                    gated_waves=job.rollout.waves,
                    soak_start=None,
                    soak_until=None,
                    updated=time.time(),
                )
            )

    def _set_status(self, conn: sa.Connection, rid: str, status: str, reason: str) -> None:
        conn.execute(
            sa.update(self.rollouts)
            .where(self.rollouts.c.id == rid)
            .values(status=status, reason=reason, updated=time.time())
        )

    # ---- driver side ---------------------------------------------------------------------
    def take_lease(self, conn: sa.Connection, rid: str, owner: str, now: float, ttl_s: float) -> bool:
        """Take or renew the lease of a driven job in ``conn``'s transaction; False if another holds it."""
        r = self.rollouts.c
        res = conn.execute(
            sa.update(self.rollouts)
            .where(r.id == rid, r.status.in_(DRIVEN), sa.or_(r.owner == owner, r.lease_expires < now))
            .values(owner=owner, lease_expires=now + ttl_s)
        )
        return res.rowcount == 1

    def release(self, rid: str, owner: str) -> None:
        """Give the lease back (a clean shutdown) so another worker takes over at once."""
        r = self.rollouts.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.rollouts).where(r.id == rid, r.owner == owner).values(lease_expires=0.0)
            )

    def save(self, conn: sa.Connection, job: Job, before: Job, now: float) -> None:
        """Write what changed between ``before`` and ``job`` (device rows and the job row)."""
        d = self.devices.c
        for dev in job.rollout.devices:
            new, old = job.rollout.per_device[dev], before.rollout.per_device[dev]
            values: dict[str, Any] = {}
            if asdict(new) != asdict(old):
                values.update(asdict(new))
            if job.dispatches.get(dev, 0) != before.dispatches.get(dev, 0):
                values.update(dispatches=job.dispatches[dev], dispatch_id=job.dispatch_ids[dev])
            if job.rollback.get(dev, "") != before.rollback.get(dev, ""):
                values["rollback"] = job.rollback[dev]
                if job.rollback[dev] == "sent":
                    values["rollback_at"] = now
            if values:
                conn.execute(
                    sa.update(self.devices).where(d.rollout_id == job.id, d.device_id == dev).values(**values)
                )
        r = job.rollout
        conn.execute(
            sa.update(self.rollouts)
            .where(self.rollouts.c.id == job.id)
            .values(
                status=job.status,
                reason=r.reason,
                waves=r.waves,
                gated_waves=job.gated_waves,
                soak_start=job.soak_start,
                soak_until=job.soak_until,
                last_gate=json.dumps(job.last_gate),
                updated=now,
            )
        )

    def rollback_started(self, conn: sa.Connection, rid: str) -> dict[str, float]:
        d = self.devices.c
        return {
            x[0]: x[1] or 0.0
            for x in conn.execute(
                sa.select(d.device_id, d.rollback_at).where(d.rollout_id == rid, d.rollback == "sent")
            )
        }

    def ota_events(
        self, conn: sa.Connection, devices: dict[str, float]
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """OTA events the service ingested for ``devices`` (id -> since when, server time), in order."""
        if not devices:
            return []
        e = self.store.events.c
        out: builtins.list[tuple[str, dict[str, Any]]] = []
        ids = builtins.list(devices)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            since = min(devices[x] for x in chunk)
            for dev, payload, received in conn.execute(
                sa.select(e.device_id, e.payload, e.received)
                .where(e.type == "ota", e.device_id.in_(chunk), e.received >= since)
                .order_by(e.id)
            ):
                if received >= devices[dev]:
                    try:
                        out.append((dev, json.loads(payload)))
                    except ValueError:
                        continue
        return out
