"""Client-id takeover: nobody can knock a device off the broker by connecting with its client id.

A real mosquitto runs the configuration `fleetctl broker-config` wrote; two devices are
provisioned end to end and run as real agent processes. Device A's own valid certificate asking
for B's client id (``<B's id>`` as the agent uses it now, ``dev-<B's id>`` as it used before), a
client without a certificate on the claim listener, a claimant with its own token asking for
another claimant's id: B stays connected, the fleet never hears "lost" for B, the other claimant
keeps its session.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.config import load_config
from device_agent.fleetlink.mqtt import MqttClient, MqttError, tls_context
from provisioning.provision import ProvisionRequest, provision
from provisioning.token import ClaimToken
from tests.support.agent_proc import AgentProcess
from tests.test_prov_support import Fleet, claim_login, create_tokens, device_client, start_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(tmp_path_factory.mktemp("prov-takeover"))
    yield f
    f.broker.stop()


async def _provision_two(fleet: Fleet, tmp: Path) -> list[tuple[str, Path, Path]]:
    """Two devices provisioned through the claim listener: (device id, identity dir, agent.toml)."""
    r = fleet.responder()
    task = asyncio.create_task(r.run())
    await asyncio.wait_for(r.ready.wait(), 10)
    out = []
    try:
        for i, token in enumerate(create_tokens(fleet, count=2)):
            cfg = tmp / f"d{i}.toml"
            ident = await provision(
                ProvisionRequest(
                    ClaimToken.parse(token),
                    f"127.0.0.1:{fleet.claim_port}",
                    cfg,
                    identity_dir=tmp / f"id{i}",
                    say=lambda s: None,
                )
            )
            out.append((ident.device_id, tmp / f"id{i}", cfg))
    finally:
        await r.stop()
        await asyncio.wait_for(task, 10)
    return out


def _agent(tmp: Path, name: str, cfg_path: Path) -> AgentProcess:
    written = load_config(cfg_path).to_dict()  # what provisioning wrote; the rest stays light (AgentProcess)
    data = {k: written[k] for k in ("device", "mqtt", "provisioning") if k in written}
    data["device"]["state_dir"] = str(tmp / name / "state")
    data.setdefault("mqtt", {})["telemetry_interval_s"] = 0.5
    return AgentProcess(tmp / name, data).start()


async def _statuses(watcher: MqttClient, seconds: float) -> list[tuple[str, dict]]:
    """Every status message the fleet side sees during the next ``seconds``."""
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await watcher.next_message(left)
        except TimeoutError:
            break
        if msg.topic.endswith("/status"):
            got.append((msg.topic, json.loads(msg.payload)))
    return got


async def _until_online(
    watcher: MqttClient, ids: set[str], agents: list[AgentProcess], timeout: float = 40.0
) -> None:
    online: set[str] = set()
    deadline = asyncio.get_running_loop().time() + timeout
    while online != ids:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(
                f"agents not online ({online} of {ids}): " + "\n".join(a.log_text()[-1500:] for a in agents)
            )
        try:
            msg = await watcher.next_message(left)
        except TimeoutError:
            continue
        did = msg.topic.split("/")[1]
        if msg.topic.endswith("/status") and not msg.retain and json.loads(msg.payload).get("online"):
            online.add(did)  # live from the agent, not the retained copy provisioning left


async def _telemetry_from(watcher: MqttClient, did: str, timeout: float = 10.0) -> None:
    while True:
        msg = await watcher.next_message(timeout)
        if msg.topic == f"dev/{did}/telemetry":
            return


def _assert_b_kept(seen: list[tuple[str, dict]], b: str) -> None:
    lost_b = [s for t, s in seen if t == f"dev/{b}/status" and not s.get("online")]
    assert not lost_b, f"the fleet was told B is gone: {lost_b}"


async def test_no_client_can_take_over_a_devices_client_id(fleet: Fleet, tmp_path: Path) -> None:
    (a, a_dir, a_cfg), (b, _b_dir, b_cfg) = await _provision_two(fleet, tmp_path)
    watcher = fleet.fleet_service("takeover-watch")
    await watcher.connect("127.0.0.1", getattr(fleet, "service_port", fleet.port))
    assert await watcher.subscribe("dev/+/status") < 0x80
    assert await watcher.subscribe(f"dev/{b}/telemetry") < 0x80
    agents = [_agent(tmp_path, "agent-a", a_cfg), _agent(tmp_path, "agent-b", b_cfg)]
    try:
        await _until_online(watcher, {a, b}, agents)
        await _statuses(watcher, 1.0)  # settle: retained copies and the first live ones
        # 1. device A, with its own valid certificate, asks for B's client id (both spellings)
        for wanted in (b, f"dev-{b}"):
            thief = device_client(a_dir, wanted)
            await thief.connect("127.0.0.1", fleet.port)
            await asyncio.sleep(1.0)
            await thief.close()
        _assert_b_kept(await _statuses(watcher, 2.0), b)
        # 2. a plain client (no certificate) on the claim listener, with and without a made-up login
        for login in ({}, {"username": b, "password": "x"}, {"username": f"dev-{b}", "password": ""}):
            plain = MqttClient(
                f"dev-{b}" if not login else login["username"], tls=tls_context(verify=False), **login
            )
            with pytest.raises(MqttError) as refused:
                await plain.connect("127.0.0.1", fleet.claim_port, timeout=5)
            assert refused.value.kind in ("rejected", "closed"), refused.value
            await plain.close()
        # 3. and on the device listener a client without a certificate does not even finish TLS
        plain = MqttClient(b, tls=tls_context(str(fleet.broker_dir / "ca.crt")))
        with pytest.raises(MqttError):
            await plain.connect("127.0.0.1", fleet.port, timeout=5)
        await plain.close()
        _assert_b_kept(await _statuses(watcher, 2.0), b)
        await _telemetry_from(watcher, b)  # and B's link still delivers
        log = fleet.broker.log_path.read_text(errors="replace")
        assert f"Client {b} already connected" not in log and f"Client dev-{b} already connected" not in log
    finally:
        for agent in agents:
            agent.stop()
        await watcher.close()


async def test_a_claimant_cannot_kick_another_claimant(fleet: Fleet) -> None:
    first, second = create_tokens(fleet, count=2)
    first_id, second_id = ClaimToken.parse(first).id, ClaimToken.parse(second).id
    victim = MqttClient(second_id, tls=tls_context(verify=False), **claim_login(second))
    await victim.connect("127.0.0.1", fleet.claim_port)
    assert await victim.subscribe(f"claim/{second_id}/res") < 0x80
    # the first claimant logs in with its own token but asks for the second's client id
    intruder = MqttClient(second_id, tls=tls_context(verify=False), **claim_login(first))
    await intruder.connect("127.0.0.1", fleet.claim_port)
    # ... and with the second's id as username, it needs the second's secret
    guess = MqttClient(
        second_id, tls=tls_context(verify=False), username=second_id, password=claim_login(first)["password"]
    )
    with pytest.raises(MqttError):
        await guess.connect("127.0.0.1", fleet.claim_port, timeout=5)
    await guess.close()
    await asyncio.sleep(0.5)
    assert victim.connected, victim.disconnect_reason
    watcher = fleet.fleet_service("claim-kick-watch")
    await watcher.connect("127.0.0.1", getattr(fleet, "service_port", fleet.port))
    await watcher.publish(f"claim/{second_id}/res", b'{"marker": 1}')
    while True:  # the victim's session is the one that still gets its answers
        msg = await victim.next_message(5)
        if msg.topic == f"claim/{second_id}/res":
            break
    for m in (intruder, victim, watcher):
        await m.close()
    log = fleet.broker.log_path.read_text(errors="replace")
    assert f"Client {second_id} already connected" not in log
    assert f"as {first_id} " in log  # the intruder got its own token id, whatever it asked for


async def test_renewal_in_a_running_agent_keeps_its_connection(fleet: Fleet, tmp_path: Path) -> None:
    """The agent renews over its fleet link's own connection: a second connection with the device
    certificate would get the same (bound) client id and disconnect the agent's link."""
    from device_agent.agent import Agent
    from device_agent.fleetlink import FleetLink
    from provisioning.renewal import RenewalComponent

    responder = fleet.responder()
    task = asyncio.create_task(responder.run())
    await asyncio.wait_for(responder.ready.wait(), 10)
    (token,) = create_tokens(fleet, group="renew")
    cfg_path = tmp_path / "r.toml"
    ident = await provision(
        ProvisionRequest(
            ClaimToken.parse(token),
            f"127.0.0.1:{fleet.claim_port}",
            cfg_path,
            identity_dir=tmp_path / "id",
            say=lambda s: None,
        )
    )
    did = ident.device_id
    old_cert = (tmp_path / "id" / "device.crt").read_bytes()
    cfg = load_config(cfg_path)
    cfg.device.state_dir = str(tmp_path / "state")
    watcher = fleet.fleet_service("renew-watch")
    await watcher.connect("127.0.0.1", getattr(fleet, "service_port", fleet.port))
    await watcher.subscribe(f"dev/{did}/status")
    agent = Agent(cfg)
    agent.add(FleetLink(agent))
    renewal = RenewalComponent(agent)
    agent.add(renewal)
    await agent.start()
    try:
        await agent.get("fleet_link").wait_ready(15)  # type: ignore[union-attr]
        await _statuses(watcher, 1.0)
        await renewal.renew()
        assert (tmp_path / "id" / "device.crt").read_bytes() != old_cert
        seen = await _statuses(watcher, 2.0)
        assert not [s for _, s in seen if not s.get("online")], (
            f"the fleet was told the device is gone: {seen}"
        )
        assert f"Client {did} already connected" not in fleet.broker.log_path.read_text(errors="replace")
    finally:
        await agent.stop()
        await responder.stop()
        await asyncio.wait_for(task, 10)
        await watcher.close()
