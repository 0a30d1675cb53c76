"""The API's route table: the one description both the server (fleet/api/app.py) and the OpenAPI 3
document (``GET /api/v1/openapi.json``) are built from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

VERSION = "1"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    type: str  # string | integer | boolean | number
    description: str
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # aiohttp form: /api/v1/devices/{id}
    handler: str  # method name on fleet.api.app.FleetApi
    role: str  # viewer | operator | admin (fleet.tokens.ROLES)
    summary: str
    params: tuple[Param, ...] = ()
    body: str = ""  # description of a JSON request body, "" for none
    responses: dict[int, str] = field(default_factory=dict)


PAGE = (
    Param("limit", "integer", f"page size, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})"),
    Param("offset", "integer", "rows to skip (default 0)"),
)
SEVERITY = ("P1", "P2", "P3")
SERIES_METRICS = ("fps", "freeze_rate", "loss", "rtt_ms", "cpu", "temp_c")  # fleet/rollups.py METRICS
SERIES_RANGES = ("1h", "24h", "7d")

ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/openapi.json", "openapi", "viewer", "This document."),
    Route(
        "GET", "/api/v1/status", "status", "viewer", "The service: ingest counters, MQTT connection, store."
    ),
    Route(
        "GET",
        "/api/v1/devices",
        "devices",
        "viewer",
        "Devices, ordered by id: {devices: [...], total, limit, offset, next}.",
        (
            *PAGE,
            Param("group", "string", "only this group"),
            Param("online", "boolean", "only online (true) or offline (false) devices"),
            Param("version", "string", "only this agent version"),
            Param("severity", "string", "only devices with an active alert of this severity", SEVERITY),
            Param("prefix", "string", "device id prefix (or provisioned name prefix)"),
            Param("after", "string", "cursor: only ids after this one (pass the previous page's next)"),
        ),
        responses={
            200: "a page of devices; next: the cursor of the following page or null",
            400: "bad parameter",
        },
    ),
    Route(
        "GET",
        "/api/v1/devices/{id}",
        "device",
        "viewer",
        "One device: identity (name, location from provisioning), latest status and health, active alerts.",
        responses={200: "the device", 404: "unknown device"},
    ),
    Route(
        "GET",
        "/api/v1/devices/{id}/sessions",
        "sessions",
        "viewer",
        "The device's viewer-session records (media.session events), newest first: {sessions: [...]}.",
        (Param("limit", "integer", f"at most this many, 1..{MAX_LIMIT} (default 50)"),),
        responses={200: "the sessions", 404: "unknown device"},
    ),
    Route(
        "GET",
        "/api/v1/devices/{id}/series",
        "series",
        "viewer",
        "One metric of the device over a range, from the rollups (fleet/rollups.py): {device, metric, unit, "
        "range, source, step_s, from, to, points: [{t, avg, min, max, n}]}, oldest first, steps without "
        "samples left out.",
        (
            Param("metric", "string", "the metric (required)", SERIES_METRICS),
            Param(
                "range",
                "string",
                "1h (minute rollups, 60 s steps; default), 24h (minute rollups, 300 s steps) or 7d "
                "(hour rollups, 3600 s steps)",
                SERIES_RANGES,
            ),
        ),
        responses={200: "the series", 400: "bad or missing parameter", 404: "unknown device"},
    ),
    Route(
        "POST",
        "/api/v1/devices/{id}/commands/{name}",
        "command",
        "operator",
        "Run a command on the device over MQTT and return its answer {ok, result} (or {ok: false, error}).",
        (
            Param("timeout", "number", "seconds to wait for the answer, 0.1..120 (default 10)"),
            Param(
                "wait", "boolean", "send even when the device is offline and wait for it up to the timeout"
            ),
        ),
        body="the command's parameters (a JSON object; empty body: {})",
        responses={
            200: "the device's result",
            400: "bad parameters",
            404: "unknown device",
            409: "the device is offline",
            422: "the device refused (its error code)",
            503: "no MQTT connection",
            504: "no answer within the timeout",
        },
    ),
    Route(
        "GET",
        "/api/v1/alerts",
        "alerts",
        "viewer",
        "Alerts, newest raise first: {alerts: [...], total}.",
        (
            *PAGE,
            Param("severity", "string", "only this severity", SEVERITY),
            Param("active", "string", "true (default), false (cleared) or all", ("true", "false", "all")),
            Param("device", "string", "only this device's alerts"),
            Param("scope", "string", "device or fleet", ("device", "fleet")),
        ),
        responses={200: "a page of alerts", 400: "bad parameter"},
    ),
    Route(
        "POST",
        "/api/v1/alerts/{id}/ack",
        "ack",
        "operator",
        "Acknowledge the current raise of an alert (id as listed, e.g. device:cam-7:offline).",
        body='optional {"note": "..."}',
        responses={200: "the alert", 404: "unknown alert"},
    ),
    Route(
        "GET",
        "/api/v1/rollouts",
        "rollouts",
        "viewer",
        "Rollout jobs (fleet/ota/jobs.py), newest first: {rollouts: [summary...]}.",
        (Param("active", "boolean", "only the running ones"),),
        responses={200: "the rollouts"},
    ),
    Route(
        "GET",
        "/api/v1/rollouts/{id}",
        "rollout",
        "viewer",
        "One rollout: its summary and every device's state, phase, percent, wave, dispatches, rollback.",
        responses={200: "the rollout", 404: "unknown rollout"},
    ),
    Route(
        "POST",
        "/api/v1/rollouts",
        "rollout_create",
        "operator",
        "Create a rollout job that the service's workers drive (what `fleetctl ota rollout` sends).",
        body='{"version", "url", "sha256", "size", "devices": [ids] or "group": name, '
        '"policy": {canary, batch_size, growth, max_failure_rate, min_executed, in_progress_timeout_s}, '
        '"gate": {soak_s, max_alert_increase, max_crashloop_increase, max_freeze_rate_increase, '
        "min_fps_ratio, max_ns_rtf_ratio, min_samples}} (policy and gate optional: defaults)",
        responses={
            201: "the new rollout (as GET /api/v1/rollouts/{id})",
            400: "bad request",
            422: "no devices to update (code no_devices)",
        },
    ),
    Route(
        "POST",
        "/api/v1/rollouts/{id}/halt",
        "rollout_halt",
        "operator",
        "Halt a running rollout: pending devices are skipped, devices in progress finish on their own.",
        body='optional {"reason": "..."}',
        responses={200: "the rollout", 404: "unknown rollout", 409: "not running (code not_running)"},
    ),
    Route(
        "POST",
        "/api/v1/rollouts/{id}/resume",
        "rollout_resume",
        "operator",
        "Resume a halted rollout: skipped devices are pending again, the health gate starts afresh.",
        responses={200: "the rollout", 404: "unknown rollout", 409: "not halted (code not_halted)"},
    ),
    Route(
        "GET",
        "/api/v1/rollouts/{id}/devices",
        "rollout_devices",
        "viewer",
        "One rollout from aggregates (the console's rollout page): the summary's keys, the policy, "
        "wave_states [{wave, counts}] and one page of its devices (page, total), in rollout order.",
        (
            *PAGE,
            Param(
                "state",
                "string",
                "only devices in this state",
                ("pending", "in_progress", "succeeded", "failed", "timed_out", "skipped"),
            ),
        ),
        responses={
            200: "the rollout and a page of its devices",
            400: "bad parameter",
            404: "unknown rollout",
        },
    ),
    Route(
        "GET",
        "/api/v1/whoami",
        "whoami",
        "viewer",
        "Who is asking: {principal, role} (the console enables its buttons by role).",
    ),
    Route(
        "GET",
        "/api/v1/overview",
        "overview",
        "viewer",
        "The fleet at a glance (the console's overview): devices online/offline, versions, groups, open "
        "alerts by severity (acknowledged, silenced, needing attention), time to acknowledge over 7 days, "
        "hourly trends (alerts raised, devices gone offline, acknowledgements, groups' freeze rate).",
        (Param("hours", "integer", "trend window in hours, 1..168 (default 24)"),),
        responses={200: "the overview", 400: "bad parameter"},
    ),
    Route(
        "POST",
        "/api/v1/alerts/{id}/silence",
        "silence",
        "operator",
        "Silence an alert until a time (every raise within the window): the console stops counting it.",
        body='{"until": epoch seconds} or {"minutes": N}, optional "note"; at most 30 days ahead',
        responses={200: "the alert with its silence", 400: "bad until", 404: "unknown alert"},
    ),
    Route(
        "DELETE",
        "/api/v1/alerts/{id}/silence",
        "unsilence",
        "operator",
        "Lift an alert's silence.",
        responses={200: "the alert", 404: "unknown alert"},
    ),
    Route(
        "POST",
        "/api/v1/devices/{id}/logs",
        "logs_pull",
        "operator",
        "Pull the device's logs (logs.pull, filtered and redacted on the device) and return the text.",
        body='optional {"since", "until", "level", "grep", "max_bytes"} as for fleetctl logs',
        responses={
            200: "{ok, request, bytes, lines, truncated, text}",
            404: "unknown device",
            409: "the device is offline",
            422: "the device refused",
            502: "the transfer could not be completed",
            503: "no MQTT connection",
            504: "no answer",
        },
    ),
    Route(
        "POST",
        "/api/v1/devices/{id}/view",
        "view_offer",
        "operator",
        "Live view: relay a WebRTC offer (ICE gathered, receive-only) to the device over MQTT signaling "
        "(the device's rtc signaling topic, docs/protocol.md) and return its answer.",
        body='{"sdp": "v=0..."}',
        responses={
            200: "{ok, session, sdp}",
            400: "no offer",
            404: "unknown device",
            409: "the device is offline",
            422: "the device refused (busy, bad_request...)",
            503: "no MQTT connection",
            504: "no answer",
        },
    ),
    Route(
        "DELETE",
        "/api/v1/devices/{id}/view/{session}",
        "view_bye",
        "operator",
        "End a live view (sends bye on the session's signaling topic).",
        responses={200: "sent", 503: "no MQTT connection"},
    ),
    Route(
        "GET", "/api/v1/tokens", "token_list", "admin", "API tokens (never their secrets): {tokens: [...]}."
    ),
    Route(
        "POST",
        "/api/v1/tokens",
        "token_create",
        "admin",
        "Create a token; the answer holds the clear token, shown this once.",
        body='{"role": "viewer|operator|admin", "name": "..."}',
        responses={201: "the new token", 400: "bad role"},
    ),
    Route(
        "DELETE",
        "/api/v1/tokens/{id}",
        "token_revoke",
        "admin",
        "Revoke a token.",
        responses={200: "the revoked token", 404: "unknown token"},
    ),
)


def openapi(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    error = {"$ref": "#/components/schemas/Error"}
    for r in routes:
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in re.findall(r"{(\w+)}", r.path)
        ]
        for p in r.params:
            schema: dict[str, Any] = {"type": p.type}
            if p.enum:
                schema["enum"] = list(p.enum)
            params.append(
                {
                    "name": p.name,
                    "in": "query",
                    "required": False,
                    "description": p.description,
                    "schema": schema,
                }
            )
        responses: dict[str, Any] = {}
        for code, text in (r.responses or {200: "OK"}).items():
            body = {"$ref": "#/components/schemas/Error"} if code >= 400 else {"type": "object"}
            responses[str(code)] = {"description": text, "content": {"application/json": {"schema": body}}}
        for code, text in ((401, "no or bad token"), (403, f"the token's role is below {r.role}")):
            responses[str(code)] = {"description": text, "content": {"application/json": {"schema": error}}}
        op: dict[str, Any] = {
            "operationId": r.handler,
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
            "x-role": r.role,
            "security": [{"bearer": []}],
        }
        if r.body:
            op["requestBody"] = {
                "required": False,
                "description": r.body,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "device-agent fleet API",
            "version": VERSION,
            "description": "fleetctl serve --http: the operator's console API (docs/fleet-api.md). "
            "Roles: viewer (read) < operator (+ commands, alert acknowledgement and silences, rollouts, "
            "log pulls, live views) < admin "
            "(+ tokens). A bearer token is required unless the API listens on loopback.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                }
            },
        },
    }
