"""Run the fleet API next to a :class:`~fleet.service.FleetService` on the same event loop."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from device_agent.config import is_loopback
from fleet.api.app import FleetApi, Identities
from fleet.client import FleetClient
from fleet.metrics import FleetMetrics
from fleet.store import Store


class ListenError(ValueError):
    """A ``--http`` value that is not ``HOST:PORT``."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


class ApiServer:
    """``await start()`` / ``await stop()``; ``port`` is the bound port (0 picks a free one)."""

    def __init__(
        self,
        store: Store,
        host: str,
        port: int,
        *,
        require_token: bool | None = None,
        service: Any = None,
        provisioning_dir: str = "",
        metrics_cache_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.require_token = (not is_loopback(host)) if require_token is None else require_token
        commands = FleetClient.sharing(service.conn) if service is not None else None
        stats = (lambda: service.stats) if service is not None else None
        connected = (lambda: bool(service.conn.connected)) if service is not None else None
        self.api = FleetApi(
            store,
            require_token=self.require_token,
            commands=commands,
            stats=stats,
            identities=Identities(provisioning_dir) if provisioning_dir else None,
        )
        self.metrics = FleetMetrics(self.api.queries, stats, connected, cache_s=metrics_cache_s)
        self.api.metrics = self.metrics
        self.service = service
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self.service is not None:
            self.service.batch_observers.append(self.metrics.observe_batch)
        self._runner = web.AppRunner(self.api.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self.service is not None and self.metrics.observe_batch in self.service.batch_observers:
            self.service.batch_observers.remove(self.metrics.observe_batch)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
