"""The fleet HTTP API (``fleetctl serve --http HOST:PORT``): JSON under ``/api/v1/`` and ``/metrics``.

Routes, roles and parameters come from :data:`fleet.api.spec.ROUTES` (also the OpenAPI document).
Authentication: ``Authorization: Bearer <token>`` (fleet/tokens.py). Without a header a request is
accepted only when the server listens on loopback (like the device's WHEP endpoint), with the
admin role; a header that is present is always checked. Every error answers
``{"error": {"code", "message"}}`` with its status; an unexpected exception is logged and answers
500 ``internal``, never a traceback. Store reads run in threads, off the event loop that the
worker's MQTT session shares.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fleet.api.console_api import ConsoleHandlers
from fleet.api.queries import AlertFilter, ApiQueries, DeviceFilter
from fleet.api.spec import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ROUTES,
    SERIES_METRICS,
    SERIES_RANGES,
    SEVERITY,
    Route,
    openapi,
)
from fleet.client import CommandFailed, CommandTimeout, FleetClient
from fleet.metrics import CONTENT_TYPE, FleetMetrics
from fleet.store import AlertNotFound, Store
from fleet.tokens import TokenError, TokenStore, role_allows

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]  # (request, principal)
COMMAND_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_TIMEOUT_S = 120.0


class ApiError(Exception):
    """An error answer: HTTP ``status`` and ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="fleet"'} if status == 401 else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class Identities:
    """Names and locations from the provisioning registry (``fleetctl serve --claims``), cached."""

    def __init__(self, state_dir: str, ttl_s: float = 30.0) -> None:
        from fleet.provisioning.store import ProvisioningStore

        self.store = ProvisioningStore(state_dir)
        self.ttl_s = ttl_s
        self._at = -1e9
        self._all: dict[str, dict[str, Any]] = {}

    def all(self) -> dict[str, dict[str, Any]]:
        """Blocking; id -> identity."""
        if time.monotonic() - self._at > self.ttl_s:
            self._all = {d["id"]: d for d in self.store.devices()}
            self._at = time.monotonic()
        return self._all

    def get(self, device_id: str) -> dict[str, Any] | None:
        return self.store.device(device_id)


