"""The agent's OTA component: device commands, progress events, the trial after a switch.

It binds the ``ota`` library (which imports nothing of the agent) to the agent, through
``OtaHost``: exactly what it uses of ``device_agent.agent.Agent``. State changes go through
``ota.state``'s transitions.

Commands (on ``agent.commands``):

- ``ota.install`` ``{"url", "sha256", "size"}`` or ``{"path"}``: accepted at once, runs in the
  background; a second request while one is in flight is refused (``busy``).
- ``ota.status``: slots, versions, the update in flight and the last result.
- ``ota.rollback`` ``{"reason"?, "force"?}``: ends a trial with a rollback, or goes back to the
  older version in the other slot (``force``: whatever its version).

Every step is an ``ota`` event (``phase``, ``bytes``, ``percent``, ``eta_s``), as are trial
results, commits and rollbacks with their reason; the fleet link delivers them. After a switch or
a rollback the component asks the process to exit with ``RESTART_EXIT_CODE`` so systemd restarts
it (``Restart=on-failure``) through the boot check into the right slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from device_agent.agent import RESTART_EXIT_CODE  # 75, EX_TEMPFAIL: "restart me"
from device_agent.config import AgentConfig
from device_agent.params import Param
from device_agent.protocol import ErrorCode
from device_agent.registry import CommandError, CommandRegistry, EventBus, HealthRegistry
from ota import state as sm
from ota import trial as trial_mod
from ota.bundle import parse_version
from ota.download import download
from ota.errors import OtaError
from ota.installer import Installer, InstallOptions
from ota.layout import SLOTS, Layout, lock_holder
from ota.state import OtaState, Update

log = logging.getLogger(__name__)


# the OTA commands' parameters (also the fleet simulator's, which answers the same commands)
INSTALL_PARAMS = (
    Param("url", "string", max_len=4096),
    Param("path", "string", max_len=4096),
    Param("sha256", "string"),
    Param("size", "integer", low=1),
)
ROLLBACK_PARAMS = (Param("reason", "string", max_len=1024), Param("force", "boolean"))


class OtaHost(Protocol):
    """Exactly what the OTA component uses of the agent (``device_agent.agent.Agent`` is one)."""

    config: AgentConfig
    commands: CommandRegistry
    health: HealthRegistry
    events: EventBus
    restart_requested: bool

    def healthy(self) -> bool: ...

    def request_restart(self) -> None: ...


def exit_code(agent: OtaHost) -> int:
    """What ``device-agent run`` should exit with once the agent stopped (75 after a switch)."""
    return RESTART_EXIT_CODE if agent.restart_requested else 0


class OtaComponent:
    """Plugs the OTA path into the agent; name ``ota``."""

    name = "ota"

    def __init__(
        self, agent: OtaHost, layout: Layout | None = None, options: InstallOptions | None = None
    ) -> None:
        cfg = agent.config
        self.agent = agent
        self.layout = layout or Layout(cfg.ota.root, cfg.device.state_dir)
        self.options = options or InstallOptions.from_config(cfg)
        self.healthy_s = cfg.ota.trial_healthy_s
        self.restart_requested = False
        self.trial_result: trial_mod.TrialOutcome | None = None
        self._task: asyncio.Task | None = None
        self._trial_task: asyncio.Task | None = None
        self._progress: dict[str, Any] = {}
        self._registered = False

    # -- component -------------------------------------------------------------------------
    async def start(self) -> None:
        if not self._registered:
            self.agent.commands.register("ota.install", self._cmd_install, params=INSTALL_PARAMS)
            self.agent.commands.register("ota.status", self._cmd_status)
            self.agent.commands.register("ota.rollback", self._cmd_rollback, params=ROLLBACK_PARAMS)
            self.agent.health.add("ota", self._health)
            self._registered = True
        try:
            self._report_last_result()
        except OSError as exc:  # a read-only or missing state dir must not stop the agent
            log.warning("ota: cannot update %s: %s", self.layout.state_path, exc)
        update = await asyncio.to_thread(trial_mod.pending_trial, self.layout)
        if update is not None:
            trial = trial_mod.Trial(
                self.layout, self.options, self._agent_healthy, self._emit, healthy_s=self.healthy_s
            )
            self._trial_task = asyncio.create_task(self._run_trial(trial, update), name="ota-trial")

    async def stop(self) -> None:
        for task in (self._trial_task, self._task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def healthy(self) -> bool:
        return True  # an update in flight is not a fault; its own failures roll back and report

    # -- internals ---------------------------------------------------------------------------
    def _agent_healthy(self) -> bool:
        return self.agent.healthy()  # every component; this one's ``healthy()`` is always True

    def _emit(self, kind: str, **fields: Any) -> None:
        self.agent.events.emit(kind, **fields)

    def _report_last_result(self) -> None:
        st = self.layout.load()
        last = st.last_result
        if last is not None and not last.reported:
            self._emit(
                "ota",
                phase=last.result.value,
                version=last.version,
                reason=last.reason,
                slot=self.layout.current_slot(),
                at=last.ts,
            )
            sm.mark_reported(self.layout, st)

    async def _run_trial(self, trial: trial_mod.Trial, update: Update) -> None:
        try:
            self.trial_result = await trial.run(update)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the boot check's start counting still ends a trial that cannot
            log.exception("ota trial failed")
            self._emit("ota", phase="failed", code="internal", reason=f"trial: {type(exc).__name__}: {exc}")
            return
        self._mark_reported()
        if self.trial_result is trial_mod.TrialOutcome.ROLLED_BACK:
            self._request_restart()

    def _mark_reported(self) -> None:
        sm.mark_reported(self.layout, self.layout.load())

    def _request_restart(self) -> None:
        self.restart_requested = True
        self.agent.request_restart()  # `run` then exits RESTART_EXIT_CODE

    def _health(self) -> dict[str, Any]:
        st = self.layout.load()
        slot = self.layout.current_slot()
        info = self.layout.slot_info(slot) if slot else None
        return {
            "slot": slot,
            "version": (info or {}).get("version"),
            "update": st.update.phase.value if st.update else None,
            **({"progress": self._progress} if self._progress else {}),
        }

    def busy(self) -> bool:
        return (self._task is not None and not self._task.done()) or lock_holder(self.layout) is not None

    # -- commands ----------------------------------------------------------------------------
    async def _cmd_install(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.busy():
            raise CommandError(ErrorCode.BUSY, "an update is already in flight")
        st = self.layout.load()
        if st.update is not None and st.in_flight():
            raise CommandError(ErrorCode.BUSY, f"version {st.update.version} is in {st.state.value}")
        url, path = params.get("url"), params.get("path")
        if bool(url) == bool(path):
            raise CommandError(ErrorCode.BAD_PARAMS, "give either url (with sha256 and size) or path")
        if url:
            sha, size = params.get("sha256"), params.get("size")
            if not isinstance(sha, str) or len(sha) != 64 or not isinstance(size, int) or size <= 0:
                raise CommandError(ErrorCode.BAD_PARAMS, "url needs sha256 (64 hex) and size (bytes > 0)")
            if not str(url).startswith(("http://", "https://")):
                raise CommandError(ErrorCode.BAD_PARAMS, "url must be http:// or https://")
        elif not isinstance(path, str):
            raise CommandError(ErrorCode.BAD_PARAMS, "path must be a string")
        elif not Path(path).is_file():
            raise CommandError(ErrorCode.NOT_FOUND, f"no bundle at {path}")
        self._task = asyncio.create_task(self._install(params), name="ota-install")
        return {"accepted": True}

    async def _install(self, params: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            if params.get("url"):
                bundle = self.layout.work_dir / "bundle.tar"
                self._emit("ota", phase="download", bytes=0, total=params["size"], percent=0.0)
                last = [0.0]

                def progress(done: int, total: int, eta: float | None) -> None:
                    now = time.monotonic()
                    self._progress = {"phase": "download", "bytes": done, "total": total}
                    if now - last[0] >= 1.0 or done == total:
                        last[0] = now
                        self._emit(
                            "ota",
                            phase="download",
                            bytes=done,
                            total=total,
                            percent=round(100.0 * done / total, 1),
                            eta_s=None if eta is None else round(eta, 1),
                        )

                cfg = self.agent.config.ota
                result_ = await download(
                    params["url"],
                    bundle,
                    params["size"],
                    params["sha256"],
                    rate_bps=cfg.download_rate_bps,
                    retries=cfg.download_retries,
                    reserve_bytes=cfg.free_space_reserve_bytes,
                    progress=progress,
                    ca_file=cfg.download_ca_file,
                )
                self._emit(
                    "ota",
                    phase="downloaded",
                    bytes=result_.bytes_fetched,
                    total=result_.size,
                    percent=100.0,
                    seconds=round(result_.seconds, 2),
                )
            else:
                bundle = Path(params["path"])
            loop = asyncio.get_running_loop()

            def on_step(name: str, info: dict[str, Any]) -> None:
                if name == "verify.progress":
                    done, total = info["bytes"], info["total"] or 1
                    self._progress = {"phase": "verify", "bytes": done, "total": total}
                    if done == total:
                        loop.call_soon_threadsafe(
                            lambda: self._emit("ota", phase="verify", bytes=done, total=total, percent=100.0)
                        )
                    return
                self._progress = {"phase": name}
                loop.call_soon_threadsafe(lambda: self._emit("ota", phase=name, **info))

            update = await asyncio.to_thread(Installer(self.layout, self.options, on_step).install, bundle)
            self._emit(
                "ota",
                phase="restarting",
                version=update.version,
                slot=update.target_slot,
                install_s=round(time.monotonic() - started, 2),
            )
            self._request_restart()
        except OtaError as exc:
            log.error("ota install failed: %s", exc)
            self._emit("ota", phase="failed", code=exc.code, reason=exc.message)
            self._mark_reported()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still be reported, not swallowed
            log.exception("ota install crashed")
            self._emit("ota", phase="failed", code="internal", reason=f"{type(exc).__name__}: {exc}")
        finally:
            self._progress = {}
            if params.get("url"):  # the verified payload now lives in the slot; never fill the disk
                (self.layout.work_dir / "bundle.tar").unlink(missing_ok=True)

    async def _cmd_status(self, params: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(status, self.layout, self.busy(), self._progress)

    async def _cmd_rollback(self, params: dict[str, Any]) -> dict[str, Any]:
        reason = str(params.get("reason") or "requested by the operator")
        if self.busy():
            raise CommandError(ErrorCode.BUSY, "an install is in flight; wait for it to finish")
        try:
            st = await asyncio.to_thread(
                manual_rollback, self.layout, self.options, reason, bool(params.get("force", False))
            )
        except OtaError as exc:
            raise CommandError(exc.code, exc.message) from None
        self._emit(
            "ota", phase="rolled_back", reason=reason, slot=st.committed_slot, version=st.committed_version
        )
        self._mark_reported()
        self._request_restart()
        return {"slot": st.committed_slot, "version": st.committed_version, "restarting": True}


def status(layout: Layout, busy: bool = False, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """Slots, versions, update in flight, last result: for ``ota.status`` and the CLI."""
    st = layout.load()
    return {
        "current_slot": layout.current_slot(),
        "committed_slot": st.committed_slot,
        "committed_version": st.committed_version,
        "slots": {s: layout.slot_info(s) for s in SLOTS},
        "update": st.update.to_dict() if st.update else None,
        "in_flight": busy,
        "progress": progress or {},
        "last_result": st.last_result.to_dict() if st.last_result else None,
    }


def manual_rollback(layout: Layout, options: InstallOptions, reason: str, force: bool = False) -> OtaState:
    """End a trial with a rollback, or go back to the older version in the other slot.

    Repeating it is harmless: with nothing older to go back to it refuses (``no_previous_slot``)
    unless ``force`` switches to the other complete slot whatever its version.
    """
    st = layout.load()
    if st.in_flight():
        return trial_mod.rollback(layout, options, reason)
    current = layout.current_slot()
    other = layout.other(current)
    info = layout.slot_info(other)
    if info is None:
        raise OtaError("no_previous_slot", f"slot {other} holds no complete installation to go back to")
    running = (layout.slot_info(current) or {}).get("version") if current else None
    if running and not force and parse_version(str(info.get("version"))) >= parse_version(running):
        raise OtaError(
            "no_previous_slot",
            f"slot {other} holds {info.get('version')}, not older than the running "
            f"{running}; pass force to switch anyway",
        )
    layout.point_current(other)
    sm.revert(layout, st, other, info.get("version"), reason)
    return st
