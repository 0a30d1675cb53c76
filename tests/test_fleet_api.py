"""The fleet HTTP API (fleetctl serve --http) on SQLite and PostgreSQL: pages, filters, errors, tokens
and roles, OpenAPI coverage, commands over the service's own MQTT session, Prometheus metrics and
the Grafana dashboard's queries against a real scrape."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from fleet.api.server import ApiServer
from fleet.api.spec import ROUTES
from fleet.ota.jobs import GatePolicy, Jobs
from fleet.ota.rollout import Policy
from fleet.service import FleetService
from fleet.simulate import Simulation
from fleet.store import Incoming, Store
from fleet.tokens import TokenStore
from tests.support.mosquitto import Mosquitto
from tests.test_fleet_store import PG, PG_URL, event, status, tele

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(str(tmp_path / "fleet.db"))
    else:
        if not PG:
            pytest.skip(f"no PostgreSQL at {PG_URL}")
        s = Store(PG_URL, prefix=f"t{uuid.uuid4().hex[:10]}_")
    yield s
    if request.param == "postgresql":
        TokenStore(s.engine, s.prefix).drop()
        s.drop_all()
    s.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str = "", **kw) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, **kw) as resp:
        text = await resp.text()
        assert resp.content_type == "application/json", (resp.status, text)
        assert "Traceback" not in text
        return resp.status, json.loads(text)


def fill(store: Store) -> None:
    """13 devices: groups a/b, versions 1.0/2.0, three lost (P1 offline); a P2 and a P3 alert."""
    batch = []
    for i in range(12):
        body = {
            "online": i % 4 != 3,
            "boot": "b1",
            "version": "2.0" if i % 2 else "1.0",
            "slot": "a",
            "group": "a" if i < 8 else "b",
            "ts": time.time(),
        }
        if not body["online"]:
            body["reason"] = "lost"
        batch.append(Incoming("status", f"cam-{i:02d}", json.dumps(body).encode(), time.time()))
    batch += [
        tele("cam-00", "b1", 1, temperature_c=51.0),
        event("cam-01", 2, type="alert", severity="P2", code="fps_low", message="fps 9", active=True),
        event("cam-02", 3, type="alert", severity="P3", code="disk", message="disk", active=True),
        status("spk-99", True, group="b"),
    ]
    store.ingest(batch)


async def test_devices_alerts_pages_filters_and_errors(store: Store, http: aiohttp.ClientSession) -> None:
    fill(store)
    api = ApiServer(store, "127.0.0.1", 0)
    await api.start()
    base = api.url + "/api/v1"
    try:
        st, body = await call(http, "GET", f"{base}/devices")
        assert st == 200 and body["total"] == 13 and len(body["devices"]) == 13
        assert [d["id"] for d in body["devices"]][:2] == ["cam-00", "cam-01"]
        st, body = await call(http, "GET", f"{base}/devices?limit=5&offset=10")
        assert body["total"] == 13 and [d["id"] for d in body["devices"]] == ["cam-10", "cam-11", "spk-99"]
        assert body["next"] is None
        st, body = await call(http, "GET", f"{base}/devices?limit=5")
        assert body["next"] == "cam-04"
        st, body = await call(http, "GET", f"{base}/devices?limit=5&after=cam-04")
        assert [d["id"] for d in body["devices"]][0] == "cam-05" and body["total"] == 13
        st, body = await call(http, "GET", f"{base}/devices?group=b&online=false")
        assert [d["id"] for d in body["devices"]] == ["cam-11"] and body["total"] == 1
        st, body = await call(http, "GET", f"{base}/devices?version=2.0&group=a")
        assert body["total"] == 4
        st, body = await call(http, "GET", f"{base}/devices?severity=P2")
        assert [d["id"] for d in body["devices"]] == ["cam-01"] and body["devices"][0][
            "alerts_by_severity"
        ] == {"P2": 1}
        st, body = await call(http, "GET", f"{base}/devices?severity=P1")
        assert [d["id"] for d in body["devices"]] == ["cam-03", "cam-07", "cam-11"]
        st, body = await call(http, "GET", f"{base}/devices?prefix=spk")
        assert [d["id"] for d in body["devices"]] == ["spk-99"]
        st, body = await call(http, "GET", f"{base}/devices?prefix=cam_0")  # LIKE wildcards are literal
        assert body["total"] == 0
        for bad in ("limit=0", "limit=1001", "limit=x", "offset=-1", "online=maybe", "severity=P9"):
            st, body = await call(http, "GET", f"{base}/devices?{bad}")
            assert st == 400 and body["error"]["code"] == "bad_request", bad
        st, body = await call(http, "GET", f"{base}/devices/cam-00")
        assert st == 200 and body["id"] == "cam-00" and body["health"]["system"]["temperature_c"] == 51.0
        assert body["status"]["version"] == "1.0" and body["identity"] is None
        st, body = await call(http, "GET", f"{base}/devices/cam-01")
        assert [(a["code"], a["severity"]) for a in body["active_alerts"]] == [("fps_low", "P2")]
        st, body = await call(http, "GET", f"{base}/devices/nope")
        assert st == 404 and body["error"]["code"] == "not_found"
        st, body = await call(http, "GET", f"{base}/devices/nope/sessions")
        assert st == 404
        st, body = await call(http, "GET", f"{base}/devices/cam-00/sessions")
        assert st == 200 and body["sessions"] == []
        st, body = await call(http, "GET", f"{base}/nothing-here")
        assert st == 404 and body["error"]["code"] == "not_found"
        st, body = await call(http, "DELETE", f"{base}/devices")
        assert st == 405 and "error" in body

        st, body = await call(http, "GET", f"{base}/alerts")
        assert body["total"] == 5 and {a["severity"] for a in body["alerts"]} == {"P1", "P2", "P3"}
        st, body = await call(http, "GET", f"{base}/alerts?severity=P1&limit=2")
        assert body["total"] == 3 and len(body["alerts"]) == 2
        st, body = await call(http, "GET", f"{base}/alerts?device=cam-02")
        assert [(a["id"], a["acknowledged"]) for a in body["alerts"]] == [("device:cam-02:disk", None)]
        st, body = await call(http, "POST", f"{base}/alerts/device:cam-02:disk/ack", json={"note": "on it"})
        assert (
            st == 200 and body["acknowledged"]["note"] == "on it" and body["acknowledged"]["by"] == "loopback"
        )
        st, body = await call(http, "POST", f"{base}/alerts/device:cam-02:nope/ack")
        assert st == 404
        store.ingest([event("cam-02", 4, type="alert", severity="P3", code="disk", active=False)])
        st, body = await call(http, "GET", f"{base}/alerts?active=false")
        assert [a["id"] for a in body["alerts"]] == ["device:cam-02:disk"]
        st, body = await call(http, "GET", f"{base}/alerts?active=all")
        assert body["total"] == 5
        st, body = await call(http, "POST", f"{base}/alerts/device:cam-02:disk/ack")
        assert st == 409 and body["error"]["code"] == "not_active"
    finally:
        await api.stop()


async def test_tokens_roles_and_revocation(store: Store, http: aiohttp.ClientSession) -> None:
    fill(store)
    tokens = TokenStore(store.engine, store.prefix)
    viewer = tokens.create("viewer", "dash")[1]
    operator = tokens.create("operator", "oncall")[1]
    admin = tokens.create("admin")[1]
    open_api = ApiServer(store, "127.0.0.1", 0)  # loopback: no token needed
    api = ApiServer(store, "127.0.0.1", 0, require_token=True)  # as on a routable address
    await open_api.start()
    await api.start()
    base = api.url + "/api/v1"
    try:
        assert (await call(http, "GET", f"{open_api.url}/api/v1/devices"))[0] == 200
        st, body = await call(http, "GET", f"{open_api.url}/api/v1/devices", token="fleet_00000000_nope")
        assert st == 401  # a header that is present is checked, loopback or not
        st, body = await call(http, "GET", f"{base}/devices")
        assert st == 401 and body["error"]["code"] == "unauthorized"
        for bad in ("fleet_00000000_nope", viewer[:-2], "x", viewer.replace("fleet_", "fleet_0")):
            assert (await call(http, "GET", f"{base}/devices", token=bad))[0] == 401, bad
        async with http.get(f"{base}/devices", headers={"Authorization": f"Basic {viewer}"}) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await call(http, "GET", f"{base}/devices", token=viewer))[0] == 200
        st, body = await call(http, "POST", f"{base}/devices/cam-00/commands/ping", token=viewer)
        assert st == 403 and body["error"]["code"] == "forbidden"
        assert (await call(http, "POST", f"{base}/alerts/device:cam-01:fps_low/ack", token=viewer))[0] == 403
        st, body = await call(http, "POST", f"{base}/alerts/device:cam-01:fps_low/ack", token=operator)
        assert st == 200 and body["acknowledged"]["by"].endswith("(oncall)")
        assert (await call(http, "GET", f"{base}/tokens", token=operator))[0] == 403
        st, body = await call(
            http, "POST", f"{base}/tokens", token=admin, json={"role": "viewer", "name": "tmp"}
        )
        assert st == 201 and body["token"].startswith("fleet_")
        fresh, fresh_id = body["token"], body["id"]
        assert (await call(http, "GET", f"{base}/alerts", token=fresh))[0] == 200
        assert (await call(http, "POST", f"{base}/tokens", token=admin, json={"role": "root"}))[0] == 400
        st, body = await call(http, "DELETE", f"{base}/tokens/{fresh_id}", token=admin)
        assert st == 200 and body["revoked"] is not None
        assert (await call(http, "GET", f"{base}/alerts", token=fresh))[0] == 401  # revoked: refused at once
        assert (await call(http, "DELETE", f"{base}/tokens/nope", token=admin))[0] == 404
        st, body = await call(http, "GET", f"{base}/tokens", token=admin)
        assert len(body["tokens"]) == 4 and all(
            "token" not in t and "secret_sha256" not in t for t in body["tokens"]
        )
        async with http.get(f"{api.url}/metrics") as resp:
            assert resp.status == 401
        async with http.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {viewer}"}) as resp:
            assert resp.status == 200 and "fleet_devices" in await resp.text()
        # the table never holds a clear token or its secret part
        with store.engine.connect() as conn:
            dump = json.dumps([list(r) for r in conn.execute(sa.select(tokens.table))], default=str)
        for clear in (viewer, operator, admin, fresh):
            assert clear not in dump and clear.split("_", 2)[2] not in dump
    finally:
        await api.stop()
        await open_api.stop()


async def test_openapi_lists_every_route_and_every_documented_route_answers(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    store = Store(str(tmp_path / "fleet.db"))
    fill(store)
    tok_id = TokenStore(store.engine).create("viewer")[0].id
    rollout_id = Jobs(store).create("1.2.0", ["cam-00", "cam-01"], {}, Policy(), GatePolicy())
    api = ApiServer(store, "127.0.0.1", 0)
    await api.start()
    try:
        st, spec = await call(http, "GET", f"{api.url}/api/v1/openapi.json")
        assert st == 200 and spec["openapi"].startswith("3.")
        documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
        served = {
            (r.method, r.resource.canonical)
            for r in api.api.app().router.routes()
            if r.resource is not None and r.resource.canonical.startswith("/api/")
        }
        assert served == documented
        assert documented == {(r.method, r.path) for r in ROUTES}
        values = {"id": "cam-00", "name": "ping", "session": "abc123"}
        for method, path in sorted(documented):
            url = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)
            if path.startswith("/api/v1/alerts/{id}/"):  # ack, silence
                url = url.replace("cam-00", "device:cam-03:offline")
            if path == "/api/v1/tokens/{id}":
                url = url.replace("cam-00", tok_id)
            if path.startswith("/api/v1/rollouts/{id}"):  # halt sorts before resume: both apply
                url = url.replace("cam-00", rollout_id)
            if path == "/api/v1/devices/{id}/series":
                url += "?metric=fps"  # required (400 without: tests/test_fleet_rollups.py)
            payload = {"role": "viewer"} if method == "POST" else None
            if path == "/api/v1/rollouts":
                payload = {
                    "version": "1.3.0",
                    "url": "http://x/b.tar",
                    "sha256": "ab",
                    "size": 1,
                    "group": "b",
                }
            if path == "/api/v1/alerts/{id}/silence" and method == "POST":
                payload = {"minutes": 5}
            if path == "/api/v1/devices/{id}/view" and method == "POST":
                payload = {"sdp": "v=0\r\n"}
            st, body = await call(http, method, api.url + url, json=payload)
            # the command, logs and view routes answer 503 here: this API runs without an MQTT session
            assert st in (200, 201, 503), (method, path, st, body)
            for code in {int(c) for c in spec["paths"][path][method.lower()]["responses"]}:
                assert 200 <= code < 600
        st, body = await call(http, "GET", f"{api.url}/api/v1/rollouts/{rollout_id}")
        assert body["version"] == "1.2.0" and [(d["id"], d["state"]) for d in body["devices"]] == [
            ("cam-00", "pending"),
            ("cam-01", "pending"),
        ]
        st, body = await call(http, "GET", f"{api.url}/api/v1/rollouts?active=true")
        assert [(r["version"], r["devices"]) for r in body["rollouts"]] == [("1.3.0", 5), ("1.2.0", 2)]
        assert (await call(http, "GET", f"{api.url}/api/v1/rollouts/nope"))[0] == 404
    finally:
        await api.stop()
        store.close()


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred() if asyncio.iscoroutinefunction(pred) else pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_commands_metrics_and_dashboard_with_a_real_service(
    store: Store, tmp_path: Path, mosquitto: Mosquitto, http: aiohttp.ClientSession
) -> None:
    svc = FleetService(mosquitto.url, store, rule_interval_s=3600)
    sim = Simulation(mosquitto.url, 3, tmp_path / "sim", interval_s=0.3)
    api = ApiServer(store, "127.0.0.1", 0, service=svc, metrics_cache_s=0.0)
    await svc.start()
    await api.start()
    base = api.url + "/api/v1"
    try:
        await sim.start(spread_s=0.1)
        await _until(lambda: sum(d["online"] for d in store.list_devices()) == 3, 15, "3 devices online")
        store.ingest([status("gone-1", False, group="sim", reason="lost")])
        t0 = time.monotonic()
        st, body = await call(http, "POST", f"{base}/devices/ghost/commands/ping")
        assert st == 404 and body["error"]["code"] == "not_found"
        st, body = await call(http, "POST", f"{base}/devices/gone-1/commands/ping")
        assert st == 409 and body["error"]["code"] == "offline"
        assert time.monotonic() - t0 < 1.0  # at once, no MQTT round trip
        t0 = time.monotonic()
        st, body = await call(http, "POST", f"{base}/devices/gone-1/commands/ping?wait=1&timeout=1")
        assert st == 504 and body["error"]["code"] == "timeout" and time.monotonic() - t0 >= 0.9
        # more answers than mosquitto's default inflight window (20): each must be acknowledged
        for i in range(30):
            st, body = await call(
                http, "POST", f"{base}/devices/sim-0000{i % 3}/commands/ping?timeout=5", json={"echo": i}
            )
            assert (
                st == 200 and body == {"ok": True, "result": body["result"]} and body["result"]["echo"] == i
            )
        st, body = await call(http, "POST", f"{base}/devices/sim-00001/commands/reboot")
        assert st == 422 and body["error"]["code"] == "confirmation_required" and body["ok"] is False
        for bad in ("[1]", "{nope"):
            st, body = await call(http, "POST", f"{base}/devices/sim-00001/commands/ping", data=bad)
            assert st == 400, bad
        st, body = await call(http, "POST", f"{base}/devices/sim-00001/commands/a+b")
        assert st == 400
        st, body = await call(http, "GET", f"{base}/status")
        assert body["mqtt"]["connected"] is True and body["ingest"]["stored"] > 0

        await _until(lambda: svc.stats["batches"] >= 3, 10, "batches")
        rid = Jobs(store).create("9.9.9", ["gone-1"], {}, Policy(), GatePolicy())
        async with http.get(f"{api.url}/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
        samples = _samples(text)
        assert samples[("fleet_devices", (("group", "sim"), ("online", "true"), ("version", "0.1.0")))] == 3
        assert samples[("fleet_devices", (("group", "sim"), ("online", "false"), ("version", "1.0")))] == 1
        assert (
            samples[("fleet_alerts_open", (("code", "offline"), ("scope", "device"), ("severity", "P1")))]
            == 1
        )
        assert samples[("fleet_ingest_messages_total", (("result", "stored"),))] > 0
        assert samples[("fleet_ingest_lag_seconds_count", (("kind", "telemetry"),))] > 0
        assert samples[("fleet_ingest_commit_delay_seconds_count", ())] > 0
        assert samples[("fleet_mqtt_connected", ())] == 1
        assert sum(v for (name, _), v in samples.items() if name == "fleet_rollouts") == 1
        # one device in some state (the service's rollout driver may already have dispatched it)
        assert (
            sum(
                v
                for (name, labels), v in samples.items()
                if name == "fleet_rollout_devices"
                and ("rollout", rid) in labels
                and ("version", "9.9.9") in labels
            )
            == 1
        )
        assert (
            samples[
                (
                    "fleet_api_requests_total",
                    (
                        ("method", "POST"),
                        ("route", "/api/v1/devices/{id}/commands/{name}"),
                        ("status", "200"),
                    ),
                )
            ]
            == 30
        )
        assert not any("sim-0000" in str(labels) for _, labels in samples)  # no per-device series

        # every query of the shipped Grafana dashboard names a metric this scrape exports
        exported = {name for name, _ in samples} | set(re.findall(r"^# TYPE (\S+)", text, re.M))
        dash = json.loads(resources.files("fleet.grafana").joinpath("fleet-dashboard.json").read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        assert len(exprs) >= 10
        for expr in exprs:
            names = promql_metric_names(expr)
            assert names, expr
            assert names <= exported, (expr, names - exported)
    finally:
        await sim.stop()
        await api.stop()
        await svc.stop()


PROMQL_WORDS = {
    "sum",
    "rate",
    "irate",
    "increase",
    "by",
    "without",
    "histogram_quantile",
    "avg",
    "max",
    "min",
    "count",
    "topk",
    "bottomk",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "abs",
    "clamp_min",
    "clamp_max",
    "delta",
    "deriv",
    "time",
    "vector",
    "scalar",
    "label_replace",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
    "le",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, strings, ranges and
    grouping clauses that are not functions or keywords."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        after = s[m.end() :].lstrip()
        if word in PROMQL_WORDS or after.startswith("("):
            continue
        names.add(word)
    return names


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        assert m, line
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_fleetctl_token_cli_and_serve_http(
    tmp_path: Path, mosquitto: Mosquitto, http: aiohttp.ClientSession
) -> None:
    db = str(tmp_path / "fleet.db")

    def fleetctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fleet.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
        )

    res = fleetctl("token", "create", "--role", "operator", "--name", "ci", "--db", db)
    assert res.returncode == 0, res.stderr
    clear = res.stdout.strip()
    assert re.fullmatch(r"fleet_[0-9a-f]{8}_[A-Za-z0-9_-]{40,}", clear) and "shown once" in res.stderr
    rows = json.loads(fleetctl("token", "list", "--db", db, "--json").stdout)
    assert [(r["name"], r["role"], r["revoked"]) for r in rows] == [("ci", "operator", None)]
    assert clear not in fleetctl("token", "list", "--db", db).stdout
    assert fleetctl("token", "create", "--role", "root", "--db", db).returncode == 2
    assert fleetctl("token", "revoke", "nope", "--db", db).returncode == 4  # not found
    assert clear.encode() not in Path(db).read_bytes()

    port = _free_port()
    serve = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet.cli",
        "serve",
        "--mqtt",
        mosquitto.url,
        "--db",
        db,
        "--http",
        f"127.0.0.1:{port}",
        "--http-require-token",
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        lines = [(await asyncio.wait_for(serve.stdout.readline(), 30)).decode() for _ in range(2)]
        assert "API on http://127.0.0.1:" in lines[1] and "token required" in lines[1], lines
        st, body = await call(http, "GET", f"http://127.0.0.1:{port}/api/v1/devices")
        assert st == 401
        st, body = await call(http, "GET", f"http://127.0.0.1:{port}/api/v1/devices", token=clear)
        assert st == 200 and body == {"devices": [], "total": 0, "limit": 100, "offset": 0, "next": None}
        assert fleetctl("token", "revoke", rows[0]["id"], "--db", db).returncode == 0
        st, body = await call(http, "GET", f"http://127.0.0.1:{port}/api/v1/devices", token=clear)
        assert st == 401
    finally:
        serve.terminate()
        out, _ = await asyncio.wait_for(serve.communicate(), 30)
    assert serve.returncode == 0 and b'"final": true' in out
    bad = fleetctl("serve", "--mqtt", mosquitto.url, "--db", db, "--http", "nonsense")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


async def test_command_answers_are_acknowledged_on_the_services_manual_ack_session(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The worker's session acknowledges by hand (after commits); command answers arriving on it must
    be acknowledged too, or a broker's inflight window (mosquitto's default: 20) fills up and every
    later answer stays at the broker: commands time out."""
    broker = Mosquitto(tmp_path / "broker", extra_config="max_inflight_messages 5").start()
    store = Store(str(tmp_path / "fleet.db"))
    svc = FleetService(broker.url, store, rule_interval_s=3600)
    sim = Simulation(broker.url, 1, tmp_path / "sim", interval_s=30)
    api = ApiServer(store, "127.0.0.1", 0, service=svc)
    try:
        await svc.start()
        await api.start()
        await sim.start(spread_s=0)
        await _until(lambda: (store.device("sim-00000") or {}).get("online"), 15, "sim-00000 online")
        for i in range(12):
            st, body = await call(
                http, "POST", f"{api.url}/api/v1/devices/sim-00000/commands/ping?timeout=3", json={"echo": i}
            )
            assert (st, body.get("result", {}).get("echo")) == (200, i), (i, st, body)
    finally:
        await sim.stop()
        await api.stop()
        await svc.stop()
        broker.stop()


