"""The console's API routes on SQLite and PostgreSQL: overview figures, silences, whoami and their roles,
the console's static files, and the device actions' errors without a device or an MQTT session."""

from __future__ import annotations

import time

import aiohttp

from fleet.api.server import ApiServer
from fleet.silences import SilenceStore
from fleet.store import Store
from fleet.tokens import TokenStore
from tests import test_fleet_api
from tests.test_fleet_api import call, fill

store = test_fleet_api.store  # the SQLite / PostgreSQL store fixture
http = test_fleet_api.http


async def test_overview_silences_whoami_and_roles(store: Store, http: aiohttp.ClientSession) -> None:
    fill(store)  # 13 devices (3 lost: P1 offline), a P2 and a P3
    tokens = TokenStore(store.engine, store.prefix)
    viewer = tokens.create("viewer", "wall")[1]
    operator = tokens.create("operator", "oncall")[1]
    raised = store.device("cam-03")["active_alerts"][0]["raised"]  # type: ignore[index]
    store.ack_alert("cam-03", "offline", "token:x", "seen", now=raised + 90)
    api = ApiServer(store, "127.0.0.1", 0, require_token=True)
    await api.start()
    base = api.url + "/api/v1"
    try:
        st, ov = await call(http, "GET", f"{base}/overview", token=viewer)
        assert st == 200 and ov["devices"] == {"total": 13, "online": 10, "offline": 3}
        assert {v["version"]: (v["online"], v["offline"]) for v in ov["versions"]} == {
            "1.0": (7, 0),
            "2.0": (3, 3),
        }
        assert {g["group"]: (g["online"], g["offline"]) for g in ov["groups"]} == {"a": (6, 2), "b": (4, 1)}
        assert ov["alerts"]["P1"] == {"open": 3, "acknowledged": 1, "silenced": 0, "attention": 2}
        assert ov["alerts"]["P2"]["open"] == 1 and ov["alerts"]["P3"]["open"] == 1
        assert ov["time_to_ack"]["P1"]["n"] == 1 and abs(ov["time_to_ack"]["P1"]["median_s"] - 90) < 1e-6
        tr = ov["trends"]
        assert len(tr["went_offline"]) == 24 and tr["went_offline"][-1] == 3
        # the ack is dated 90 s in
        assert sum(tr["alerts_raised"]["P1"]) == 3 and tr["acknowledged"] == [0] * 24
        assert (await call(http, "GET", f"{base}/overview?hours=0", token=viewer))[0] == 400

        assert (await call(http, "GET", f"{base}/whoami", token=viewer))[1]["role"] == "viewer"
        st, who = await call(http, "GET", f"{base}/whoami", token=operator)
        assert who["role"] == "operator" and who["principal"].endswith("(oncall)")

        key = "device:cam-07:offline"
        until = time.time() + 3600
        st, body = await call(
            http, "POST", f"{base}/alerts/{key}/silence", token=viewer, json={"until": until}
        )
        assert st == 403
        st, body = await call(
            http,
            "POST",
            f"{base}/alerts/{key}/silence",
            token=operator,
            json={"until": until, "note": "works"},
        )
        assert (
            st == 200 and body["silenced"]["note"] == "works" and body["silenced"]["by"].endswith("(oncall)")
        )
        st, alerts = await call(http, "GET", f"{base}/alerts?severity=P1", token=viewer)
        assert {a["id"]: bool(a["silenced"]) for a in alerts["alerts"]}[key] is True
        st, ov = await call(http, "GET", f"{base}/overview", token=viewer)
        assert ov["alerts"]["P1"] == {"open": 3, "acknowledged": 1, "silenced": 1, "attention": 1}
        for bad in ({}, {"until": time.time() - 5}, {"until": time.time() + 40 * 86400}, {"minutes": "x"}):
            st, body = await call(http, "POST", f"{base}/alerts/{key}/silence", token=operator, json=bad)
            assert st == 400, bad
        st, _ = await call(
            http, "POST", f"{base}/alerts/device:nope:x/silence", token=operator, json={"minutes": 5}
        )
        assert st == 404
        st, body = await call(
            http, "POST", f"{base}/alerts/{key}/silence", token=operator, json={"minutes": 1}
        )
        assert abs(body["silenced"]["until"] - time.time() - 60) < 5  # replaced, not added
        assert SilenceStore(store.engine, store.prefix).active([key], now=time.time() + 120) == {}  # expired
        st, body = await call(http, "DELETE", f"{base}/alerts/{key}/silence", token=operator)
        assert st == 200 and body["silenced"] is None

        # device actions: roles first, then what the store knows, then MQTT
        for path, payload in (("logs", {}), ("view", {"sdp": "v=0\r\n"})):
            assert (await call(http, "POST", f"{base}/devices/cam-00/{path}", token=viewer, json=payload))[
                0
            ] == 403
            st, body = await call(http, "POST", f"{base}/devices/ghost/{path}", token=operator, json=payload)
            assert st == 404, path
            st, body = await call(http, "POST", f"{base}/devices/cam-03/{path}", token=operator, json=payload)
            assert st == 409 and body["error"]["code"] == "offline", path
            st, body = await call(http, "POST", f"{base}/devices/cam-00/{path}", token=operator, json=payload)
            assert st == 503 and body["error"]["code"] == "no_mqtt", path
        st, body = await call(http, "POST", f"{base}/devices/cam-00/view", token=operator, json={"sdp": 3})
        assert st == 400
        st, body = await call(
            http, "POST", f"{base}/devices/cam-00/logs", token=operator, json={"max_bytes": 0}
        )
        assert st == 400

        # the console itself: served without a token (it holds no data), strict CSP, no CDN
        async with http.get(api.url + "/") as resp:
            page = await resp.text()
            assert resp.status == 200 and "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "/console/console.js" in page and "http" not in page.replace("http-equiv", "")
        for name, ctype in (("console.js", "text/javascript"), ("console.css", "text/css")):
            async with http.get(f"{api.url}/console/{name}") as resp:
                body = await resp.text()
                assert resp.status == 200 and resp.content_type == ctype and "https://" not in body
        async with http.get(f"{api.url}/console/../spec.py") as resp:
            assert resp.status == 404
    finally:
        await api.stop()
        SilenceStore(store.engine, store.prefix).drop()


