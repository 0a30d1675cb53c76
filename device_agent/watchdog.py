"""systemd notify protocol without a dependency: READY, WATCHDOG (only while healthy), STOPPING.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and, with
``WatchdogSec=``, ``WATCHDOG_USEC``. ``WATCHDOG=1`` is sent from the event loop at half that
period and only while ``agent.healthy()``: a blocked loop or an unhealthy pipeline stops the
pings, systemd kills the service (SIGABRT) and restarts it; during an OTA trial the boot check
counts that start towards the crash-loop rollback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from device_agent.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one datagram to ``$NOTIFY_SOCKET``; False when not run under systemd."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, or None when the watchdog is off or not ours."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


WATCHDOG_EXEMPT = ("fleet_link",)


def pipelines_healthy(agent: Any, exempt: Iterable[str] = WATCHDOG_EXEMPT) -> Callable[[], bool]:
    """``agent.healthy()`` without the components in ``exempt`` (by name).

    The fleet link is unhealthy while the broker is unreachable; restarting the agent does not fix
    a broker outage, and a fleet-wide outage must not restart-loop every device into systemd's
    start limit. The OTA trial still requires the link (it uses ``agent.healthy()`` itself).
    """
    names = set(exempt)
    return lambda: all(c.healthy() for c in agent.components if c.name not in names)


class WatchdogComponent:
    """Tells systemd when the agent is ready and keeps the watchdog fed while it is healthy.

    Add it last in ``assemble.build_agent`` so READY=1 means every component started::

        agent.add(WatchdogComponent(pipelines_healthy(agent)))
    """

    name = "watchdog"

    def __init__(self, healthy: Callable[[], bool], env: Mapping[str, str] | None = None) -> None:
        self._healthy = healthy
        self._env = dict(os.environ if env is None else env)
        self._task: asyncio.Task | None = None
        self.pings = 0
        self.skipped = 0

    async def start(self) -> None:
        notify("READY=1\nSTATUS=running", self._env)
        interval = watchdog_interval(self._env)
        if interval is not None:
            self._task = asyncio.create_task(self._loop(interval), name="watchdog")

    async def stop(self) -> None:
        notify("STOPPING=1", self._env)
        await cancel_and_wait(self._task)

    def healthy(self) -> bool:
        return True

    async def _loop(self, interval: float) -> None:
        while True:
            try:
                ok = bool(self._healthy())
            except Exception:
                log.exception("health check failed")
                ok = False
            if ok:
                notify("WATCHDOG=1", self._env)
                self.pings += 1
            else:
                self.skipped += 1
                if self.skipped % 10 == 1:
                    log.warning("unhealthy: withholding WATCHDOG=1")
            await asyncio.sleep(interval)
