"""Fleet link commands, alerts and the link's public API against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from device_agent.config import dump_toml, load_config
from device_agent.fleetlink import FleetLink
from fleet.client import CommandFailed, FleetClient
from tests.support.mosquitto import Mosquitto


class Runner:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        return 0


@pytest.fixture
async def rig(tmp_path: Path, mosquitto: Mosquitto):
    cfg_path = tmp_path / "agent.toml"
    cfg_path.write_text(dump_toml({
        "device": {"id": "cam-1", "state_dir": str(tmp_path / "state"), "group": "lab"},
        "mqtt": {"url": mosquitto.url, "telemetry_interval_s": 0.3, "password": "hunter2"},
        "web": {"token": "s3cret"},
        "alerts": [{"code": "hot", "metric": "probe.temp", "op": ">", "threshold": 80.0,
                    "clear_threshold": 70.0, "hold_s": 0.5, "severity": "P2"}],
    }))
    agent = Agent(load_config(cfg_path))
    runner = Runner()
    link = FleetLink(agent, runner=runner)
    agent.add(link)
    probe = {"temp": 50.0}
    agent.health.add("probe", lambda: dict(probe))
    await agent.start()
    client = FleetClient(mosquitto.url)
    await client.connect()
    await link.wait_ready(10)
    yield {"agent": agent, "link": link, "client": client, "runner": runner, "path": cfg_path, "probe": probe}
    await client.close()
    await agent.stop()


async def test_ping_round_trip(rig: dict[str, Any]) -> None:
    res = await rig["client"].send_command("cam-1", "ping", {"echo": "hi"}, timeout=5)
    assert res["pong"] is True and res["echo"] == "hi" and res["boot"] == rig["agent"].boot_id


@pytest.mark.parametrize("payload,code", [
    (b"{not json", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[1, 2]", "bad_params"),
    (b'"text"', "bad_params"),
    (b'{"pad": "' + b"x" * 70000 + b'"}', "payload_too_large"),
])
async def test_bad_payloads_get_structured_errors(rig: dict[str, Any], payload: bytes, code: str) -> None:
    before = rig["path"].read_bytes()
    with pytest.raises(CommandFailed) as err:
        await rig["client"].send_command("cam-1", "config.set", raw_payload=payload, timeout=5)
    assert err.value.code == code and err.value.message
    assert rig["path"].read_bytes() == before


async def test_unknown_command(rig: dict[str, Any]) -> None:
    with pytest.raises(CommandFailed) as err:
        await rig["client"].send_command("cam-1", "self.destruct", {}, timeout=5)
    assert err.value.code == "unknown_command" and "ping" in err.value.message


async def test_timeout_for_absent_device(rig: dict[str, Any]) -> None:
    with pytest.raises(CommandFailed) as err:
        await rig["client"].send_command("nobody", "ping", {}, timeout=0.5)
    assert err.value.code == "timeout"


async def test_config_get_redacts_secrets(rig: dict[str, Any]) -> None:
    res = await rig["client"].send_command("cam-1", "config.get", {}, timeout=5)
    text = json.dumps(res)
    assert "hunter2" not in text and "s3cret" not in text
    assert res["config"]["mqtt"]["password"] == "***" and res["config"]["web"]["token"] == "***"
    assert res["config"]["device"]["id"] == "cam-1"
    one = await rig["client"].send_command("cam-1", "config.get", {"section": "device"}, timeout=5)
    assert list(one["config"]) == ["device"]
    with pytest.raises(CommandFailed) as err:
        await rig["client"].send_command("cam-1", "config.get", {"section": "nope"}, timeout=5)
    assert err.value.code == "bad_params"


async def test_config_set_persists_and_applies_live(rig: dict[str, Any]) -> None:
    agent: Agent = rig["agent"]
    res = await rig["client"].send_command(
        "cam-1", "config.set", {"set": {"mqtt.telemetry_interval_s": 2.5, "device.location": "porch"}}, timeout=5)
    assert res == {"persisted": True, "applied": ["device.location", "mqtt.telemetry_interval_s"],
                   "restart_required": False, "pending_restart": []}
    assert agent.config.mqtt.telemetry_interval_s == 2.5 and agent.config.device.location == "porch"
    reloaded = load_config(rig["path"])
    assert reloaded.mqtt.telemetry_interval_s == 2.5 and reloaded.device.location == "porch"
    assert reloaded.mqtt.password == "hunter2"  # secrets survive a rewrite
    assert not list(rig["path"].parent.glob(".agent.toml.tmp*"))

    res = await rig["client"].send_command("cam-1", "config.set", {"set": {"camera.fps": 15}}, timeout=5)
    assert res["restart_required"] is True and res["pending_restart"] == ["camera.fps"]
    assert load_config(rig["path"]).camera.fps == 15
    assert agent.config.camera.fps == 30  # not applied live


@pytest.mark.parametrize("changes,code", [
    ({"mqtt.keepalive_s": 1}, "invalid_config"),
    ({"mqtt.keepalive_s": "thirty"}, "invalid_config"),
    ({"mqtt.no_such_key": 1}, "invalid_config"),
    ({"camera.fps": 15, "audio.backend": "tape"}, "invalid_config"),
    ({"mqtt.password": "***"}, "bad_params"),
    ({}, "bad_params"),
])
async def test_config_set_rejects_and_changes_nothing(rig: dict[str, Any], changes: dict, code: str) -> None:
    before = rig["path"].read_bytes()
    fps = rig["agent"].config.camera.fps
    with pytest.raises(CommandFailed) as err:
        await rig["client"].send_command("cam-1", "config.set", {"set": changes}, timeout=5)
    assert err.value.code == code
    assert rig["path"].read_bytes() == before and rig["agent"].config.camera.fps == fps


async def test_reboot_is_guarded_and_uses_the_runner(rig: dict[str, Any]) -> None:
    with pytest.raises(CommandFailed) as err:
        await rig["client"].send_command("cam-1", "reboot", {}, timeout=5)
    assert err.value.code == "confirmation_required" and rig["runner"].calls == []
    with pytest.raises(CommandFailed):
        await rig["client"].send_command("cam-1", "reboot", {"confirm": "yes"}, timeout=5)
    assert rig["runner"].calls == []
    assert await rig["client"].send_command("cam-1", "reboot", {"confirm": True}, timeout=5) == {"rebooting": True}
    assert rig["runner"].calls == [["systemctl", "reboot"]]


async def test_agent_restart_requests_a_restart(rig: dict[str, Any]) -> None:
    agent: Agent = rig["agent"]
    res = await rig["client"].send_command("cam-1", "agent.restart", {}, timeout=5)
    assert res["restarting"] is True
    await asyncio.sleep(0.6)
    assert agent.restart_requested and agent._stop.is_set()


async def test_public_publish_and_handlers(rig: dict[str, Any]) -> None:
    link: FleetLink = rig["link"]
    client: FleetClient = rig["client"]
    seen: list[tuple[str, bytes]] = []
    got = asyncio.Event()

    async def handler(subtopic: str, payload: bytes) -> None:
        seen.append((subtopic, payload))
        got.set()

    link.add_handler("rtc/+", handler)
    logs: list[tuple[str, str, bytes]] = []
    client.on_logs(lambda dev, req, payload: logs.append((dev, req, payload)))
    await asyncio.sleep(0.3)
    await client.publish("dev/cam-1/rtc/s42", b'{"type":"offer"}')
    await asyncio.wait_for(got.wait(), 5)
    assert seen == [("rtc/s42", b'{"type":"offer"}')]
    await link.publish("logs/r1", {"seq": 0, "total": 1})
    for _ in range(50):
        if logs:
            break
        await asyncio.sleep(0.05)
    assert logs == [("cam-1", "r1", b'{"seq":0,"total":1}')]


async def test_alert_rule_raises_and_clears_with_hysteresis(rig: dict[str, Any]) -> None:
    client: FleetClient = rig["client"]
    probe = rig["probe"]
    events: list[dict] = []
    client.on_events(lambda dev, ev: events.append(ev))
    await asyncio.sleep(0.3)

    async def wait_for(pred, timeout: float = 6.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if pred():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out; events: {events}")

    probe["temp"] = 85.0
    await wait_for(lambda: any(e.get("code") == "hot" for e in events))
    raised = [e for e in events if e.get("code") == "hot"]
    assert raised[0]["active"] is True and raised[0]["severity"] == "P2" and raised[0]["type"] == "alert"
    assert raised[0]["boot"] == rig["agent"].boot_id and isinstance(raised[0]["seq"], int)
    probe["temp"] = 75.0  # below threshold but above clear_threshold: stays raised
    await asyncio.sleep(1.2)
    assert [e["active"] for e in events if e.get("code") == "hot"] == [True]
    probe["temp"] = 60.0
    await wait_for(lambda: len([e for e in events if e.get("code") == "hot"]) == 2)
    assert [e["active"] for e in events if e.get("code") == "hot"] == [True, False]
    rig["agent"].events.emit("ota.progress", phase="download", pct=40)
    await wait_for(lambda: any(e.get("type") == "ota.progress" for e in events))


async def test_events_from_threads_are_numbered_in_order(rig: dict[str, Any]) -> None:
    client: FleetClient = rig["client"]
    events: list[dict] = []
    client.on_events(lambda dev, ev: events.append(ev))
    await asyncio.sleep(0.3)

    def burst() -> None:
        for i in range(20):
            rig["agent"].events.emit("thread.event", n=i)

    await asyncio.to_thread(burst)
    for _ in range(100):
        if len([e for e in events if e["type"] == "thread.event"]) == 20:
            break
        await asyncio.sleep(0.05)
    mine = [e for e in events if e["type"] == "thread.event"]
    assert [e["n"] for e in mine] == list(range(20))
    seqs = [e["seq"] for e in mine]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20


async def test_config_set_alert_rules_live(rig: dict[str, Any]) -> None:
    client: FleetClient = rig["client"]
    events: list[dict] = []
    client.on_events(lambda dev, ev: events.append(ev))
    await asyncio.sleep(0.3)
    rules = [{"code": "cold", "metric": "probe.temp", "op": "<", "threshold": 60.0, "severity": "P3"}]
    res = await client.send_command("cam-1", "config.set", {"set": {"alerts": rules}}, timeout=5)
    assert res["applied"] == ["alerts"] and res["restart_required"] is False
    assert load_config(rig["path"]).alerts[0].code == "cold"
    for _ in range(100):  # probe.temp is 50: the new rule fires
        if any(e.get("code") == "cold" for e in events):
            break
        await asyncio.sleep(0.05)
    assert [e["severity"] for e in events if e.get("code") == "cold"] == ["P3"]