async def test_rollout_page_from_aggregates_matches_the_job(
    store: Store, http: aiohttp.ClientSession
) -> None:
    import sqlalchemy as sa

    from fleet.ota.jobs import GatePolicy, Jobs
    from fleet.ota.rollout import Policy

    jobs = Jobs(store)
    devs = [f"d-{i:03d}" for i in range(250)]
    rid = jobs.create("2.0", devs, {}, Policy(canary=2, batch_size=100), GatePolicy())
    d = jobs.devices.c
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(jobs.devices).where(d.rollout_id == rid, d.pos < 2).values(state="succeeded", wave=0)
        )
        conn.execute(
            sa.update(jobs.devices)
            .where(d.rollout_id == rid, d.pos >= 2, d.pos < 102)
            .values(state="in_progress", wave=1, phase="download", percent=40.0)
        )
        conn.execute(
            sa.update(jobs.devices)
            .where(d.rollout_id == rid, d.pos == 5)
            .values(state="failed", reason="pip", rollback="done")
        )
        conn.execute(sa.update(jobs.rollouts).where(jobs.rollouts.c.id == rid).values(waves=2))
    api = ApiServer(store, "127.0.0.1", 0)
    await api.start()
    base = f"{api.url}/api/v1/rollouts/{rid}"
    try:
        st, page = await call(http, "GET", f"{base}/devices?limit=100")
        job = jobs.get(rid)
        assert st == 200 and {k: page[k] for k in job.summary()} == job.summary()
        assert page["counts"] == {"pending": 148, "in_progress": 99, "succeeded": 2, "failed": 1}
        assert page["wave_states"] == [
            {"wave": 0, "counts": {"succeeded": 2}},
            {"wave": 1, "counts": {"in_progress": 99, "failed": 1}},
        ]
        assert page["total"] == 250 and [x["id"] for x in page["page"]][:3] == ["d-000", "d-001", "d-002"]
        assert len(page["page"]) == 100 and page["policy"]["canary"] == 2
        st, page = await call(http, "GET", f"{base}/devices?state=failed")
        assert page["total"] == 1 and page["page"][0] == {
            "id": "d-005",
            "state": "failed",
            "phase": "download",
            "percent": 40.0,
            "reason": "pip",
            "wave": 1,
            "dispatches": 0,
            "rollback": "done",
        }
        st, page = await call(http, "GET", f"{base}/devices?state=pending&limit=50&offset=140")
        assert page["total"] == 148 and [x["id"] for x in page["page"]] == [
            f"d-{i:03d}" for i in range(242, 250)
        ]
        assert (await call(http, "GET", f"{base}/devices?state=nope"))[0] == 400
        assert (await call(http, "GET", f"{api.url}/api/v1/rollouts/nope/devices"))[0] == 404
    finally:
        await api.stop()
