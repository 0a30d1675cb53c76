"""A simulated device's OTA path: ``ota.install`` / ``ota.rollback`` answered like the real agent.

The commands are registered on the agent's own command registry (so the fleet link answers them
like any device command) and every phase is an ``ota`` event through ``agent.events.emit``, the
path the real ``device_agent.ota_component`` uses: download (with ``percent``), downloaded, pip,
switch, restarting, trial, committed. Nothing is downloaded or installed. ``faults_after`` are
media faults (``fleet.sim_media.FAULTS``) the new version brings: added to the device's simulated
media when the update commits, removed again by ``ota.rollback`` (a bad release for the health gate).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from device_agent.ota_component import INSTALL_PARAMS, ROLLBACK_PARAMS
from device_agent.protocol import ErrorCode
from device_agent.registry import CommandError


@dataclass
class SimOtaOptions:
    """How simulated devices update: ``versions`` maps a bundle's sha256 to its version."""

    install_s: float = 1.0  # from accepted to committed
    versions: dict[str, str] = field(default_factory=dict)
    faults_after: frozenset[str] = frozenset()


class SimulatedOta:
    """Component ``ota`` of one simulated device; ``installs`` counts the installs it ran."""

    name = "ota"

    def __init__(self, agent: Any, sensors: Any, media: Any, options: SimOtaOptions) -> None:
        self.agent = agent
        self.sensors = sensors  # fleet.simulate.SimulatedSensors (its ``version`` goes into telemetry)
        self.media = media  # fleet.sim_media.SimulatedMedia or None
        self.options = options
        self.installs = 0
        self.rollbacks = 0
        self.previous = ""
        self._task: asyncio.Task[None] | None = None
        self._registered = False

    async def start(self) -> None:
        if not self._registered:
            self.agent.commands.register("ota.install", self._cmd_install, params=INSTALL_PARAMS)
            self.agent.commands.register("ota.rollback", self._cmd_rollback, params=ROLLBACK_PARAMS)
            self._registered = True

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def healthy(self) -> bool:
        return True

    def _emit(self, **fields: Any) -> None:
        self.agent.events.emit("ota", **fields)

    async def _cmd_install(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._task is not None and not self._task.done():
            raise CommandError(ErrorCode.BUSY, "an install is in flight")
        version = self.options.versions.get(str(params.get("sha256", "")), "0.0.0-sim")
        self.installs += 1
        self._task = asyncio.create_task(self._install(version, int(params.get("size") or 1)))
        return {"accepted": True}

    async def _install(self, version: str, size: int) -> None:
        step = self.options.install_s / 6
        for pct in (0.0, 50.0, 100.0):
            self._emit(phase="download", bytes=int(size * pct / 100), total=size, percent=pct)
            await asyncio.sleep(step / 3)
        self._emit(phase="downloaded", bytes=size, total=size)
        for phase in ("pip", "switch", "restarting"):
            await asyncio.sleep(step)
            self._emit(phase=phase, version=version)
        await asyncio.sleep(step)
        self._emit(phase="trial", version=version, start=True)
        await asyncio.sleep(step)
        self.previous, self.sensors.version = self.sensors.version, version
        if self.media is not None and self.options.faults_after:
            self.media.faults = frozenset(self.media.faults | self.options.faults_after)
        self._emit(phase="committed", version=version, trial_s=round(step, 3))

    async def _cmd_rollback(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self.previous:
            raise CommandError(ErrorCode.NO_PREVIOUS_SLOT, "no older version to go back to")
        self.rollbacks += 1
        self.sensors.version, self.previous = self.previous, ""
        if self.media is not None:
            self.media.faults = frozenset(self.media.faults - self.options.faults_after)
        self._emit(
            phase="rolled_back", reason=str(params.get("reason") or "operator"), version=self.sensors.version
        )
        return {"rolled_back": True}
