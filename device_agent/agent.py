"""The agent's composition root: builds the components from config and runs them."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Protocol

from device_agent.config import AgentConfig
from device_agent.registry import AlertBus, CommandRegistry, EventBus, HealthRegistry

log = logging.getLogger(__name__)

RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: systemd's Restart= brings the agent back


class Component(Protocol):
    """A long-lived part of the agent (media, fleet link, diagnostics...)."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def healthy(self) -> bool:
        """True while the component works; gates the systemd watchdog and the OTA trial."""
        ...


class Agent:
    """Owns the shared registries and the components; one per process."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.boot_id = uuid.uuid4().hex[:16]
        self.health = HealthRegistry()
        self.commands = CommandRegistry()
        self.alerts = AlertBus()
        self.events = EventBus()
        self.components: list[Component] = []
        self._stop = asyncio.Event()
        self.restart_requested = False

    def add(self, component: Component) -> None:
        self.components.append(component)

    def get(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def healthy(self) -> bool:
        return all(c.healthy() for c in self.components)

    def request_stop(self) -> None:
        self._stop.set()

    def request_restart(self) -> None:
        """Stop, and ask the caller to exit with ``RESTART_EXIT_CODE`` (the agent.restart command)."""
        self.restart_requested = True
        self._stop.set()

    async def start(self) -> None:
        started: list[Component] = []
        try:
            for component in self.components:
                log.info("starting %s", component.name)
                await component.start()
                started.append(component)
        except BaseException:
            for component in reversed(started):
                await _stop_quietly(component)
            raise

    async def stop(self) -> None:
        for component in reversed(self.components):
            await _stop_quietly(component)

    async def run(self) -> None:
        """Start everything, wait for a stop request, stop everything in reverse order."""
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()


async def _stop_quietly(component: Component) -> None:
    try:
        await component.stop()
    except Exception:
        log.exception("stopping %s failed", component.name)
