"""The rollout driver a fleet worker runs (``fleetctl serve``): drives the jobs whose lease it holds.

Every ``poll_s`` it lists the driven jobs (fleet/ota/jobs.py) and runs one step of each in one
transaction that first takes or renews the job's lease; a job another live worker holds is left
alone. A step reads the OTA events the service ingested for the devices in progress (no MQTT
subscription of its own), applies them to the planner (fleet/ota/rollout.py), times out silent
devices, soaks and gates each finished wave (fleet/ota/health_gate.py), and claims the next wave:
the claimed devices are committed as ``in_progress`` with a dispatch id *before* their
``ota.install`` is sent. A worker that dies after the commit leaves those devices in progress; the
next lease holder never sends them again, it waits for their events or their timeout. Commands
go out on the driver's own MQTT connection (``fleet.client.FleetClient``), opened when first needed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.client import CommandFailed, FleetClient
from fleet.ota import health_gate
from fleet.ota.jobs import JobNotFound, Jobs
from fleet.store import Store

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    held: bool
    status: str = ""
    installs: list[tuple[str, str]] = field(default_factory=list)  # (device, dispatch id)
    rollbacks: list[str] = field(default_factory=list)


class RolloutDriver:
    """Drives rollout jobs; ``await start()``, ``await stop()`` (``abandon()``: a crash, for tests)."""

    def __init__(
        self,
        store: Store,
        mqtt_url: str,
        worker_id: str = "1",
        *,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        username: str = "",
        password: str = "",
        tls_insecure: bool = False,
        lease_s: float = 15.0,
        poll_s: float = 0.5,
        command_timeout_s: float = 30.0,
        rollback_timeout_s: float = 600.0,
        send_delay_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.owner = f"{worker_id}:{uuid.uuid4().hex[:8]}"  # unique per process, even for a reused worker id
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.command_timeout_s = command_timeout_s
        self.rollback_timeout_s = rollback_timeout_s
        self.send_delay_s = send_delay_s  # between committing a claim and sending it (tests of a crash there)
        self.clock = clock
        self._client_opts: dict[str, Any] = {
            "ca_file": ca_file,
            "cert_file": cert_file,
            "key_file": key_file,
            "username": username,
            "password": password,
            "tls_insecure": tls_insecure,
            "client_id": f"fleet-rollout-{worker_id}-{uuid.uuid4().hex[:6]}",
        }
        self.mqtt_url = mqtt_url
        self.jobs: Jobs | None = None
        self._client: FleetClient | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fleet-rollout")
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[Any]] = set()
        self._held: set[str] = set()
        self._dead = False
        self.stats = {"steps": 0, "installs_sent": 0, "rollbacks_sent": 0, "command_failures": 0}

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        self.jobs = await self._db(Jobs, self.store)
        self._task = asyncio.create_task(self._loop(), name="fleet-rollouts")

    async def stop(self) -> None:
        """Stop driving and give the leases back (another worker takes over at once)."""
        if self._dead:
            return
        await self._cancel()
        for rid in list(self._held):
            try:
                await self._db(self.jobs.release, rid, self.owner)  # type: ignore[union-attr]
            except Exception:
                log.exception("rollout %s: cannot release the lease", rid)
        await self._close()

    async def abandon(self) -> None:
        """Stop as if the process died: leases stay until they expire."""
        if self._dead:
            return
        await self._cancel()
        await self._close()

    async def _cancel(self) -> None:
        tasks = [t for t in (self._task, *self._sends) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close(self) -> None:
        self._dead = True
        if self._client is not None:
            await self._client.close()
            self._client = None
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rollout driver step failed")
            await asyncio.sleep(self.poll_s)

    async def tick(self) -> None:
        """One step of every driven job (the loop calls it every ``poll_s``)."""
        for rid in await self._db(self.jobs.driven_ids):  # type: ignore[union-attr]
            res: StepResult = await self._db(self.step, rid)
            self.stats["steps"] += res.held
            if not res.held:
                self._held.discard(rid)
                continue
            self._held.add(rid)
            if res.installs or res.rollbacks:
                client = await self._connect()
                params = (await self._db(self.jobs.get, rid)).params  # type: ignore[union-attr]
                for dev, did in res.installs:
                    self._spawn(self._install(client, rid, dev, did, params))
                for dev in res.rollbacks:
                    self._spawn(self._rollback(client, rid, dev))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _connect(self) -> FleetClient:
        if self._client is None:
            self._client = await FleetClient(self.mqtt_url, **self._client_opts).connect(30.0)
        return self._client

    async def _install(
        self, client: FleetClient, rid: str, dev: str, did: str, params: dict[str, Any]
    ) -> None:
        if self.send_delay_s:
            await asyncio.sleep(self.send_delay_s)
        self.stats["installs_sent"] += 1
        try:
            await client.send_command(dev, "ota.install", params, timeout=self.command_timeout_s)
        except CommandFailed as exc:
            self.stats["command_failures"] += 1
            await self._db(self.record_install_failure, rid, dev, did, f"{exc.code}: {exc.message}")

    async def _rollback(self, client: FleetClient, rid: str, dev: str) -> None:
        self.stats["rollbacks_sent"] += 1
        try:
            await client.send_command(
                dev, "ota.rollback", {"reason": "rollout health gate"}, timeout=self.command_timeout_s
            )
        except CommandFailed as exc:
            self.stats["command_failures"] += 1
            await self._db(self.record_rollback_failure, rid, dev, f"{exc.code}: {exc.message}")

    # ---- synchronous steps (driver thread) -------------------------------------------------
    def step(self, rid: str) -> StepResult:
        """One transaction: lease, events, timeouts, gate, next wave. Only the lease holder writes."""
        jobs = self.jobs
        assert jobs is not None
        now = self.clock()
        with jobs.engine.begin() as conn:
            if not jobs.take_lease(conn, rid, self.owner, now, self.lease_s):
                return StepResult(False)
            try:
                job = jobs.get(rid, conn)
            except JobNotFound:
                return StepResult(False)
            before = copy.deepcopy(job)
            out = StepResult(True)
            r = job.rollout
            if job.status == "running":
                inprog = {d: r.per_device[d].started or 0.0 for d in r.in_progress()}
                for dev, ev in jobs.ota_events(conn, inprog):
                    r.report(
                        dev,
                        str(ev.get("phase", "")),
                        now,
                        version=ev.get("version"),
                        reason=str(ev.get("reason") or ev.get("code") or ""),
                        percent=_pct(ev.get("percent")),
                    )
                r.tick(now)
                if not r.finished and not r.in_progress() and r.waves > job.gated_waves:
                    self._soak_and_gate(conn, job, now, out)
                if job.status == "running" and not r.finished and r.waves == job.gated_waves:
                    for dev in r.next_wave(now):
                        did = uuid.uuid4().hex[:16]
                        job.dispatches[dev] = job.dispatches.get(dev, 0) + 1
                        job.dispatch_ids[dev] = did
                        out.installs.append((dev, did))
                if job.status == "running" and r.finished:
                    job.status = r.status
            elif job.status == "rolling_back":
                sent = jobs.rollback_started(conn, rid)
                for dev, ev in jobs.ota_events(conn, sent):
                    phase = ev.get("phase")
                    if job.rollback.get(dev) == "sent" and phase in ("rolled_back", "failed"):
                        job.rollback[dev] = "done" if phase == "rolled_back" else "failed"
                for dev, at in sent.items():
                    if job.rollback.get(dev) == "sent" and now - at > self.rollback_timeout_s:
                        job.rollback[dev] = "failed"
                if not any(v == "sent" for v in job.rollback.values()):
                    job.status = "halted"
            jobs.save(conn, job, before, now)
            out.status = job.status
            return out

    def _soak_and_gate(self, conn: Any, job: Any, now: float, out: StepResult) -> None:
        r, gate = job.rollout, job.gate
        if job.soak_until is None:
            job.soak_start, job.soak_until = now, now + gate.soak_s
        if now < job.soak_until:
            return
        updated = [d for d in r.devices if r.per_device[d].state == "succeeded" and not job.rollback.get(d)]
        baseline = [d for d in r.devices if r.per_device[d].state == "pending"]
        verdict = health_gate.evaluate(
            self.store, conn, updated, baseline, job.soak_start, job.soak_until, gate
        )
        job.last_gate = {"wave": r.waves - 1, **verdict}
        job.soak_start = job.soak_until = None
        if verdict["passed"]:
            job.gated_waves = r.waves
            return
        r.halt("health gate: " + "; ".join(verdict["regressions"]))
        for dev in updated:
            job.rollback[dev] = "sent"
            out.rollbacks.append(dev)
        job.status = "rolling_back" if updated else "halted"

    def record_install_failure(self, rid: str, dev: str, did: str, reason: str) -> None:
        self._locked_update(
            rid,
            lambda job, now: (
                job.dispatch_ids.get(dev) == did and job.rollout.dispatch_failed(dev, reason, now)
            ),
        )

    def record_rollback_failure(self, rid: str, dev: str, reason: str) -> None:
        def change(job: Any, now: float) -> None:
            if job.rollback.get(dev) == "sent":
                job.rollback[dev] = "failed"
                log.warning("rollout %s: rollback of %s failed: %s", rid, dev, reason)

        self._locked_update(rid, change)

    def _locked_update(self, rid: str, change: Callable[[Any, float], Any]) -> None:
        jobs = self.jobs
        assert jobs is not None
        now = self.clock()
        with jobs.engine.begin() as conn:
            if not jobs.take_lease(conn, rid, self.owner, now, self.lease_s):
                return  # the new lease holder sees the device time out instead
            job = jobs.get(rid, conn)
            before = copy.deepcopy(job)
            change(job, now)
            if job.status == "running" and job.rollout.finished:
                job.status = job.rollout.status
            jobs.save(conn, job, before, now)


def _pct(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
