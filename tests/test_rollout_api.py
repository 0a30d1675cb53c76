"""Rollouts over the fleet API: POST /api/v1/rollouts, halt, resume (roles, errors), on SQLite and
PostgreSQL; `fleetctl ota rollout` through the API and through the store giving the same answers."""

from __future__ import annotations

import aiohttp

from fleet.api.server import ApiServer
from fleet.ota.jobs import Jobs
from fleet.store import Store
from fleet.tokens import TokenStore
from tests.test_fleet_api import call, fill, http, store  # noqa: F401  (fixtures)

REQ = {"version": "2.0.0", "url": "http://127.0.0.1:9/v2.tar", "sha256": "ab" * 32, "size": 1000}


async def test_create_halt_resume_roles_and_errors(store: Store, http: aiohttp.ClientSession) -> None:  # noqa: F811
    fill(store)
    tokens = TokenStore(store.engine, store.prefix)
    viewer = tokens.create("viewer")[1]
    operator = tokens.create("operator", "ops")[1]
    api = ApiServer(store, "127.0.0.1", 0, require_token=True)
    await api.start()
    base = api.url + "/api/v1/rollouts"
    try:
        body = {**REQ, "group": "b", "policy": {"canary": 1, "batch_size": 2}, "gate": {"soak_s": 60}}
        st, err = await call(http, "POST", base, viewer, json=body)
        assert st == 403 and err["error"]["code"] == "forbidden"
        assert (await call(http, "POST", base, json=body))[0] == 401
        st, ro = await call(http, "POST", base, operator, json=body)
        assert st == 201, ro
        rid = ro["id"]
        assert (
            ro["status"] == "running"
            and ro["version"] == "2.0.0"
            and ro["devices"]
            == [
                {"id": d, "state": "pending", "phase": "", "percent": None, "reason": "", "wave": -1}
                | {"dispatches": 0, "rollback": ""}
                for d in ("cam-08", "cam-09", "cam-10", "cam-11", "spk-99")
            ]
        )
        job = Jobs(store).get(rid)  # the store holds what the API answered
        assert job.rollout.policy.batch_size == 2 and job.gate.soak_s == 60
        assert job.params == {"url": REQ["url"], "sha256": REQ["sha256"], "size": 1000}
        st, listed = await call(http, "GET", base, viewer)
        assert [r["id"] for r in listed["rollouts"]] == [rid]

        for bad, what in (
            ({**REQ, "group": "b", "policy": {"canary": -1}}, "canary"),
            ({**REQ, "group": "b", "policy": {"canary": 1.5}}, "integer"),
            ({**REQ, "group": "b", "policy": {"speed": 3}}, "unknown field"),
            ({**REQ, "group": "b", "gate": {"soak_s": "long"}}, "number"),
            ({**REQ, "group": "b", "devices": ["cam-00"]}, "not both"),
            ({**REQ, "devices": ["cam-00", "cam-00"]}, "duplicate"),
            ({**REQ, "size": "big", "group": "b"}, "size"),
            ({k: v for k, v in REQ.items() if k != "sha256"} | {"group": "b"}, "sha256"),
            (REQ, "give devices"),
        ):
            st, err = await call(http, "POST", base, operator, json=bad)
            assert st == 400 and err["error"]["code"] == "bad_request" and what in err["error"]["message"], (
                bad,
                err,
            )
        st, err = await call(http, "POST", base, operator, data=b"[1]")
        assert st == 400
        st, err = await call(http, "POST", base, operator, json={**REQ, "group": "nobody"})
        assert st == 422 and err["error"]["code"] == "no_devices"
        assert "no devices to update" in err["error"]["message"] and "nobody" in err["error"]["message"]

        assert (await call(http, "POST", f"{base}/{rid}/halt", viewer))[0] == 403
        st, ro = await call(http, "POST", f"{base}/{rid}/halt", operator, json={"reason": "night freeze"})
        assert st == 200 and ro["status"] == "halted" and ro["reason"] == "night freeze"
        assert ro["counts"] == {"skipped": 5} and {d["state"] for d in ro["devices"]} == {"skipped"}
        st, err = await call(http, "POST", f"{base}/{rid}/halt", operator)
        assert st == 409 and err["error"]["code"] == "not_running" and "halted" in err["error"]["message"]
        st, ro = await call(http, "POST", f"{base}/{rid}/resume", operator)
        assert st == 200 and ro["status"] == "running" and ro["counts"] == {"pending": 5}
        st, err = await call(http, "POST", f"{base}/{rid}/resume", operator)
        assert st == 409 and err["error"]["code"] == "not_halted"
        st, err = await call(http, "POST", f"{base}/nope/halt", operator)
        assert st == 404 and "no rollout 'nope'" in err["error"]["message"]
        assert Jobs(store).get(rid).status == "running"
    finally:
        await api.stop()