async def test_identity_from_provisioning(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    import datetime as dt

    from fleet.provisioning.store import ProvisioningStore

    store = Store(str(tmp_path / "fleet.db"))
    fill(store)
    prov = ProvisioningStore(tmp_path / "prov")
    (t,) = prov.create_claims("a", 60, 1, b"\x01" * 32)
    now = dt.datetime.now(dt.UTC)
    prov.redeem(
        prov.check_claim(t.id, t.secret), "cam-05", {"name": "Lobby door", "location": "hall 2"}, 1, now, now
    )
    api = ApiServer(store, "127.0.0.1", 0, provisioning_dir=str(tmp_path / "prov"))
    await api.start()
    try:
        st, body = await call(http, "GET", f"{api.url}/api/v1/devices/cam-05")
        assert (
            st == 200
            and body["identity"]["name"] == "Lobby door"
            and body["identity"]["location"] == "hall 2"
        )
        st, body = await call(http, "GET", f"{api.url}/api/v1/devices?prefix=Lobby")
        assert [(d["id"], d["name"]) for d in body["devices"]] == [("cam-05", "Lobby door")]
        st, body = await call(http, "GET", f"{api.url}/api/v1/devices?prefix=cam-0&limit=1")
        assert body["total"] == 10 and body["devices"][0]["name"] == ""
    finally:
        await api.stop()
        store.close()
