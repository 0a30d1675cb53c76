"""Rollouts over the fleet API: POST /api/v1/rollouts, halt, resume (roles, errors), on SQLite and
PostgreSQL; `fleetctl ota rollout` through the API and through the store giving the same answers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from fleet.api.server import ApiServer
from fleet.ota.jobs import Jobs
from fleet.store import Store
from fleet.tokens import TokenStore
from tests.support.mosquitto import Mosquitto, free_port
from tests.test_fleet_api import ROOT, call, fill, http, store  # noqa: F401  (fixtures)
from tests.test_fleet_store import status

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


def _bundle(tmp_path: Path) -> Path:
    from ota import bundle as bundle_mod
    from tests.support.ota_harness import probe_wheel

    wh = tmp_path / "wh"
    wh.mkdir()
    w = probe_wheel("2.0.0")
    (wh / w.name).write_bytes(w.read_bytes())
    out = tmp_path / "v2.tar"
    bundle_mod.build(out, "2.0.0", wh, ["generic"])
    return out


async def _fleetctl(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet.cli",
        *argv,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _fleetctl_here(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """fleetctl's main() in this process (a thread of the test), with ``env`` as the whole FLEET_*
    environment: the many-step transcript without a 1-3 s interpreter start per step."""
    from fleet.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: v for k, v in os.environ.items() if k.startswith("FLEET_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


async def test_cli_gives_the_same_answers_through_the_api_and_the_store(tmp_path: Path) -> None:
    """The same `fleetctl ota rollout|rollouts|rollout-halt|rollout-resume|rollout-status` session,
    once with FLEET_DB (the store) and once with FLEET_API_URL + FLEET_API_TOKEN (the API over that
    store): identical output and exit codes once the rollout ids are masked. Then, as real
    processes: the API chosen from the environment, a viewer token, no token, no API."""
    db, api_db = tmp_path / "fleet.db", tmp_path / "api.db"  # two equal stores, one per way
    stores = [Store(str(db)), Store(str(api_db))]
    for st in stores:
        st.ingest([status(f"cam-{i}", True, group="lobby") for i in range(3)])
    fstore = stores[1]
    tokens = TokenStore(fstore.engine)
    operator, viewer = tokens.create("operator")[1], tokens.create("viewer")[1]
    bundle = _bundle(tmp_path)
    api = ApiServer(fstore, "127.0.0.1", 0, require_token=True)
    await api.start()
    ways = {
        "store": {"FLEET_DB": str(db)},
        "api": {"FLEET_API_URL": api.url, "FLEET_API_TOKEN": operator, "FLEET_DB": "/nonexistent/x.db"},
    }
    rollout = ["ota", "rollout", str(bundle), "--url", "http://127.0.0.1:9/v2.tar", "--canary", "1"]
    transcripts: dict[str, list[tuple[int, str, str]]] = {}
    try:
        for way, env in ways.items():

            def cli(*argv: str, env: dict[str, str] = env) -> Any:
                return asyncio.to_thread(_fleetctl_here, list(argv), env)

            steps: list[tuple[int, str, str]] = []
            code, out, err = await cli(*rollout, "--group", "lobby", "--soak", "60")
            assert code == 0, err
            rid = out.split()[1].rstrip(":")
            for argv in (
                (*rollout, "--group", "lobby", "--soak", "60"),  # (the output of the call above)
                ("ota", "rollouts"),
                ("ota", "rollout-halt", rid),
                ("ota", "rollout-halt", rid),  # not running: refused, exit 1
                ("ota", "rollout-status", rid, "--follow"),  # halted: exit 1 at once
                ("ota", "rollout-resume", rid),
                ("ota", "rollout-status", rid),
                ("ota", "rollout-status", "nope"),
                (*rollout, "--group", "empty"),  # no devices: exit 1
                (*rollout, "--devices", "cam-0,cam-0"),  # duplicate: bad request, exit 2
                (*rollout, "--group", "lobby", "--canary", "-1"),
                ("ota", "rollout", str(bundle), "--url", "http://x/v2.tar"),  # no targets: exit 2
            ):
                if argv[1] != "rollout" or len(steps):
                    code, out, err = await cli(*argv)
                steps.append((code, out.replace(rid, "RID"), err.replace(rid, "RID")))
            code, out, err = await cli("ota", "rollout-status", rid, "--json")
            detail = json.loads(out)
            for k in ("id", "created", "updated"):
                detail.pop(k)
            steps.append((code, json.dumps(detail, sort_keys=True), err))
            transcripts[way] = steps
        assert transcripts["api"] == transcripts["store"]
        steps = transcripts["api"]
        assert [c for c, _, _ in steps] == [0, 0, 0, 1, 1, 0, 0, 4, 1, 2, 2, 2, 0], steps  # 4: not found
        assert "to 3 devices" in steps[0][1] and "halted" in steps[2][1] and "pending 3" in steps[5][1]
        assert "no rollout 'nope'" in steps[7][2] and "no devices to update" in steps[8][2]
        assert all("Traceback" not in e and e.count("\n") <= 1 for _, _, e in steps)
        assert [len(Jobs(st).list()) for st in stores] == [1, 1]  # the refused requests created nothing

        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")} | ways["api"]
        code, out, err = await _fleetctl("ota", "rollouts", env=env)
        assert code == 0 and out.count(" running ") == 1, (out, err)  # the API, from the environment
        code, _, err = await _fleetctl(*rollout, "--group", "lobby", env={**env, "FLEET_API_TOKEN": viewer})
        assert code == 2 and "needs the operator role" in err, err
        code, _, err = await _fleetctl("ota", "rollouts", env={**env, "FLEET_API_TOKEN": ""})
        assert code == 2 and "bearer token is required" in err, err
        code, _, err = await _fleetctl("ota", "rollouts", "--api", f"http://127.0.0.1:{free_port()}", env=env)
        assert code == 3 and "cannot reach the fleet API" in err and "Traceback" not in err, err
    finally:
        await api.stop()
        for st in stores:
            st.close()


async def test_rollout_follow_through_a_real_service_draws_a_progress_bar(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """`fleetctl serve --http` (a real worker process) drives the job that `fleetctl ota rollout
    --follow` created through its API, for simulated devices answering ota.install over MQTT; on a
    terminal (a pty) the bar is redrawn in place until `completed`, exit 0."""
    from fleet.sim_ota import SimOtaOptions
    from fleet.simulate import Simulation

    db = tmp_path / "fleet.db"
    bundle = _bundle(tmp_path)
    from fleet.ota.rollout_cli import bundle_facts

    sha = bundle_facts(bundle)[1]
    port = free_port()
    serve = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet.cli",
        "serve",
        "--mqtt",
        mosquitto.url,
        "--db",
        str(db),
        "--http",
        f"127.0.0.1:{port}",
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sim = Simulation(
        mosquitto.url,
        4,
        tmp_path / "sim",
        interval_s=0.5,
        reconnect_min_s=0.2,
        ota=SimOtaOptions(install_s=0.5, versions={sha: "2.0.0"}),
    )
    api_url = f"http://127.0.0.1:{port}"
    try:
        await sim.start(spread_s=0)
        assert await sim.wait_connected(20) == 4
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    st, body = await call(http, "GET", f"{api_url}/api/v1/devices?group=sim")
                    if body["total"] == 4:
                        break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the service never registered the 4 devices"
                await asyncio.sleep(0.3)
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        env |= {"FLEET_API_URL": api_url, "FLEET_DB": "/nonexistent/fleet.db"}
        cmd = [*("ota", "rollout", str(bundle), "--url", "http://127.0.0.1:9/v2.tar", "--group", "sim")]
        cmd += ["--canary", "1", "--batch-size", "3", "--soak", "0.5", "--timeout", "30", "--follow"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet.cli", *cmd, env=env, cwd=ROOT, stdout=slave, stderr=subprocess.PIPE
        )
        os.close(slave)
        chunks: list[bytes] = []

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the other side closed
                    return
                if not data:
                    return
                chunks.append(data)

        reader = asyncio.get_running_loop().run_in_executor(None, drain)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await asyncio.wait_for(reader, 10)
        os.close(master)
        text = b"".join(chunks).decode(errors="replace")
        assert proc.returncode == 0, (text, err.decode())
        redraws = text.count("\r\x1b[K")
        last = text.rsplit("\r\x1b[K", 1)[-1]
        assert redraws >= 3 and "completed" in last and "4/4" in last and "succeeded 4" in last, text
        assert "\n" not in text.split("\r\x1b[K", 1)[1].rstrip("\r\n")  # one line, redrawn in place
        assert [o.installs for o in sim.otas] == [1] * 4
    finally:
        await sim.stop()
        serve.terminate()
        await asyncio.wait_for(serve.communicate(), 30)
