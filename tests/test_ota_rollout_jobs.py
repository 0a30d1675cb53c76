"""Rollout jobs driven by the fleet service: real mosquitto, real FleetService workers, simulated
devices answering ``ota.install`` / ``ota.rollback`` with events, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fleet.ota.jobs import GatePolicy, Jobs
from fleet.ota.rollout import Policy
from fleet.service import FleetService
from fleet.sim_ota import SimOtaOptions
from fleet.simulate import Simulation
from fleet.store import Incoming, Store
from tests.support.mosquitto import Mosquitto
from tests.test_fleet_store import PG, PG_URL

SHA = "ab" * 32
FAST = {"poll_s": 0.2, "lease_s": 2.0, "command_timeout_s": 10.0}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path):
    """(url, prefix) of an empty fleet store."""
    if request.param == "sqlite":
        yield str(tmp_path / "fleet.db"), ""
        return
    if not PG:
        pytest.skip(f"no PostgreSQL at {PG_URL}")
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    yield PG_URL, prefix
    s = Store(PG_URL, prefix=prefix)
    Jobs(s)
    s.drop_all()
    s.close()


async def _until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(cond):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def _fleet(
    mosquitto: Mosquitto,
    tmp_path: Path,
    url: str,
    prefix: str,
    n: int,
    faults_after: frozenset[str] = frozenset(),
    install_s: float = 0.8,
):
    store = Store(url, prefix=prefix)
    sim = Simulation(
        mosquitto.url,
        n,
        tmp_path / "sim",
        interval_s=0.5,
        reconnect_min_s=0.2,
        ota=SimOtaOptions(install_s=install_s, versions={SHA: "2.0.0"}, faults_after=faults_after),
    )
    return store, sim


def _create(store: Store, devices: list[str], policy: Policy, gate: GatePolicy) -> tuple[Jobs, str]:
    jobs = Jobs(store)
    return jobs, jobs.create(
        "2.0.0", devices, {"url": "http://127.0.0.1:9/v2.tar", "sha256": SHA, "size": 1000}, policy, gate
    )


async def test_rollout_job_completes(db, tmp_path: Path, mosquitto: Mosquitto) -> None:
    url, prefix = db
    store, sim = await _fleet(mosquitto, tmp_path, url, prefix, 7)
    svc = FleetService(mosquitto.url, store, "w1", rule_interval_s=3600, rollout_options=FAST)
    await svc.start()
    await sim.start(spread_s=0)
    try:
        assert await sim.wait_connected(20) == 7
        await _until(lambda: len(store.list_devices("sim")) == 7, 20, "registration")
        devices = [d["device"] for d in store.list_devices("sim")]
        jobs, rid = _create(
            store, devices, Policy(canary=1, batch_size=3, in_progress_timeout_s=30), GatePolicy(soak_s=0.5)
        )
        await _until(lambda: jobs.get(rid).status != "running", 60, "the rollout to end")
        job = jobs.get(rid)
        assert job.status == "completed", job.summary()
        assert job.rollout.counts()["succeeded"] == 7
        assert job.rollout.waves == 3  # canary 1, then 3 and 3
        assert [o.installs for o in sim.otas] == [1] * 7
        assert set(job.dispatches.values()) == {1}
        assert all(o.sensors.version == "2.0.0" for o in sim.otas)
        assert job.last_gate.get("passed") is True
        assert jobs.list() == [job.summary()]
    finally:
        await sim.stop()
        await svc.stop()
        store.close()


@pytest.mark.parametrize("when", ["installing", "claimed"])
async def test_worker_dies_mid_wave_and_another_takes_over_no_device_updated_twice(
    db, when: str, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Two real workers on one store: the lease holder dies with a wave in flight; the other takes
    the expired lease and never sends an install again. ``installing``: the wave's devices are
    installing, the heir follows their events and completes. ``claimed``: the worker died between
    committing the claim and sending the commands: those devices time out, they are not re-sent."""
    url, prefix = db
    store_a, sim = await _fleet(mosquitto, tmp_path, url, prefix, 9, install_s=2.0)
    store_b = Store(url, prefix=prefix)
    a = FleetService(
        mosquitto.url,
        store_a,
        "a",
        rule_interval_s=3600,
        rollout_options={**FAST, "send_delay_s": 0.0 if when == "installing" else 1.0},
    )
    b = FleetService(mosquitto.url, store_b, "b", rule_interval_s=3600, rollout_options=FAST)
    await a.start()
    await sim.start(spread_s=0)
    try:
        assert await sim.wait_connected(20) == 9
        await _until(lambda: len(store_a.list_devices("sim")) == 9, 20, "registration")
        devices = [d["device"] for d in store_a.list_devices("sim")]
        timeout = 30.0 if when == "installing" else 4.0
        jobs, rid = _create(
            store_a,
            devices,
            Policy(canary=1, batch_size=4, in_progress_timeout_s=timeout),
            GatePolicy(soak_s=0.2),
        )
        await _until(lambda: jobs.get(rid).owner.startswith("a:"), 10, "worker a to take the lease")
        await b.start()  # b sees the lease held and leaves the job alone

        def batch_in_flight() -> bool:
            r = jobs.get(rid).rollout
            prog = r.in_progress()
            return (
                r.waves >= 2
                and bool(prog)
                and (when == "claimed" or all(r.per_device[d].phase not in ("dispatched", "") for d in prog))
            )

        await _until(batch_in_flight, 30, "the first batch in flight")
        in_flight = jobs.get(rid).rollout.in_progress()
        dead_owner = jobs.get(rid).owner
        await a.rollouts.abandon()  # a's driver dies (its lease stays until it expires) ...
        await a.stop()  # ... and so does the rest of the worker
        # a restarts: its persistent session holds the events the broker queued for it meanwhile
        # (docs/protocol.md); whichever live worker takes the expired lease finishes the job
        a = FleetService(mosquitto.url, store_a, "a", rule_interval_s=3600, rollout_options=FAST)
        await a.start()
        await _until(lambda: jobs.get(rid).owner not in ("", dead_owner), 10, "another driver to take over")
        await _until(lambda: jobs.get(rid).status != "running", 60, "the rollout to end")
        job = jobs.get(rid)
        by_id = {ag.config.device.id: o for ag, o in zip(sim.agents, sim.otas, strict=True)}
        assert max(o.installs for o in sim.otas) == 1  # the devices' own count: nobody updated twice
        assert set(job.dispatches.values()) <= {0, 1}
        if when == "installing":
            assert job.status == "completed", {
                d: s for d, s in job.rollout.per_device.items() if s.state != "succeeded"
            }
            assert all(job.rollout.per_device[d].state == "succeeded" for d in in_flight)
            assert [o.installs for o in sim.otas] == [1] * 9
            assert a.rollouts.stats["installs_sent"] + b.rollouts.stats["installs_sent"] == 9 - 1 - len(
                in_flight
            )
        else:
            unsent = [d for d in in_flight if by_id[d].installs == 0]
            assert unsent, "the worker died after sending; nothing to prove"
            assert all(job.rollout.per_device[d].state == "timed_out" for d in unsent)
            # nothing re-sent
            assert a.rollouts.stats["installs_sent"] + b.rollouts.stats["installs_sent"] == 0
            assert job.status == "halted"
    finally:
        await sim.stop()
        await b.stop()
        await a.stop()
        store_a.close()
        store_b.close()


