"""MQTT round trips through the broker over the fleet link: publish to ``diag/ping/{token}``, await it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from device_agent.fleetlink.link import FleetLink
from device_agent.protocol import Leaf


class Pinger:
    """Echo pings on the device's own ``dev/{id}/diag/ping/+`` topic (subscribed at construction)."""

    def __init__(self, link: FleetLink) -> None:
        self.link = link
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self._ids = itertools.count()
        self._nonce = f"{time.time_ns():x}"
        link.add_handler(Leaf.DIAG_PING_FILTER, self._on_ping)

    def _on_ping(self, subtopic: str, payload: bytes) -> None:
        fut = self._waiting.pop(subtopic.rsplit("/", 1)[-1], None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    async def ping(self, timeout: float = 2.0, qos: int = 1) -> float | None:
        """Round-trip time in seconds, or ``None`` when the echo did not come back in time."""
        token = f"{self._nonce}-{next(self._ids)}"
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        start = time.perf_counter()
        try:
            await self.link.publish(Leaf.diag_ping(token), json.dumps({"t": start}).encode(), qos=qos)
            return await asyncio.wait_for(fut, timeout) - start
        except (TimeoutError, ConnectionError):
            return None
        finally:
            self._waiting.pop(token, None)

    async def burst(self, count: int, timeout: float = 2.0, interval: float = 0.02) -> dict[str, Any]:
        """``count`` QoS 0 pings in quick succession: loss and RTT statistics."""
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.create_task(self.ping(timeout, qos=0)))
            await asyncio.sleep(interval)
        rtts = [r for r in await asyncio.gather(*tasks) if r is not None]
        ms = sorted(r * 1000 for r in rtts)
        return {
            "sent": count,
            "received": len(rtts),
            "loss_pct": round(100.0 * (count - len(rtts)) / count, 1),
            "rtt_ms_min": round(ms[0], 2) if ms else None,
            "rtt_ms_median": round(ms[len(ms) // 2], 2) if ms else None,
            "rtt_ms_max": round(ms[-1], 2) if ms else None,
        }
