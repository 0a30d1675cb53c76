"""mqtts:// with a server CA and client certificates; the broker's ACL confines a device to its subtree."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.config import config_from_dict
from device_agent.fleetlink import FleetLink
from fleet.client import FleetClient
from tests.support.fleet import mtls_broker


@pytest.fixture
def tls_broker(tmp_path: Path):
    with mtls_broker(tmp_path / "broker", ["cam-1", "cam-2"]) as (broker, pki):
        yield broker, pki


async def test_mqtts_client_certificates_and_acl(tmp_path: Path, tls_broker) -> None:
    broker, pki = tls_broker
    url = f"mqtts://127.0.0.1:{broker.ports['tls']}"
    agent = Agent(
        config_from_dict(
            {
                "device": {"id": "cam-1", "state_dir": str(tmp_path / "s")},
                "mqtt": {
                    "url": url,
                    "ca_file": pki["ca"],
                    "cert_file": pki["cam-1_cert"],
                    "key_file": pki["cam-1_key"],
                    "telemetry_interval_s": 0.3,
                },
            }
        )
    )
    link = FleetLink(agent)
    agent.add(link)
    await agent.start()
    op = FleetClient(url, ca_file=pki["ca"], cert_file=pki["operator_cert"], key_file=pki["operator_key"])
    await op.connect()
    try:
        telemetry: list = []
        op.on_telemetry(lambda dev, obj: telemetry.append((dev, obj["seq"])))
        await link.wait_ready(10)  # TLS connect and command subscription done
        assert (await op.send_command("cam-1", "ping", {}, timeout=5))["pong"] is True
        for _ in range(60):
            if telemetry:
                break
            await asyncio.sleep(0.1)
        assert telemetry and telemetry[0][0] == "cam-1"

        # cam-1 may not write into cam-2's subtree: the broker drops it, the operator never sees it
        seen: list = []
        op.subscribe("dev/cam-2/#", lambda topic, payload: seen.append(topic))
        await asyncio.sleep(0.3)
        with pytest.raises(PermissionError, match="refused"):  # the broker says so (0x87); we do not pretend
            await link.conn.publish("dev/cam-2/status", b'{"online": true}', qos=1)
        await asyncio.sleep(0.5)
        assert seen == []

        # without a client certificate the broker refuses the connection
        anon = FleetClient(url, ca_file=pki["ca"])
        with pytest.raises(ConnectionError):
            await anon.connect(timeout=2)
    finally:
        await op.close()
        await agent.stop()


async def test_a_renewed_certificate_is_used_on_the_next_connect(tmp_path: Path, tls_broker) -> None:
    """Renewal rewrites the key and certificate files; the link must present the new pair after a
    reconnect."""
    broker, pki = tls_broker
    cert, key = tmp_path / "device.crt", tmp_path / "device.key"
    shutil.copy(pki["cam-1_cert"], cert)
    shutil.copy(pki["cam-1_key"], key)
    url = f"mqtts://127.0.0.1:{broker.ports['tls']}"
    agent = Agent(
        config_from_dict(
            {
                "device": {"id": "cam-1", "state_dir": str(tmp_path / "s")},
                "mqtt": {
                    "url": url,
                    "ca_file": pki["ca"],
                    "cert_file": str(cert),
                    "key_file": str(key),
                    "reconnect_min_s": 0.1,
                    "reconnect_max_s": 0.5,
                },
            }
        )
    )
    link = FleetLink(agent)
    agent.add(link)
    await agent.start()
    try:
        await link.wait_ready(10)
        assert "u'cam-1'" in broker.log_text()
        # a stand-in for the renewed pair: another certificate from the same CA, told apart by its name
        shutil.copy(pki["cam-2_key"], key)
        shutil.copy(pki["cam-2_cert"], cert)
        os.utime(cert, ns=(os.stat(cert).st_atime_ns, os.stat(cert).st_mtime_ns + 1_000_000))
        broker.restart()
        for _ in range(100):
            if "u'cam-2'" in broker.log_text():
                break
            await asyncio.sleep(0.1)
        assert "u'cam-2'" in broker.log_text()
    finally:
        await agent.stop()


async def test_refused_telemetry_stays_in_the_spool_and_is_reported(tmp_path: Path, tls_broker) -> None:
    """A device whose id does not match its certificate: the broker refuses (0x87); nothing is deleted."""
    broker, pki = tls_broker
    url = f"mqtts://127.0.0.1:{broker.ports['tls']}"
    agent = Agent(
        config_from_dict(
            {
                "device": {"id": "cam-2", "state_dir": str(tmp_path / "s")},  # cert says cam-1
                "mqtt": {
                    "url": url,
                    "ca_file": pki["ca"],
                    "cert_file": pki["cam-1_cert"],
                    "key_file": pki["cam-1_key"],
                    "telemetry_interval_s": 0.2,
                },
            }
        )
    )
    link = FleetLink(agent)
    agent.add(link)
    await agent.start()
    try:
        for _ in range(100):
            if link.refused >= 3:
                break
            await asyncio.sleep(0.1)
        assert link.refused >= 3 and "refused" in link.health()["last_refusal"]
        assert any(a.code == "publish_refused" and a.severity == "P2" for a in agent.alerts.active())
        assert link.delivered == 0
        stats = await asyncio.get_running_loop().run_in_executor(None, link.spool.stats)
        assert stats["depth"] >= 3  # every refused sample is still spooled
    finally:
        await agent.stop()
