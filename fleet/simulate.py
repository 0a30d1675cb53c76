"""Simulated devices: the real agent fleet link (FleetLink, spool, commands, alert rules) with
simulated sensors instead of /proc and /sys, many to one process.

``fleetctl simulate --devices N`` and the fleet benchmarks use :class:`Simulation`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import random
import time
from pathlib import Path
from typing import Any

from device_agent.agent import Agent
from device_agent.config import config_from_dict
from device_agent.fleetlink.link import FleetLink
from fleet.sim_media import SimulatedMedia, assign_faults
from fleet.sim_ota import SimOtaOptions, SimulatedOta


class SimulatedSensors:
    """A plausible system health sample with slow random walks (seeded per device)."""

    def __init__(self, seed: int, version: str = "0.1.0") -> None:
        self.rng = random.Random(seed)
        self.cpu = self.rng.uniform(5, 30)
        self.temp = self.rng.uniform(45, 60)
        self.rssi = self.rng.randint(-75, -45)
        self.version = version
        self.t0 = time.monotonic()

    def __call__(self) -> dict[str, Any]:
        r = self.rng
        self.cpu = min(100.0, max(0.0, self.cpu + r.gauss(0, 3)))
        self.temp = min(90.0, max(30.0, self.temp + r.gauss(0, 0.5)))
        self.rssi = int(min(-30, max(-90, self.rssi + r.choice((-1, 0, 0, 1)))))
        up = time.monotonic() - self.t0
        return {
            "version": self.version,
            "slot": "a",
            "cpu_pct": round(self.cpu, 1),
            "load": [round(self.cpu / 50, 2), round(self.cpu / 55, 2), round(self.cpu / 60, 2)],
            "mem_total_mb": 3794,
            "mem_avail_mb": 2900 - int(self.cpu * 3),
            "mem_used_pct": 23.6,
            "temperature_c": round(self.temp, 1),
            "throttled": 0,
            "disk_free_mb": 21000,
            "disk_free_pct": 71.2,
            "uptime_s": int(up),
            "wifi_rssi_dbm": self.rssi,
        }


def simulated_media(rng: random.Random) -> dict[str, Any]:
    """One media section of a fault-free simulated device (the real builder; for payload sizes)."""
    media = SimulatedMedia(rng)
    media()
    return media()


class Simulation:
    """N simulated agents sharing one event loop and one spool thread."""

    def __init__(
        self,
        mqtt_url: str,
        devices: int,
        state_dir: str | Path,
        *,
        prefix: str = "sim-",
        group: str = "sim",
        interval_s: float = 30.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 20.0,
        media: bool = True,
        alerts: list[dict[str, Any]] | None = None,
        extra_mqtt: dict[str, Any] | None = None,
        faults: dict[str, float] | None = None,
        fault_seed: int = 0,
        ota: SimOtaOptions | None = None,
        client_ids: bool = False,
    ) -> None:
        """``client_ids``: give every device its own MQTT client id (``dev-<id>``) even with a client
        certificate: simulated devices that share one certificate (the profile's service identity)."""
        self.url = mqtt_url
        self.n = devices
        self.state_dir = Path(state_dir)
        self.prefix = prefix
        self.group = group
        self.interval_s = interval_s
        self.media = media
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sim-spool")
        self.agents: list[Agent] = []
        self.links: list[FleetLink] = []
        self.otas: list[SimulatedOta] = []
        self.faults = assign_faults(devices, faults or {}, fault_seed)  # fleet.sim_media.FAULTS per device
        for i in range(devices):
            dev_id = f"{prefix}{i:05d}"
            cfg = config_from_dict(
                {
                    "device": {
                        "id": dev_id,
                        "group": group,
                        "hardware": "simulated",
                        "state_dir": str(self.state_dir / dev_id),
                    },
                    "mqtt": {
                        "url": mqtt_url,
                        "telemetry_interval_s": interval_s,
                        "reconnect_min_s": reconnect_min_s,
                        "reconnect_max_s": reconnect_max_s,
                        **(extra_mqtt or {}),
                    },
                    "alert_defaults": {"evaluate_interval_s": 0.0},  # rules on telemetry samples only
                    "alerts": alerts
                    or [
                        {
                            "code": "hot",
                            "metric": "system.temperature_c",
                            "op": ">",
                            "threshold": 80.0,
                            "clear_threshold": 75.0,
                            "hold_s": 60.0,
                            "severity": "P2",
                        }
                    ],
                }
            )
            agent = Agent(cfg)
            link = FleetLink(
                agent,
                runner=_no_reboot,
                executor=self.executor,
                system_metrics=False,
                client_id=f"dev-{dev_id}" if client_ids else "",
            )
            agent.add(link)
            sensors = SimulatedSensors(i)
            agent.health.add("system", sensors)
            sim_media = (
                SimulatedMedia(sensors.rng, step_s=interval_s, faults=self.faults[i]) if media else None
            )
            if sim_media is not None:
                agent.health.add("media", sim_media)
            if ota is not None:  # answers ota.install / ota.rollback with events (fleet/sim_ota.py)
                self.otas.append(SimulatedOta(agent, sensors, sim_media, ota))
                agent.add(self.otas[-1])
            starts = 4 if "crashloop" in self.faults[i] else 1

            def agent_health(boot: str = agent.boot_id, n: int = starts) -> dict[str, Any]:
                return {"boot": boot, "starts_10min": n, "starts_1h": n}

            agent.health.add("agent", agent_health)
            self.agents.append(agent)
            self.links.append(link)

    async def start(self, spread_s: float | None = None) -> None:
        """Start every device, spread over ``spread_s`` (default: one telemetry interval, max 10 s)."""
        spread = min(self.interval_s, 10.0) if spread_s is None else spread_s
        for i, agent in enumerate(self.agents):
            await agent.start()
            if "camera" in self.faults[i]:  # what the media component raises when the camera goes
                agent.alerts.raise_alert("P1", "camera_unavailable", "simulated camera loss")
            if spread and self.n > 1:
                await asyncio.sleep(spread / self.n)

    async def wait_connected(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = sum(link.connected for link in self.links)
            if n == self.n:
                return n
            await asyncio.sleep(0.1)
        return sum(link.connected for link in self.links)

    async def stop(self) -> None:
        await asyncio.gather(*(agent.stop() for agent in self.agents), return_exceptions=True)
        self.executor.shutdown(wait=True)

    def totals(self) -> dict[str, int]:
        return {
            "devices": self.n,
            "connected": sum(link.connected for link in self.links),
            "samples": sum(link.samples for link in self.links),
            "delivered": sum(link.delivered for link in self.links),
            "spooled": sum(link.health()["spool"].get("depth", 0) for link in self.links),
        }


async def _no_reboot(argv: list[str]) -> int:
    return 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