class FleetApi(ConsoleHandlers):
    """The aiohttp application over one store (and optionally the service's MQTT session)."""

    def __init__(
        self,
        store: Store,
        *,
        require_token: bool,
        tokens: TokenStore | None = None,
        commands: FleetClient | None = None,
        metrics: FleetMetrics | None = None,
        stats: Callable[[], dict[str, Any]] | None = None,
        identities: Identities | None = None,
    ) -> None:
        self.store = store
        self.require_token = require_token
        self.tokens = tokens or TokenStore(store.engine, store.prefix)
        self.queries = ApiQueries(store)
        self.commands = commands
        self.metrics = metrics
        self.stats = stats
        self.identities = identities
        self.spec = openapi()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=1 << 20)
        for r in ROUTES:
            app.router.add_route(r.method, r.path, self._guard(r, getattr(self, r.handler)))
        metrics_route = Route("GET", "/metrics", "metrics", "viewer", "Prometheus metrics")
        app.router.add_route("GET", "/metrics", self._guard(metrics_route, self.metrics_text))
        from fleet.console import add_console

        add_console(app)  # the web console at / (fleet/console/): static files, no data without a token
        app.on_cleanup.append(self.close_side_client)
        return app

    # ---- plumbing --------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.monotonic()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = error_response(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:  # aiohttp's own: 404 unknown path, 405, 413...
            code = re.sub(r"[^a-z]+", "_", exc.reason.lower()).strip("_") or "error"
            resp = error_response(exc.status, code, exc.reason)
        except Exception:
            log.exception("API %s %s failed", request.method, request.path)
            resp = error_response(500, "internal", "internal error (the service log has the details)")
        if self.metrics is not None:
            self.metrics.api_requests.labels(route, request.method, str(resp.status)).inc()
            self.metrics.api_duration.labels(route).observe(time.monotonic() - t0)
        return resp

    def _guard(self, route: Route, handler: RouteHandler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            return await handler(request, await self._authorize(request, route.role))

        return guarded

    async def _authorize(self, request: web.Request, role: str) -> str:
        header = request.headers.get("Authorization", "")
        if not header:
            if self.require_token:
                raise ApiError(
                    401, "unauthorized", "a bearer token is required (Authorization: Bearer <token>)"
                )
            return "loopback"
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "unauthorized", "expected Authorization: Bearer <token>")
        token = await asyncio.to_thread(self.tokens.verify, value.strip())
        if token is None:
            raise ApiError(401, "unauthorized", "unknown or revoked token")
        if not role_allows(token.role, role):
            raise ApiError(403, "forbidden", f"this needs the {role} role; the token has {token.role}")
        return f"token:{token.id}" + (f" ({token.name})" if token.name else "")

    # ---- handlers --------------------------------------------------------------------------
    async def openapi(self, request: web.Request, principal: str) -> web.Response:
        return web.json_response(self.spec)

    async def status(self, request: web.Request, principal: str) -> web.Response:
        conn = self.commands.conn if self.commands is not None else None
        return web.json_response(
            {
                "ingest": dict(self.stats()) if self.stats else {},
                "mqtt": {"connected": bool(conn and conn.connected), "url": conn.options.url if conn else ""},
                "store": self.store.dialect,
                "time": time.time(),
            }
        )

    async def devices(self, request: web.Request, principal: str) -> web.Response:
        q = request.query
        limit, offset = _page(q)
        f = DeviceFilter(
            group=q.get("group"),
            online=_bool(q, "online"),
            version=q.get("version"),
            severity=_enum(q, "severity", SEVERITY),
            prefix=q.get("prefix") or None,
            after=q.get("after") or None,
        )
        names: dict[str, dict[str, Any]] = {}
        if self.identities is not None:
            names = await asyncio.to_thread(self.identities.all)
            if f.prefix:
                f.ids = [i for i, d in names.items() if (d.get("name") or "").startswith(f.prefix)]
        rows, total = await asyncio.to_thread(self.queries.devices_page, f, limit, offset)
        for r in rows:
            ident = names.get(r["id"])
            r["name"] = (ident or {}).get("name") or ""
        nxt = rows[-1]["id"] if len(rows) == limit else None
        return web.json_response(
            {"devices": rows, "total": total, "limit": limit, "offset": offset, "next": nxt}
        )

    async def device(self, request: web.Request, principal: str) -> web.Response:
        dev_id = request.match_info["id"]
        info = await asyncio.to_thread(self.store.device, dev_id)
        if info is None:
            raise ApiError(404, "not_found", f"no device {dev_id!r}")
        alerts, _ = await asyncio.to_thread(
            self.queries.alerts_page, AlertFilter(device=dev_id, active=True), MAX_LIMIT, 0
        )
        ident = await asyncio.to_thread(self.identities.get, dev_id) if self.identities is not None else None
        alerts = await self.with_silences(alerts)
        info = {"id": info.pop("device"), **info, "active_alerts": alerts, "identity": ident}
        return web.json_response(info)

    async def sessions(self, request: web.Request, principal: str) -> web.Response:
        dev_id = request.match_info["id"]
        limit = _int(request.query, "limit", 50, 1, MAX_LIMIT)
        if await asyncio.to_thread(self.queries.device_online, dev_id) is None:
            raise ApiError(404, "not_found", f"no device {dev_id!r}")
        rows = await asyncio.to_thread(self.store.sessions, dev_id, limit)
        return web.json_response({"device": dev_id, "sessions": rows})

    async def series(self, request: web.Request, principal: str) -> web.Response:
        dev_id = request.match_info["id"]
        metric = _enum(request.query, "metric", SERIES_METRICS)
        if metric is None:
            raise ApiError(400, "bad_request", f"metric: required, one of {', '.join(SERIES_METRICS)}")
        range_ = _enum(request.query, "range", SERIES_RANGES) or "1h"
        if await asyncio.to_thread(self.queries.device_online, dev_id) is None:
            raise ApiError(404, "not_found", f"no device {dev_id!r}")
        body = await asyncio.to_thread(self.store.rollups.series, self.store.engine, dev_id, metric, range_)
        return web.json_response(body)

    async def command(self, request: web.Request, principal: str) -> web.Response:
        dev_id, name = request.match_info["id"], request.match_info["name"]
        if not COMMAND_NAME.match(name):
            raise ApiError(400, "bad_request", f"bad command name {name!r}")
        timeout = _float(request.query, "timeout", 10.0, 0.1, MAX_TIMEOUT_S)
        wait = bool(_bool(request.query, "wait"))
        params = await _json_body(request)
        online = await asyncio.to_thread(self.queries.device_online, dev_id)
        if online is None:
            raise ApiError(404, "not_found", f"no device {dev_id!r}")
        if not online and not wait:
            raise ApiError(
                409, "offline", f"{dev_id} is offline (add ?wait=1 to send anyway and wait for it)"
            )
        if self.commands is None or not self.commands.connected:
            raise ApiError(503, "no_mqtt", "the service has no MQTT connection right now")
        log.info("command %s on %s by %s", name, dev_id, principal)
        try:
            result = await self.commands.send_command(dev_id, name, params, timeout=timeout)
        except CommandTimeout as exc:
            raise ApiError(504, "timeout", exc.message) from None
        except CommandFailed as exc:
            return web.json_response(
                {"ok": False, "error": {"code": exc.code, "message": exc.message}}, status=422
            )
        except ConnectionError as exc:
            raise ApiError(503, "no_mqtt", str(exc)) from None
        return web.json_response({"ok": True, "result": result})

    async def alerts(self, request: web.Request, principal: str) -> web.Response:
        q = request.query
        limit, offset = _page(q)
        active = _enum(q, "active", ("true", "false", "all")) or "true"
        f = AlertFilter(
            severity=_enum(q, "severity", SEVERITY),
            device=q.get("device"),
            scope=_enum(q, "scope", ("device", "fleet")),
            active=None if active == "all" else active == "true",
        )
        rows, total = await asyncio.to_thread(self.queries.alerts_page, f, limit, offset)
        rows = await self.with_silences(rows)
        return web.json_response({"alerts": rows, "total": total, "limit": limit, "offset": offset})

    async def ack(self, request: web.Request, principal: str) -> web.Response:
        key = request.match_info["id"]
        body = await _json_body(request)
        note = body.get("note", "")
        if not isinstance(note, str):
            raise ApiError(400, "bad_request", "note must be a string")
        alert = await asyncio.to_thread(self.queries.alert, key)
        if alert is None:
            raise ApiError(404, "not_found", f"no alert {key!r}")
        try:
            await asyncio.to_thread(self.store.ack_alert, alert["device"], alert["code"], principal, note)
        except AlertNotFound as exc:
            raise ApiError(409, "not_active", str(exc)) from None
        return web.json_response(await asyncio.to_thread(self.queries.alert, key))

    async def rollouts(self, request: web.Request, principal: str) -> web.Response:
        active = bool(_bool(request.query, "active"))
        rows = await asyncio.to_thread(lambda: self.queries.jobs.list(active_only=active))
        return web.json_response({"rollouts": rows})

    async def rollout(self, request: web.Request, principal: str) -> web.Response:
        from fleet.ota.jobs import JobNotFound

        rid = request.match_info["id"]
        try:
            return web.json_response(await asyncio.to_thread(self.queries.jobs.detail, rid))
        except JobNotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None

    async def rollout_create(self, request: web.Request, principal: str) -> web.Response:
        from fleet.ota.jobs import NoDevices

        body = await _json_body(request)
        try:
            rid = await asyncio.to_thread(self.queries.jobs.create_from_request, body)
        except NoDevices as exc:
            raise ApiError(422, "no_devices", str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        log.info("rollout %s of %s created by %s", rid, body.get("version"), principal)
        return web.json_response(await asyncio.to_thread(self.queries.jobs.detail, rid), status=201)

    async def rollout_halt(self, request: web.Request, principal: str) -> web.Response:
        body = await _json_body(request)
        reason = body.get("reason") or "halted by the operator"
        if not isinstance(reason, str):
            raise ApiError(400, "bad_request", "reason must be a string")
        return await self._transition(request, principal, "halt", reason)

    async def rollout_resume(self, request: web.Request, principal: str) -> web.Response:
        return await self._transition(request, principal, "resume", "")

    async def _transition(self, request: web.Request, principal: str, op: str, reason: str) -> web.Response:
        from fleet.ota.jobs import JobNotFound, JobStateError

        rid, jobs = request.match_info["id"], self.queries.jobs
        try:
            if op == "halt":
                await asyncio.to_thread(jobs.halt, rid, reason)
            else:
                await asyncio.to_thread(jobs.resume, rid)
        except JobNotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        except JobStateError as exc:
            raise ApiError(409, "not_running" if op == "halt" else "not_halted", str(exc)) from None
        log.info("rollout %s: %s by %s", rid, op, principal)
        return web.json_response(await asyncio.to_thread(jobs.detail, rid))

    async def token_list(self, request: web.Request, principal: str) -> web.Response:
        rows = await asyncio.to_thread(self.tokens.list)
        return web.json_response({"tokens": [t.to_dict() for t in rows]})

    async def token_create(self, request: web.Request, principal: str) -> web.Response:
        body = await _json_body(request)
        role, name = body.get("role", "viewer"), body.get("name", "")
        if not isinstance(role, str) or not isinstance(name, str):
            raise ApiError(400, "bad_request", "role and name must be strings")
        try:
            tok, clear = await asyncio.to_thread(self.tokens.create, role, name)
        except TokenError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        return web.json_response({**tok.to_dict(), "token": clear}, status=201)

    async def token_revoke(self, request: web.Request, principal: str) -> web.Response:
        try:
            tok = await asyncio.to_thread(self.tokens.revoke, request.match_info["id"])
        except TokenError as exc:
            raise ApiError(404, exc.code, exc.message) from None
        return web.json_response(tok.to_dict())

    async def metrics_text(self, request: web.Request, principal: str) -> web.Response:
        if self.metrics is None:
            raise ApiError(404, "not_found", "metrics are off")
        body = await asyncio.to_thread(self.metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# ---- parameters -------------------------------------------------------------------------------
def _int(q: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise ApiError(400, "bad_request", f"{name}: must be within {lo}..{hi}")
    return v


def _float(q: Any, name: str, default: float, lo: float, hi: float) -> float:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: expected a number, got {raw!r}") from None
    if not lo <= v <= hi:  # also refuses nan
        raise ApiError(400, "bad_request", f"{name}: must be within {lo:g}..{hi:g}")
    return v


def _bool(q: Any, name: str) -> bool | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, "bad_request", f"{name}: expected true or false, got {raw!r}")


def _enum(q: Any, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise ApiError(400, "bad_request", f"{name}: expected one of {', '.join(allowed)}, got {raw!r}")
    return str(raw)


def _page(q: Any) -> tuple[int, int]:
    return _int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT), _int(q, "offset", 0, 0, 10**9)


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"body: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_request", "body: expected a JSON object")
    return obj
