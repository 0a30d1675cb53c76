"""Fleet link commands, alerts and the link's public API against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_agent.agent import Agent
from device_agent.config import dump_toml, load_config
from device_agent.fleetlink import FleetLink
from device_agent.fleetlink.mqtt import MqttConnection, MqttOptions
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
    cfg_path.write_text(
        dump_toml(
            {
                "device": {"id": "cam-1", "state_dir": str(tmp_path / "state"), "group": "lab"},
                "mqtt": {"url": mosquitto.url, "telemetry_interval_s": 0.3, "password": "hunter2"},
                "web": {"token": "s3cret"},
                "alerts": [
                    {
                        "code": "hot",
                        "metric": "probe.temp",
                        "op": ">",
                        "threshold": 80.0,
                        "clear_threshold": 70.0,
                        "hold_s": 0.5,
                        "severity": "P2",
                    }
                ],
            }
        )
    )
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


@pytest.mark.parametrize(
    "payload,code",
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_params"),
        (b'"text"', "bad_params"),
        (b'{"pad": "' + b"x" * 70000 + b'"}', "payload_too_large"),
    ],
)
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
        "cam-1",
        "config.set",
        {"set": {"mqtt.telemetry_interval_s": 2.5, "device.location": "porch"}},
        timeout=5,
    )
    assert res == {
        "persisted": True,
        "applied": ["device.location", "mqtt.telemetry_interval_s"],
        "restart_required": False,
        "pending_restart": [],
    }
    assert agent.config.mqtt.telemetry_interval_s == 2.5 and agent.config.device.location == "porch"
    reloaded = load_config(rig["path"])
    assert reloaded.mqtt.telemetry_interval_s == 2.5 and reloaded.device.location == "porch"
    assert reloaded.mqtt.password == "hunter2"  # secrets survive a rewrite
    assert not list(rig["path"].parent.glob(".agent.toml.tmp*"))

    res = await rig["client"].send_command("cam-1", "config.set", {"set": {"camera.fps": 15}}, timeout=5)
    assert res["restart_required"] is True and res["pending_restart"] == ["camera.fps"]
    assert load_config(rig["path"]).camera.fps == 15
    assert agent.config.camera.fps == 30  # not applied live


@pytest.mark.parametrize(
    "changes,code",
    [
        ({"mqtt.keepalive_s": 1}, "invalid_config"),
        ({"mqtt.keepalive_s": "thirty"}, "invalid_config"),
        ({"mqtt.no_such_key": 1}, "invalid_config"),
        ({"camera.fps": 15, "audio.backend": "tape"}, "invalid_config"),
        ({"mqtt.password": "***"}, "bad_params"),
        ({}, "bad_params"),
    ],
)
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
    assert await rig["client"].send_command("cam-1", "reboot", {"confirm": True}, timeout=5) == {
        "rebooting": True
    }
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


# ---- hardening of the command path: retained, redelivered, hostile response topics, bad JSON, typed
# params ----


class Wire:
    """A raw MQTT 5 session for what a FleetClient never sends, plus a recorder of everything but streams."""

    def __init__(self, url: str) -> None:
        self.conn = MqttConnection(MqttOptions(url=url, clean_start=True, session_expiry_s=0))
        self.seen: list[Any] = []  # paho messages (answers, wherever they went)

    async def start(self) -> Wire:
        self.conn.subscribe("#", self._record)
        self.conn.start()
        await self.conn.wait_ready(10)
        return self

    def _record(self, msg: Any) -> None:
        if not msg.topic.endswith(("/telemetry", "/status", "/events")) and "/cmd/" not in msg.topic:
            self.seen.append(msg)

    async def command(
        self,
        name: str,
        payload: bytes = b"{}",
        *,
        device: str = "cam-1",
        retain: bool = False,
        response_topic: str | None = "dev/cam-1/res",
        correlation: bytes | None = None,
        expiry_s: int = 0,
        qos: int = 1,
    ) -> bytes:
        corr = correlation if correlation is not None else uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        props.CorrelationData = corr
        if expiry_s:
            props.MessageExpiryInterval = expiry_s
        await self.conn.publish(f"dev/{device}/cmd/{name}", payload, qos=qos, retain=retain, properties=props)
        return corr

    def answers(self, corr: bytes) -> list[dict[str, Any]]:
        return [
            json.loads(m.payload)
            for m in self.seen
            if bytes(getattr(m.properties, "CorrelationData", b"") or b"") == corr
        ]

    async def wait_answers(self, corr: bytes, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        for _ in range(int(timeout / 0.05)):
            if len(self.answers(corr)) >= count:
                break
            await asyncio.sleep(0.05)
        return self.answers(corr)

    async def close(self) -> None:
        await self.conn.close()


@pytest.fixture
async def wire(mosquitto: Mosquitto):
    w = await Wire(mosquitto.url).start()
    yield w
    await w.close()


async def _restart_rig(rig: dict[str, Any]) -> None:
    """Stop the agent and start a new one on the same configuration (a restart of the process)."""
    await rig["agent"].stop()
    agent = Agent(load_config(rig["path"]))
    link = FleetLink(agent, runner=rig["runner"])
    agent.add(link)
    await agent.start()
    await link.wait_ready(10)
    rig["agent"], rig["link"] = agent, link


async def test_retained_command_is_refused_live_and_after_restarts(rig: dict[str, Any], wire: Wire) -> None:
    corr = await wire.command("reboot", b'{"confirm": true}', retain=True)
    first = await wire.wait_answers(corr)
    assert [a["error"]["code"] for a in first] == ["retained_refused"]
    assert rig["runner"].calls == []
    for restart in (1, 2):  # the broker hands the retained message to every new subscription
        await _restart_rig(rig)
        answers = await wire.wait_answers(corr, 1 + restart)
        assert [a["ok"] for a in answers] == [False] * (1 + restart)
        assert {a["error"]["code"] for a in answers} == {"retained_refused"}
    assert rig["runner"].calls == [] and not rig["agent"].restart_requested
    await wire.conn.publish("dev/cam-1/cmd/reboot", b"", retain=True)  # deleting it: not answered
    await _restart_rig(rig)
    await asyncio.sleep(0.5)
    assert len(wire.answers(corr)) == 3 and rig["runner"].calls == []


async def test_fleet_client_never_publishes_a_retained_command(rig: dict[str, Any], wire: Wire) -> None:
    flags: list[bool] = []
    wire.conn.subscribe(
        "dev/+/cmd/#",
        lambda msg: flags.append(msg.retain),
        options=SubscribeOptions(qos=1, retainAsPublished=True),
    )
    await asyncio.sleep(0.3)
    client: FleetClient = rig["client"]
    await client.send_command("cam-1", "ping", {}, timeout=5)
    with pytest.raises(CommandFailed):
        await client.send_command("cam-1", "reboot", {}, timeout=5)
    for _ in range(40):
        if len(flags) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(flags) >= 2 and not any(flags)  # (each message reaches both of the wire's subscriptions)
    with pytest.raises(ValueError):
        await client.publish("dev/cam-1/cmd/ping", {}, retain=True)
    late = MqttConnection(MqttOptions(url=wire.conn.options.url, clean_start=True, session_expiry_s=0))
    retained: list[str] = []
    late.subscribe("dev/+/cmd/#", lambda msg: retained.append(msg.topic))
    late.start()
    await late.wait_ready(10)
    await asyncio.sleep(0.3)
    await late.close()
    assert retained == []


async def test_redelivered_command_runs_once_and_gets_the_same_answer(
    rig: dict[str, Any], wire: Wire
) -> None:
    corr = uuid.uuid4().bytes
    for qos in (2, 1):  # a QoS 2 command, then the "same" one again as a redelivery would bring it
        await wire.command("reboot", b'{"confirm": true}', correlation=corr, qos=qos, expiry_s=30)
    answers = await wire.wait_answers(corr, 2)
    assert answers == [{"ok": True, "result": {"rebooting": True}}] * 2
    assert rig["runner"].calls == [["systemctl", "reboot"]]
    expiry = [
        getattr(m.properties, "MessageExpiryInterval", None)
        for m in wire.seen
        if bytes(m.properties.CorrelationData) == corr
    ]
    assert all(e is not None and 0 < e <= 30 for e in expiry)  # an answer does not outlive its request
    other = await wire.command("reboot", b'{"confirm": true}', expiry_s=30)  # new correlation: a new command
    assert (await wire.wait_answers(other))[0]["ok"] is True
    assert len(rig["runner"].calls) == 2


@pytest.mark.parametrize(
    "response_topic",
    ["#", "dev/#", "dev/+/res", "dev/cam-1/+", "dev/other/res", "dev/cam-1/cmd/ping", "elsewhere"],
)
async def test_unusable_response_topic_runs_nothing_and_answers_nothing(
    rig: dict[str, Any], wire: Wire, response_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    corrs = [
        await wire.command("reboot", b'{"confirm": true}', response_topic=response_topic) for _ in range(5)
    ]
    ok = await wire.command("ping")  # the link still answers proper commands, after those
    assert (await wire.wait_answers(ok))[0]["ok"] is True
    await asyncio.sleep(0.2)
    assert rig["runner"].calls == []
    assert all(wire.answers(c) == [] for c in corrs)
    assert loop_errors == []
    ignored = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 1 and ignored[0].levelname == "WARNING"  # once, not once per message


@pytest.mark.parametrize(
    "payload",
    [
        b'{"echo": ' + b"1" * 5000 + b"}",  # ValueError: Exceeds the limit (4300 digits)
        b"[" * 50000,  # RecursionError in the decoder
        b'{"echo": ' + b"[" * 100 + b"]" * 100 + b"}",  # decodes, but deeper than anything a command takes
        b'{"echo": NaN}',
        b'{"echo": -Infinity}',
        b'{"echo": 1e999}',
        b'{"echo": 1, "echo": 2}',  # duplicate keys
        b'{"echo": "\\ud800"}',  # a lone surrogate
        b"\xef\xbb\xbf{}",  # a byte order mark
        "{}".encode("utf-16"),
    ],
)
async def test_json_python_refuses_is_bad_json(
    rig: dict[str, Any], caplog: pytest.LogCaptureFixture, payload: bytes
) -> None:
    with pytest.raises(CommandFailed) as err:
        await rig["client"].send_command("cam-1", "ping", raw_payload=payload, timeout=5)
    assert err.value.code == "bad_json" and len(err.value.message) < 300
    assert not [r for r in caplog.records if r.exc_info]


@pytest.fixture
async def assembled(tmp_path: Path, mosquitto: Mosquitto):
    """The assembled agent (every component's real commands), light media, in-process."""
    from device_agent.assemble import build_agent

    cfg_path = tmp_path / "agent.toml"
    cfg_path.write_text(
        dump_toml(
            {
                "device": {"id": "cam-1", "state_dir": str(tmp_path / "state")},
                "mqtt": {"url": mosquitto.url, "telemetry_interval_s": 1.0},
                "camera": {"width": 160, "height": 120, "fps": 5},
                "ns": {"enabled": False},
                "web": {"enabled": False},
                "ota": {"root": str(tmp_path / "ota")},
            }
        )
    )
    agent = build_agent(load_config(cfg_path))
    await agent.start()
    link = agent.get("fleet_link")
    await link.wait_ready(10)
    client = await FleetClient(mosquitto.url).connect()
    yield agent, client
    await client.close()
    await agent.stop()


async def test_ota_install_path_of_wrong_type_is_bad_params(assembled: Any) -> None:
    agent, client = assembled
    with pytest.raises(CommandFailed) as err:
        await client.send_command("cam-1", "ota.install", {"path": 1}, timeout=5)
    assert err.value.code == "bad_params" and "path" in err.value.message


SAMPLES = {"string": "7", "integer": 7, "number": 7.5, "boolean": True, "array": [1], "object": {"a": 1}}


def wrong_values(param: Any) -> list[Any]:
    """One value of every JSON type the parameter does not accept."""
    if "any" in param.kinds:
        return []
    return [
        v
        for k, v in SAMPLES.items()
        if k not in param.kinds and not (k == "integer" and "number" in param.kinds)
    ]


async def test_every_registered_command_checks_its_declared_parameter_types(assembled: Any) -> None:
    agent, client = assembled
    names = agent.commands.names()
    assert {
        "ping",
        "config.get",
        "config.set",
        "agent.restart",
        "reboot",
        "media.restart",
        "media.ns",
        "ota.install",
        "ota.status",
        "ota.rollback",
        "logs.pull",
        "diag.selftest",
        "diag.snapshot",
        "diag.netcheck",
        "diag.stats",
    } <= set(names)
    tried = 0
    for name in names:
        command = agent.commands.get(name)
        with pytest.raises(CommandFailed) as err:  # an undeclared parameter
            await client.send_command("cam-1", name, {"no_such_param": 1}, timeout=5)
        assert err.value.code == command.param_error and "no_such_param" in err.value.message
        for param in command.params:
            for wrong in wrong_values(param):
                with pytest.raises(CommandFailed) as err:
                    await client.send_command("cam-1", name, {param.name: wrong}, timeout=5)
                assert err.value.code == command.param_error, (name, param, err.value)
                assert err.value.message.startswith(f"{name}: {param.name}:"), err.value.message
                tried += 1
    assert tried >= 80


async def test_command_round_trip_does_not_wait_for_delayed_acks(rig: dict[str, Any]) -> None:
    """An answer follows its command's PUBACK at once: with Nagle on, it waited ~40 ms for the broker's
    delayed ACK (both ends use MqttConnection, so the fleet side's publishes had the same wait)."""
    client: FleetClient = rig["client"]
    await client.send_command("cam-1", "ping", {}, timeout=5)
    times = []
    for _ in range(21):
        started = time.perf_counter()
        await client.send_command("cam-1", "ping", {}, timeout=5)
        times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.025, [round(t * 1000, 1) for t in times]


async def test_answers_are_exact_not_rounded_like_telemetry(rig: dict[str, Any]) -> None:
    """Found by the fuzzer: answers went through telemetry's 3-decimal rounding (echo 0.0625 came back 0.062;
    config.get would misreport a setting the same way)."""
    echo = {"f": 0.0625, "big": 12345.6789, "list": [1.0005, -2.5e-7]}
    res = await rig["client"].send_command("cam-1", "ping", {"echo": echo}, timeout=5)
    assert res["echo"] == echo


async def test_retained_ping_is_refused_by_the_agent_process_after_every_restart(
    tmp_path: Path, mosquitto: Mosquitto, wire: Wire
) -> None:
    """The reported case on the assembled agent process: a retained `ping` was answered once, then again
    after every restart of the agent. Now it is refused each time it is delivered and never runs."""
    from tests.support.agent_proc import AgentProcess

    proc = AgentProcess(
        tmp_path / "agent",
        {
            "device": {"id": "cam-1", "state_dir": str(tmp_path / "state")},
            "mqtt": {"url": mosquitto.url, "telemetry_interval_s": 5.0},
        },
    )
    corr = await wire.command("ping", b'{"echo": "stale"}', retain=True)
    try:
        for run in (1, 2):
            proc.start()
            answers = await wire.wait_answers(corr, run, timeout=30)
            assert len(answers) == run, proc.log_text()[-2000:]
            assert all(a == answers[0] for a in answers) and answers[0]["error"]["code"] == "retained_refused"
            assert await asyncio.to_thread(proc.stop) == 0
        assert "Traceback" not in proc.log_text()
    finally:
        proc.kill()
        await wire.conn.publish("dev/cam-1/cmd/ping", b"", retain=True)


async def test_config_set_alert_defaults_live(rig: dict[str, Any]) -> None:
    """[alert_defaults] through config.set: a shipped rule dropped clears its alert, restored raises it
    again, without a restart (the rule set is rebuilt at once)."""
    client: FleetClient = rig["client"]
    events: list[dict] = []
    client.on_events(lambda dev, ev: events.append(ev))
    # one viewer that has rendered nothing for 20 s: the shipped P1 viewers_no_frames (no hold)
    stalled = {"viewers": {"sessions": [{"id": "v1", "qoe": {"stall_ms": 20_000}}]}}
    rig["agent"].health.add("media", lambda: stalled)

    async def alert_states(count: int) -> list[bool]:
        for _ in range(200):
            states = [e["active"] for e in events if e.get("code") == "viewers_no_frames"]
            if len(states) >= count:
                return states
            await asyncio.sleep(0.05)
        return states

    assert await alert_states(1) == [True], events
    res = await client.send_command(
        "cam-1", "config.set", {"set": {"alert_defaults.disable": ["viewers_no_frames"]}}, timeout=5
    )
    assert res["applied"] == ["alert_defaults.disable"] and res["restart_required"] is False, res
    assert load_config(rig["path"]).alert_defaults.disable == ["viewers_no_frames"]
    assert await alert_states(2) == [True, False], events  # cleared: its rule is gone
    assert "viewers_no_frames" not in {a.code for a in rig["agent"].alerts.active()}
    res = await client.send_command(
        "cam-1", "config.set", {"set": {"alert_defaults": {"enabled": True, "disable": []}}}, timeout=5
    )
    assert res["applied"] == ["alert_defaults"] and res["restart_required"] is False, res
    assert await alert_states(3) == [True, False, True], events
