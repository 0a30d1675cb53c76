"""A real in-process agent (fleet link + media + diagnostics) on a test broker, and a FleetClient."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.agent import Agent
from fleet.client import FleetClient
from tests.support.media import media_config, running_agent
from tests.support.mosquitto import Mosquitto

DEVICE = "test-cam"


@dataclass
class DiagRig:
    agent: Agent
    client: FleetClient
    device: str
    log_path: Path


@contextlib.asynccontextmanager
async def diag_rig(
    tmp_path: Path,
    broker: Mosquitto,
    client_url: str = "",
    client_tls: dict[str, str] | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[DiagRig]:
    """Start the agent built by ``assemble.build_agent`` with ``mqtt.url`` on ``broker`` (``sections``
    override any key, e.g. an ``mqtts://`` URL and certificates); the operator's FleetClient connects to
    ``client_url`` (default: the broker's plain URL) with ``client_tls`` (ca_file, cert_file, key_file)."""
    log_path = tmp_path / "logs" / "agent.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base: dict[str, dict[str, Any]] = {
        "mqtt": {"url": broker.url if broker.port else ""},
        "logging": {"file": str(log_path)},
        "diagnostics": {"journalctl": str(tmp_path / "no-journalctl")},
    }  # no host journal in tests
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    config = media_config(tmp_path, **base)
    async with running_agent(config) as agent:
        client = FleetClient(client_url or broker.url, **(client_tls or {}))
        await client.connect()
        try:
            link = agent.get("fleet_link")
            assert link is not None
            for _ in range(200):
                if link.connected:
                    break
                await asyncio.sleep(0.05)
            assert link.connected, "agent never connected to the test broker"
            # a command round trip: the link's subscriptions (cmd, rtc, ping) are all in place after it
            await client.send_command(DEVICE, "ping", {}, timeout=10)
            yield DiagRig(agent, client, DEVICE, log_path)
        finally:
            await client.close()