async def test_health_gate_halts_a_release_that_degrades_viewers_and_rolls_back(
    db, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The new version makes the canary's viewers lossy (18 fps, freezes): the gate compares it with
    the devices not yet updated over the soak window, halts the rollout and rolls the canary back."""
    url, prefix = db
    store, sim = await _fleet(mosquitto, tmp_path, url, prefix, 6, faults_after=frozenset({"lossy"}))
    svc = FleetService(mosquitto.url, store, "w1", rule_interval_s=3600, rollout_options=FAST)
    await svc.start()
    await sim.start(spread_s=0)
    try:
        assert await sim.wait_connected(20) == 6
        await _until(lambda: len(store.list_devices("sim")) == 6, 20, "registration")
        devices = [d["device"] for d in store.list_devices("sim")]
        jobs, rid = _create(
            store, devices, Policy(canary=2, batch_size=2, in_progress_timeout_s=30), GatePolicy(soak_s=3.0)
        )
        await _until(lambda: jobs.get(rid).status == "halted", 60, "the gate to halt the rollout")
        job = jobs.get(rid)
        assert "health gate" in job.rollout.reason and "rendered_fps" in job.rollout.reason, (
            job.rollout.reason
        )
        canaries = [d for d in devices if job.rollout.per_device[d].wave == 0]
        assert len(canaries) == 2
        assert all(job.rollback.get(d) == "done" for d in canaries)
        by_id = {a.config.device.id: o for a, o in zip(sim.agents, sim.otas, strict=True)}
        assert all(by_id[d].rollbacks == 1 and by_id[d].installs == 1 for d in canaries)
        rest = [d for d in devices if d not in canaries]
        assert all(job.rollout.per_device[d].state == "skipped" and by_id[d].installs == 0 for d in rest)
        gate = job.last_gate
        assert (
            gate["passed"] is False and gate["updated"]["devices"] == 2 and gate["baseline"]["devices"] == 4
        )
        assert gate["updated"]["rendered_fps"] < 20 < gate["baseline"]["rendered_fps"]
        # the list's summaries are counted in SQL: the same as a loaded job's
        assert jobs.list() == [job.summary()] and jobs.list(active_only=True) == []
    finally:
        await sim.stop()
        await svc.stop()
        store.close()


def _cli(*argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_cli_creates_the_job_in_the_store_named_by_fleet_db_and_halts_resumes_lists(tmp_path: Path) -> None:
    """`fleetctl ota rollout --group G` reads FLEET_DB (it used to open ./fleet.db: "no devices to
    update"), creates a job the service drives, and rollouts / rollout-halt / rollout-resume work on it."""
    from ota import bundle as bundle_mod
    from tests.support.ota_harness import probe_wheel

    db_path = tmp_path / "elsewhere" / "fleet.db"
    db_path.parent.mkdir()
    store = Store(str(db_path))
    store.ingest(
        [
            Incoming(
                "status", f"cam-{i}", json.dumps({"online": True, "group": "lobby"}).encode(), time.time()
            )
            for i in range(3)
        ]
    )
    store.close()
    wh = tmp_path / "wh"
    wh.mkdir()
    w = probe_wheel("2.0.0")
    (wh / w.name).write_bytes(w.read_bytes())
    bundle = tmp_path / "v2.tar"
    bundle_mod.build(bundle, "2.0.0", wh, ["generic"])
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "FLEET_DB": str(db_path), "FLEET_MQTT_URL": "mqtt://127.0.0.1:9"}
    r = _cli(
        "ota",
        "rollout",
        str(bundle),
        "--url",
        "http://127.0.0.1:8081/v2.tar",
        "--group",
        "lobby",
        "--canary",
        "1",
        "--batch-size",
        "2",
        "--soak",
        "60",
        env=env,
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    rid = r.stdout.split()[1].rstrip(":")
    assert not (work / "fleet.db").exists()
    store = Store(str(db_path))
    job = Jobs(store).get(rid)
    assert job.status == "running" and sorted(job.rollout.devices) == ["cam-0", "cam-1", "cam-2"]
    assert job.gate.soak_s == 60 and job.rollout.policy.batch_size == 2
    store.close()
    r = _cli("ota", "rollouts", env=env, cwd=work)
    assert r.returncode == 0 and rid in r.stdout and "running" in r.stdout and "0/3" in r.stdout, r.stdout
    r = _cli("ota", "rollout-halt", rid, env=env, cwd=work)
    assert r.returncode == 0 and "halted" in r.stdout, r.stderr
    assert "skipped 3" in _cli("ota", "rollouts", env=env, cwd=work).stdout
    r = _cli("ota", "rollout-status", rid, "--follow", env=env, cwd=work)
    assert r.returncode == 1 and "halted" in r.stdout  # follows until the end: halted already
    assert _cli("ota", "rollout-halt", rid, env=env, cwd=work).returncode == 1  # not running: refused
    r = _cli("ota", "rollout-resume", rid, env=env, cwd=work)
    assert r.returncode == 0 and "running" in r.stdout and "pending 3" in r.stdout, r.stdout
    r = _cli("ota", "rollout-status", "nope", env=env, cwd=work)
    assert r.returncode == 4 and "no rollout 'nope'" in r.stderr and "Traceback" not in r.stderr  # not found
    r = _cli("ota", "rollout", str(bundle), "--url", "http://x/v2.tar", "--group", "empty", env=env, cwd=work)
    assert r.returncode == 1 and "no devices to update" in r.stderr


def test_lease_is_exclusive_renewed_and_taken_over_after_expiry(db) -> None:
    """The conditional UPDATE on two stores (two workers' engines): one holder at a time; the holder
    renews; another takes it only once it expired; a halted job is nobody's."""
    url, prefix = db
    s1, s2 = Store(url, prefix=prefix), Store(url, prefix=prefix)
    try:
        j1, j2 = Jobs(s1), Jobs(s2)
        rid = j1.create("2.0.0", ["a", "b"], {}, Policy(), GatePolicy(), now=100.0)

        def take(jobs: Jobs, owner: str, now: float) -> bool:
            with jobs.engine.begin() as conn:
                return jobs.take_lease(conn, rid, owner, now, 10.0)

        assert take(j1, "w1", 100.0)
        assert not take(j2, "w2", 105.0)  # held
        assert take(j1, "w1", 109.0)  # renewed: until 119
        assert not take(j2, "w2", 115.0)
        assert take(j2, "w2", 119.5)  # expired: taken over
        assert not take(j1, "w1", 120.0)  # the old holder lost it
        assert j1.get(rid).owner == "w2"
        j1.halt(rid)
        assert not take(j2, "w2", 121.0) and rid not in j2.driven_ids()
    finally:
        s1.close()
        s2.close()


def test_gate_compare_thresholds() -> None:
    from fleet.ota.health_gate import GroupFigures, compare, sample_figures

    gate = GatePolicy()
    base = GroupFigures(
        devices=10,
        alerts_per_device=0.1,
        crashloop_share=0.0,
        freeze_rate=0.5,
        rendered_fps=29.8,
        ns_rtf=0.18,
    )
    assert compare(base, base, gate) == []
    assert compare(GroupFigures(devices=2, rendered_fps=20.0), base, gate)[0].startswith("rendered_fps")
    assert compare(GroupFigures(devices=2, freeze_rate=3.0), base, gate)[0].startswith("freeze_rate")
    assert compare(GroupFigures(devices=2, alerts_per_device=1.0), base, gate)[0].startswith(
        "alerts_per_device"
    )
    assert compare(GroupFigures(devices=2, crashloop_share=0.5), base, gate)[0].startswith("crashloop_share")
    assert compare(GroupFigures(devices=2, ns_rtf=0.4), base, gate)[0].startswith("ns_rtf")
    # no baseline: passes
    assert compare(GroupFigures(devices=2, rendered_fps=1.0), GroupFigures(), gate) == []
    assert compare(GroupFigures(devices=2, rendered_fps=None), base, gate) == []  # missing figure: skipped
    f = sample_figures(
        {
            "agent": {"starts_10min": 4},
            "media": {
                "viewers": {
                    "sessions": [
                        {"qoe": {"freeze_rate": 10.0, "rendered_fps": 20.0}},
                        {"qoe": None},
                        {"qoe": {"freeze_rate": 0.0, "rendered_fps": 30.0}},
                    ]
                },
                "audio": {"stage": {"rtf": 0.2}},
            },
        }
    )
    assert f == {"crashloop": True, "freeze_rate": 5.0, "rendered_fps": 25.0, "ns_rtf": 0.2}
    assert sample_figures({}) == {
        "crashloop": False,
        "freeze_rate": None,
        "rendered_fps": None,
        "ns_rtf": None,
    }


async def test_three_service_processes_one_driver_survives_sigkill_and_restart_mid_wave(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Three real `fleetctl serve` processes on one store, all running the driver: the job has one
    owner at a time (its lease) and the others leave it alone; the owner is SIGKILLed with a wave
    installing and started again, another process takes the expired lease, and the job completes
    with every device updated exactly once (the devices' own count: three competing drivers or a
    re-sent claim would show as 2)."""
    db = str(tmp_path / "fleet.db")
    logs = tmp_path / "logs"
    logs.mkdir()

    def serve(wid: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "fleet.cli", "serve", "--mqtt", mosquitto.url, "--db", db]
        cmd += ["--worker-id", wid, "--rollout-lease", "2"]
        return subprocess.Popen(
            cmd,
            cwd=Path(__file__).resolve().parents[1],
            stdout=open(logs / f"{wid}.log", "ab"),
            stderr=subprocess.STDOUT,
        )

    workers = {w: serve(w) for w in ("w0", "w1", "w2")}
    store, sim = await _fleet(mosquitto, tmp_path, db, "", 7, install_s=1.5)
    try:
        await sim.start(spread_s=0)
        assert await sim.wait_connected(30) == 7
        await _until(lambda: len(store.list_devices("sim")) == 7, 30, "registration")
        devices = [d["device"] for d in store.list_devices("sim")]
        jobs, rid = _create(
            store, devices, Policy(canary=1, batch_size=3, in_progress_timeout_s=60), GatePolicy(soak_s=0.2)
        )
        owners: list[str] = []
        killed = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            job = await asyncio.to_thread(jobs.get, rid)
            if job.owner:
                owners.append(job.owner)
            if job.status == "completed":
                break
            r = job.rollout
            prog = r.in_progress()
            if (
                not killed
                and r.waves >= 2
                and prog
                and all(r.per_device[d].phase not in ("", "dispatched") for d in prog)
            ):
                killed = job.owner.split(":")[0]
                workers[killed].kill()  # SIGKILL: no lease given back, no goodbye
                workers[killed].wait()
                workers[killed] = serve(killed)  # the service restarted (same worker id)
            await asyncio.sleep(0.1)
        job = jobs.get(rid)
        assert job.status == "completed", job.summary()
        assert killed, "the rollout ended before a wave could be caught installing"
        # another process took the lease: one of the other workers, or the killed one restarted (a new
        # owner id under the same worker id; CI saw the restarted w1 win the expired lease)
        assert len(set(owners)) >= 2 and all(o.split(":")[0] in workers for o in owners), owners
        # one owner at a time, and never back to the dead process's owner id once it was gone
        dead = next(o for o in owners if o.startswith(killed + ":"))
        after = owners[len(owners) - owners[::-1].index(dead) :]
        assert after and dead not in after
        assert [o.installs for o in sim.otas] == [1] * 7  # nobody updated twice, nobody missed
        assert set(job.dispatches.values()) == {1}
    finally:
        await sim.stop()
        for p in workers.values():
            p.terminate()
        for p in workers.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        store.close()
