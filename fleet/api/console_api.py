"""API handlers behind the web console's views and buttons (mixed into :class:`fleet.api.app.FleetApi`).

Read side: ``GET /api/v1/overview`` (fleet counts, versions, open alerts by severity with the
unacknowledged and silenced ones, hourly trends, time to acknowledge), aggregate queries whose cost
does not grow with the fleet's pages, and ``GET /api/v1/whoami``. Actions (operator): silence an
alert until a time, pull a device's logs, and relay a browser's WebRTC offer to a device over the
existing MQTT signaling (``dev/{id}/rtc/{session}``, the same exchange as ``fleetctl view``),
returning the device's answer. Log pulls and view signaling run on a client connection of their
own (same broker options as the service, automatic acknowledgement), never on the worker's
manual-ack session.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import statistics
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from aiohttp import web

from device_agent import protocol
from fleet.silences import SilenceStore

if TYPE_CHECKING:
    from fleet.api.queries import ApiQueries
    from fleet.client import FleetClient
    from fleet.store import Store
    from fleet.tokens import TokenStore

log = logging.getLogger(__name__)

MAX_SILENCE_S = 30 * 86400.0
MAX_LOG_TEXT = 1 << 20  # the page shows at most 1 MiB of a pull; the rest is cut (reported)
VIEW_ANSWER_TIMEOUT_S = 20.0
HOUR = 3600.0


def _err(status: int, code: str, message: str) -> Exception:
    from fleet.api.app import ApiError

    return ApiError(status, code, message)


async def _body(request: web.Request) -> dict[str, Any]:
    from fleet.api.app import _json_body

    return await _json_body(request)


def _buckets(rows: Any, n: int) -> list[int]:
    out = [0] * n
    for b, c in rows:
        if b is not None and 0 <= int(b) < n:
            out[int(b)] += int(c)
    return out


def _hour_bucket(col: Any, since: float, dialect: str) -> Any:
    """The hour index of ``col`` after ``since`` (floor: PostgreSQL casts by rounding, SQLite truncates)."""
    x = (col - since) / HOUR
    return sa.cast(sa.func.floor(x) if dialect == "postgresql" else x, sa.Integer)


def overview(store: Store, silences: SilenceStore, hours: int, now: float) -> dict[str, Any]:
    """The fleet overview (blocking). Trends are ``hours`` hourly buckets ending at ``now``."""
    d, a, k = store.devices.c, store.alerts.c, store.acks.c
    s = silences.table.c
    since = now - hours * HOUR
    with store.engine.connect() as conn:
        counts = conn.execute(
            sa.select(d.grp, d.version, d.online, sa.func.count()).group_by(d.grp, d.version, d.online)
        ).all()
        acked = sa.exists().where(k.key == a.key, k.raised == a.raised)
        silenced = sa.exists().where(s.key == a.key, s.until > now)
        open_rows = conn.execute(
            sa.select(
                a.severity,
                sa.func.count(),
                sa.func.sum(sa.case((acked, 1), else_=0)),
                sa.func.sum(sa.case((silenced, 1), else_=0)),
                sa.func.sum(sa.case((sa.and_(~acked, ~silenced), 1), else_=0)),
            )
            .where(a.active == sa.true())
            .group_by(a.severity)
        ).all()

        def hourly(col: Any, *where: Any, sev: bool = False) -> Any:
            bucket = _hour_bucket(col, since, store.dialect)
            cols = (a.severity, bucket) if sev else (bucket,)
            return conn.execute(
                sa.select(*cols, sa.func.count()).where(col >= since, *where).group_by(*cols)
            ).all()

        raised = hourly(a.raised, sev=True)
        went_offline = hourly(d.status_changed, d.online == sa.false())
        acks = hourly(k.at)
        tta = conn.execute(
            sa.select(a.severity, k.at - k.raised)
            .select_from(store.acks.join(store.alerts, a.key == k.key))
            .where(k.at >= now - 7 * 86400)
        ).all()
        g = store.group_metrics.c
        gbucket = _hour_bucket(g.ts, since, store.dialect)
        freeze = conn.execute(
            sa.select(gbucket, sa.func.avg(g.value))
            .where(g.metric == "freeze_rate", g.ts >= since)
            .group_by(gbucket)
        ).all()
    total = online = 0
    versions: dict[str, dict[str, int]] = {}
    groups: dict[str, dict[str, int]] = {}
    for grp, ver, on, n in counts:
        n = int(n)
        total += n
        online += n if on else 0
        key = "online" if on else "offline"
        versions.setdefault(ver or "", {"online": 0, "offline": 0})[key] += n
        groups.setdefault(grp or "", {"online": 0, "offline": 0})[key] += n
    alerts = {
        sev: {"open": 0, "acknowledged": 0, "silenced": 0, "attention": 0} for sev in ("P1", "P2", "P3")
    }
    for sev, n, ack_n, sil_n, att_n in open_rows:
        alerts.setdefault(sev, {})
        alerts[sev] = {
            "open": int(n),
            "acknowledged": int(ack_n or 0),
            "silenced": int(sil_n or 0),
            "attention": int(att_n or 0),
        }
    by_sev: dict[str, list[float]] = {}
    for sev, secs in tta:
        by_sev.setdefault(sev, []).append(max(0.0, float(secs)))
    time_to_ack = {
        sev: {
            "n": len(v),
            "median_s": statistics.median(v),
            "p90_s": sorted(v)[min(len(v) - 1, int(0.9 * len(v)))],
        }
        for sev, v in sorted(by_sev.items())
    }
    raised_by = {sev: _buckets([(b, c) for s_, b, c in raised if s_ == sev], hours) for sev in alerts}
    freeze_series: list[float | None] = [None] * hours
    for b, v in freeze:
        if b is not None and 0 <= int(b) < hours:
            freeze_series[int(b)] = round(float(v), 3)
    return {
        "time": now,
        "devices": {"total": total, "online": online, "offline": total - online},
        "versions": [
            {"version": v, **c}
            for v, c in sorted(versions.items(), key=lambda kv: -(kv[1]["online"] + kv[1]["offline"]))
        ],
        "groups": [{"group": g_, **c} for g_, c in sorted(groups.items())],
        "alerts": alerts,
        "time_to_ack": time_to_ack,
        "trends": {
            "hours": hours,
            "since": since,
            "alerts_raised": raised_by,
            "went_offline": _buckets(went_offline, hours),
            "acknowledged": _buckets(acks, hours),
            "freeze_rate": freeze_series,
        },
    }


ROLLOUT_STATES = ("pending", "in_progress", "succeeded", "failed", "timed_out", "skipped")


def rollout_page(jobs: Any, rid: str, state: str | None, limit: int, offset: int) -> dict[str, Any]:
    """One rollout for the console, from aggregates: ``Job.summary()``'s keys (tests hold them equal),
    ``waves`` (devices per wave and state) and one page of its devices (``total``: with ``state``).

    ``GET /rollouts/{id}`` builds the whole job (every device row: ~1 s and 1.3 MB for 10,000 devices
    on PostgreSQL); this reads the rollout row, two GROUP BYs and ``limit`` device rows.
    """
    from fleet.ota.jobs import JobNotFound

    r, d = jobs.rollouts.c, jobs.devices.c
    with jobs.engine.connect() as conn:
        row = conn.execute(sa.select(jobs.rollouts).where(r.id == rid)).first()
        if row is None:
            raise JobNotFound(f"no rollout {rid!r}")
        per_state = dict(
            conn.execute(
                sa.select(d.state, sa.func.count()).where(d.rollout_id == rid).group_by(d.state)
            ).all()
        )
        rolled_back = conn.execute(
            sa.select(sa.func.count()).where(d.rollout_id == rid, d.rollback == "done")
        ).scalar()
        waves: dict[int, dict[str, int]] = {}
        for wave, st, n in conn.execute(
            sa.select(d.wave, d.state, sa.func.count())
            .where(d.rollout_id == rid, d.wave >= 0)
            .group_by(d.wave, d.state)
        ):
            waves.setdefault(int(wave), {})[st] = int(n)
        where = [d.rollout_id == rid] + ([d.state == state] if state else [])
        total = conn.execute(sa.select(sa.func.count()).where(*where)).scalar()
        rows = conn.execute(
            sa.select(d.device_id, d.state, d.phase, d.percent, d.reason, d.wave, d.dispatches, d.rollback)
            .where(*where)
            .order_by(d.pos)
            .limit(limit)
            .offset(offset)
        ).all()
    counts = {k: int(per_state[k]) for k in ROLLOUT_STATES if per_state.get(k)}
    return {
        "id": row.id,
        "version": row.version,
        "status": row.status,
        "reason": row.reason,
        "devices": sum(int(n) for n in per_state.values()),
        "waves": row.waves,
        "counts": counts,
        "owner": row.owner,
        "rolled_back": int(rolled_back or 0),
        "created": row.created,
        "updated": row.updated,
        "last_gate": json.loads(row.last_gate),
        "policy": json.loads(row.policy),
        "wave_states": [{"wave": w, "counts": waves[w]} for w in sorted(waves)],
        "total": int(total or 0),
        "limit": limit,
        "offset": offset,
        "page": [
            {
                "id": x.device_id,
                "state": x.state,
                "phase": x.phase,
                "percent": x.percent,
                "reason": x.reason,
                "wave": x.wave,
                "dispatches": x.dispatches,
                "rollback": x.rollback,
            }
            for x in rows
        ],
    }


class ConsoleHandlers:
    """Handlers of the console's routes (fleet/api/spec.py); ``FleetApi`` provides the attributes."""

    store: Store
    queries: ApiQueries
    commands: FleetClient | None
    tokens: TokenStore
    _silences: SilenceStore | None = None
    _side_client: FleetClient | None = None
    _side_lock: asyncio.Lock | None = None

    @property
    def silences(self) -> SilenceStore:
        if self._silences is None:
            self._silences = SilenceStore(self.store.engine, self.store.prefix)
        return self._silences

    async def with_silences(self, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add ``silenced`` ({until, by, at, note} or None) to alert rows."""
        found = await asyncio.to_thread(self.silences.active, [x["id"] for x in alerts])
        for x in alerts:
            x["silenced"] = found.get(x["id"])
        return alerts

    # ---- reads -------------------------------------------------------------------------------
    async def whoami(self, request: web.Request, principal: str) -> web.Response:
        role = "admin"  # loopback without a token
        header = request.headers.get("Authorization", "")
        if header:
            token = await asyncio.to_thread(self.tokens.verify, header.partition(" ")[2].strip())
            role = token.role if token is not None else "viewer"
        return web.json_response({"principal": principal, "role": role})

    async def overview(self, request: web.Request, principal: str) -> web.Response:
        from fleet.api.app import _int

        hours = _int(request.query, "hours", 24, 1, 168)
        body = await asyncio.to_thread(overview, self.store, self.silences, hours, time.time())
        return web.json_response(body)

    async def rollout_devices(self, request: web.Request, principal: str) -> web.Response:
        from fleet.api.app import _enum, _page
        from fleet.ota.jobs import JobNotFound

        limit, offset = _page(request.query)
        state = _enum(request.query, "state", ROLLOUT_STATES)
        try:
            body = await asyncio.to_thread(
                rollout_page, self.queries.jobs, request.match_info["id"], state, limit, offset
            )
        except JobNotFound as exc:
            raise _err(404, "not_found", str(exc)) from None
        return web.json_response(body)

    # ---- alert silences ----------------------------------------------------------------------
    async def _alert_or_404(self, key: str) -> dict[str, Any]:
        alert = await asyncio.to_thread(self.queries.alert, key)
        if alert is None:
            raise _err(404, "not_found", f"no alert {key!r}")
        return alert

    async def silence(self, request: web.Request, principal: str) -> web.Response:
        key = request.match_info["id"]
        body = await _body(request)
        now = time.time()
        until, note = body.get("until"), body.get("note", "")
        if "minutes" in body and until is None:
            m = body["minutes"]
            if not isinstance(m, (int, float)) or isinstance(m, bool):
                raise _err(400, "bad_request", "minutes must be a number")
            until = now + float(m) * 60
        if not isinstance(until, (int, float)) or isinstance(until, bool):
            raise _err(400, "bad_request", "until (epoch seconds) or minutes is required")
        if not now < float(until) <= now + MAX_SILENCE_S:
            raise _err(400, "bad_request", "until must be in the future and at most 30 days ahead")
        if not isinstance(note, str):
            raise _err(400, "bad_request", "note must be a string")
        await self._alert_or_404(key)
        await asyncio.to_thread(self.silences.silence, key, float(until), principal, note)
        log.info("alert %s silenced until %s by %s", key, until, principal)
        alert = await self._alert_or_404(key)
        return web.json_response((await self.with_silences([alert]))[0])

    async def unsilence(self, request: web.Request, principal: str) -> web.Response:
        key = request.match_info["id"]
        alert = await self._alert_or_404(key)
        await asyncio.to_thread(self.silences.lift, key)
        return web.json_response((await self.with_silences([alert]))[0])

    # ---- device actions over MQTT ------------------------------------------------------------
    async def _online_device(self, dev_id: str) -> None:
        online = await asyncio.to_thread(self.queries.device_online, dev_id)
        if online is None:
            raise _err(404, "not_found", f"no device {dev_id!r}")
        if not online:
            raise _err(409, "offline", f"{dev_id} is offline")

    async def side_client(self) -> FleetClient:
        """A client connection of the API's own (log pulls, view signaling), opened on first use."""
        from fleet.client import FleetClient

        if self.commands is None or not self.commands.connected:
            raise _err(503, "no_mqtt", "the service has no MQTT connection right now")
        if self._side_lock is None:
            self._side_lock = asyncio.Lock()
        async with self._side_lock:
            if self._side_client is None:
                o = self.commands.conn.options
                client = FleetClient(
                    o.url,
                    ca_file=o.ca_file,
                    cert_file=o.cert_file,
                    key_file=o.key_file,
                    username=o.username,
                    password=o.password,
                    client_id=f"{o.client_id or 'fleet'}-console-{uuid.uuid4().hex[:6]}",
                    tls_insecure=o.tls_insecure,
                )
                client.conn.options = replace(client.conn.options, ssl_context=o.ssl_context)
                client.options = client.conn.options
                try:
                    await client.connect()
                except ConnectionError as exc:
                    raise _err(503, "no_mqtt", str(exc)) from None
                self._side_client = client
            return self._side_client

    async def close_side_client(self, app: web.Application | None = None) -> None:
        if self._side_client is not None:
            await self._side_client.close()
            self._side_client = None

    async def logs_pull(self, request: web.Request, principal: str) -> web.Response:
        from fleet.client import CommandFailed, CommandTimeout
        from fleet.log_pull import TransferError, pull_logs

        dev_id = request.match_info["id"]
        body = await _body(request)
        kw: dict[str, Any] = {}
        for name in ("since", "until", "level", "grep"):
            if body.get(name) not in (None, ""):
                if not isinstance(body[name], (str, int, float)) or isinstance(body[name], bool):
                    raise _err(400, "bad_request", f"{name} must be a string or a number")
                kw[name] = body[name]
        max_bytes = body.get("max_bytes", MAX_LOG_TEXT)
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or not 1 <= max_bytes <= 64 << 20:
            raise _err(400, "bad_request", "max_bytes must be an integer within 1..67108864")
        await self._online_device(dev_id)
        client = await self.side_client()
        log.info("log pull from %s by %s", dev_id, principal)
        try:
            res = await pull_logs(client, dev_id, max_bytes=max_bytes, command_timeout=30.0, **kw)
        except CommandTimeout as exc:
            raise _err(504, "timeout", exc.message) from None
        except CommandFailed as exc:
            return web.json_response(
                {"ok": False, "error": {"code": exc.code, "message": exc.message}}, status=422
            )
        except TransferError as exc:
            raise _err(502, exc.code, exc.message) from None
        text = (await asyncio.to_thread(gzip.decompress, res.data)).decode("utf-8", "replace")
        return web.json_response(
            {
                "ok": True,
                "request": res.request,
                "bytes": len(text.encode()),
                "lines": text.count("\n"),
                "truncated": len(text) > MAX_LOG_TEXT,
                "text": text[:MAX_LOG_TEXT],
                "info": {
                    k: v
                    for k, v in res.info.items()
                    if k in ("total", "bytes", "sha256", "files", "redacted")
                },
                "seconds": round(res.seconds, 3),
            }
        )

    async def view_offer(self, request: web.Request, principal: str) -> web.Response:
        dev_id = request.match_info["id"]
        body = await _body(request)
        sdp = body.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0"):
            raise _err(400, "bad_request", "sdp: a complete SDP offer (ICE gathered) is required")
        await self._online_device(dev_id)
        client = await self.side_client()
        sid = uuid.uuid4().hex[:12]
        topic = protocol.rtc(dev_id, sid)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_signal(msg: mqtt.MQTTMessage) -> None:
            try:
                obj = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(obj, dict) and obj.get("from") == "device":
                inbox.put_nowait(obj)

        await client.conn.subscribe_wait(topic, on_signal)
        try:
            t0 = time.monotonic()
            await client.publish(topic, {"type": "offer", "sdp": sdp, "from": "fleet"})
            try:
                msg = await asyncio.wait_for(inbox.get(), VIEW_ANSWER_TIMEOUT_S)
            except TimeoutError:
                raise _err(504, "timeout", f"{dev_id} did not answer the view offer") from None
        finally:
            client.conn.unsubscribe(topic)
        if msg.get("type") == "error":
            return web.json_response(
                {"ok": False, "error": {"code": str(msg.get("code")), "message": str(msg.get("message"))}},
                status=422,
            )
        if msg.get("type") != "answer" or not isinstance(msg.get("sdp"), str):
            raise _err(502, "bad_answer", f"expected an answer, got {msg.get('type')!r}")
        log.info("live view %s of %s by %s", sid, dev_id, principal)
        return web.json_response(
            {
                "ok": True,
                "session": sid,
                "sdp": msg["sdp"],
                "answer_ms": round((time.monotonic() - t0) * 1000, 1),
            }
        )

    async def view_bye(self, request: web.Request, principal: str) -> web.Response:
        dev_id, sid = request.match_info["id"], request.match_info["session"]
        if not sid.isalnum() or len(sid) > 64:
            raise _err(400, "bad_request", "bad session id")
        client = await self.side_client()
        await client.publish(protocol.rtc(dev_id, sid), {"type": "bye", "from": "fleet"})
        return web.json_response({"ok": True, "session": sid})
