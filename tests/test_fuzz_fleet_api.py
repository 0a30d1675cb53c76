"""Fuzzing the fleet HTTP API (target "fleet_api") on a real store with devices and alerts.

Random methods on the documented paths (path segments drawn from real ids, random text and
percent-escapes), random query parameters (the documented names and others, odd values), random
bodies and Authorization headers, against one API that needs a token and one on loopback without.
Properties: never a 5xx except the 503 ``no_mqtt`` of a route that documents it (it needs MQTT), every
error the JSON ``{"error": {"code", "message"}}``, never a traceback in an answer or an ERROR in
the log, and a valid viewer token still reads the devices afterwards.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.api.server import ApiServer
from fleet.api.spec import ROUTES
from fleet.store import Store
from fleet.tokens import TokenStore
from tests.support.fuzzing import fuzz_example, fuzz_settings
from tests.test_fleet_api import fill

pytestmark = [pytest.mark.fuzz]

PARAMS = sorted({p.name for r in ROUTES for p in r.params} | {"x", "limit[]", ""})
VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "-1",
            "1001",
            "true",
            "false",
            "all",
            "P1",
            "P9",
            "nan",
            "inf",
            "1e309",
            "cam-0",
            "%",
            "_",
            "\\",
            "'",
            "device",
            "fleet",
            "99999999999999999999",
        ]
    ),
    st.text(max_size=30),
)
SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "cam-00",
            "cam-03",
            "spk-99",
            "device:cam-03:offline",
            "ping",
            "reboot",
            "..",
            ".",
            "%00",
            "%2F",
            "a+b",
            "#",
            "ghost",
        ]
    ),
    st.text(min_size=1, max_size=20),
)


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.lines.append(f"{record.name}: {record.getMessage()}")


class RunningApi:
    """Two API servers (token required / loopback open) over one store, on a loop in a thread."""

    def __init__(self, workdir: Path) -> None:
        self.store = Store(str(workdir / "fleet.db"))
        fill(self.store)
        tokens = TokenStore(self.store.engine)
        self.viewer = tokens.create("viewer")[1]
        self.admin = tokens.create("admin")[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = [
            ApiServer(self.store, "127.0.0.1", 0, require_token=True),
            ApiServer(self.store, "127.0.0.1", 0),
        ]
        for s in self.servers:
            asyncio.run_coroutine_threadsafe(s.start(), self.loop).result(10)

    def close(self) -> None:
        for s in self.servers:
            asyncio.run_coroutine_threadsafe(s.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.store.close()

    def request(
        self, server: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.servers[server].port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", ""), resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    api = RunningApi(tmp_path_factory.mktemp("fleet-api-fuzz"))
    yield api
    api.close()


def documents_503(method: str, path: str) -> bool:
    """Whether a route of the spec that matches ``method path`` documents a 503 (it needs MQTT)."""
    bare = path.split("?", 1)[0]
    for route in ROUTES:
        pattern = (
            "^"
            + re.sub(r"{\w+}", "[^/]+", re.escape(route.path).replace(r"\{", "{").replace(r"\}", "}"))
            + "$"
        )
        if route.method == method and 503 in route.responses and re.match(pattern, bare):
            return True
    return False


@st.composite
def requests(draw: st.DrawFn) -> tuple[int, str, str, bytes | None, dict[str, str]]:
    route = draw(st.sampled_from(ROUTES))
    method = draw(st.sampled_from([route.method] * 4 + ["GET", "POST", "DELETE", "PUT", "PATCH"]))
    parts = re.split(r"({\w+})", route.path)
    for i, part in enumerate(parts):
        if part.startswith("{"):
            seg = draw(SEGMENTS)
            raw = draw(st.booleans()) and seg.isascii() and seg.isprintable() and " " not in seg
            parts[i] = seg if raw else quote(seg, safe="")
    path = "".join(parts)
    query = draw(st.lists(st.tuples(st.sampled_from(PARAMS), VALUES), max_size=4))
    if query:
        path += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    body = draw(
        st.one_of(
            st.none(),
            st.just(b""),
            st.just(b'{"role": "viewer"}'),
            st.just(b"[1]"),
            st.just(b'{"note": 5}'),
            st.binary(max_size=64),
            st.text(max_size=64).map(lambda t: t.encode()),
        )
    )
    auth = draw(st.sampled_from(["", "viewer", "admin", "Bearer ", "Bearer fleet_0_0", "Basic x", "garbage"]))
    server = draw(st.integers(0, 1))
    return server, method, path, body, {"Authorization": auth} if auth else {}


@fuzz_settings(examples=150)
@given(req=requests())
def test_fleet_api_never_5xx_and_always_json_errors(running: RunningApi, req) -> None:
    server, method, path, body, headers = req
    if headers.get("Authorization") in ("viewer", "admin"):
        headers = {"Authorization": f"Bearer {getattr(running, headers['Authorization'])}"}
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        with fuzz_example("fleet_api") as example:
            try:
                status, ctype, raw = running.request(server, method, path, body, headers)
            except http.client.InvalidURL:
                return  # the client refuses to send it (control characters): nothing reached the API
            assert b"Traceback" not in raw, (method, path, raw[:300])
            no_mqtt = status == 503 and json.loads(raw).get("error", {}).get("code") == "no_mqtt"
            assert status < 500 or (no_mqtt and documents_503(method, path)), (
                method,
                path,
                status,
                raw[:300],
            )
            if status >= 400:
                assert ctype.startswith("application/json"), (method, path, status, ctype, raw[:200])
                err = json.loads(raw)["error"]
                assert isinstance(err["code"], str) and isinstance(err["message"], str)
            assert not errors.lines, errors.lines
            t0 = time.monotonic()
            st_, _, _ = running.request(
                0, "GET", "/api/v1/devices?limit=1", None, {"Authorization": f"Bearer {running.viewer}"}
            )
            if st_ != 200 or time.monotonic() - t0 > 5:
                example.lost()
            assert st_ == 200
    finally:
        logging.getLogger().removeHandler(errors)
