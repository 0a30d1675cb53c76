"""Broker lock-down with the generated mosquitto configuration: per-device ACLs, the claim
listener's reach, revocation (CRL) and foreign CAs. Every "denied" is proven by a marker message
sent after it on an allowed path: the marker arrives, the denied message never does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.fleetlink.mqtt import MqttClient, MqttError, tls_context
from fleet.provisioning.ca import FleetCA, cert_pem
from provisioning.provision import ProvisionRequest, provision
from provisioning.token import ClaimToken
from tests.test_prov_support import Fleet, claim_login, create_tokens, device_client, run_cli, start_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(tmp_path_factory.mktemp("prov-sec"))
    yield f
    f.broker.stop()


@pytest.fixture
async def devices(fleet: Fleet, tmp_path: Path) -> dict[str, Path]:
    """Two freshly provisioned devices: {device_id: identity_dir}."""
    r = fleet.responder()
    task = asyncio.create_task(r.run())
    await asyncio.wait_for(r.ready.wait(), 10)
    out = {}
    try:
        for i, token in enumerate(create_tokens(fleet, count=2)):
            ident = await provision(
                ProvisionRequest(
                    ClaimToken.parse(token),
                    f"127.0.0.1:{fleet.claim_port}",
                    tmp_path / f"d{i}.toml",
                    identity_dir=tmp_path / f"id{i}",
                    say=lambda s: None,
                )
            )
            out[ident.device_id] = tmp_path / f"id{i}"
    finally:
        await r.stop()
        await asyncio.wait_for(task, 10)
    return out


async def drain(m: MqttClient, seconds: float) -> list[tuple[str, bytes]]:
    got = []
    try:
        while True:
            msg = await m.next_message(seconds)
            got.append((msg.topic, msg.payload))
    except TimeoutError:
        return got


async def wait_for_topic(m: MqttClient, topic: str, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """Collect messages until one on ``topic`` arrives; returns all collected (marker last)."""
    got = []
    while True:
        msg = await m.next_message(timeout)
        got.append((msg.topic, msg.payload))
        if msg.topic == topic:
            return got


async def test_device_cannot_touch_another_devices_topics(fleet: Fleet, devices: dict[str, Path]) -> None:
    (a, a_dir), (b, b_dir) = devices.items()
    dev_a, dev_b = device_client(a_dir, f"{a}-t"), device_client(b_dir, f"{b}-t")
    watcher = fleet.fleet_service("acl-watch")
    for m, port in ((dev_a, fleet.port), (dev_b, fleet.port), (watcher, fleet.service_port)):
        await m.connect("127.0.0.1", port)
    assert await watcher.subscribe("dev/#") < 0x80
    assert await dev_b.subscribe(f"dev/{b}/cmd/#") < 0x80
    # mosquitto 2.0 may grant A's subscriptions to B's topics (SUBACK), but checks read access on
    # every delivery: the proof is that nothing of B's ever reaches A
    await dev_a.subscribe(f"dev/{b}/cmd/#")
    await dev_a.subscribe("#")
    await drain(watcher, 0.3)
    await drain(dev_a, 0.3)
    # A publishes as B (status, telemetry) and a command to B: all refused by the broker
    for topic in (f"dev/{b}/status", f"dev/{b}/telemetry", f"dev/{b}/cmd/reboot", f"dev/{b}/renew/req"):
        rc = await dev_a.publish(topic, b'{"forged": true}')
        assert rc == 0x87, (topic, rc)
    # markers on allowed paths, sent after the forgeries
    await dev_a.publish(f"dev/{a}/telemetry", b'{"marker": "a"}')
    await watcher.publish(f"dev/{b}/cmd/ping", b'{"marker": "fleet"}')
    seen_by_fleet = await wait_for_topic(watcher, f"dev/{a}/telemetry")
    seen_by_b = await wait_for_topic(dev_b, f"dev/{b}/cmd/ping")
    assert all(b"forged" not in p for _, p in seen_by_fleet + seen_by_b), seen_by_fleet + seen_by_b
    # B's own traffic never reaches A (A subscribed to '#')
    await dev_b.publish(f"dev/{b}/telemetry", b'{"secret": "b"}')
    await wait_for_topic(watcher, f"dev/{b}/telemetry")
    await watcher.publish(f"dev/{a}/cmd/ping", b'{"marker": "a2"}')
    got_a = await wait_for_topic(dev_a, f"dev/{a}/cmd/ping")  # A gets its own command via '#'...
    got_a += await drain(dev_a, 0.5)
    assert all(not t.startswith(f"dev/{b}/") for t, _ in got_a), got_a  # ...and nothing of B's
    for m in (dev_a, dev_b, watcher):
        await m.close()


async def test_device_diag_ping_round_trip_only_on_its_own_subtree(
    fleet: Fleet, devices: dict[str, Path]
) -> None:
    """Diagnostics' MQTT round trip (device -> broker -> device on dev/{id}/diag/ping/{token})."""
    (a, a_dir), (b, b_dir) = devices.items()
    dev_a, dev_b = device_client(a_dir, f"{a}-p"), device_client(b_dir, f"{b}-p")
    for m in (dev_a, dev_b):
        await m.connect("127.0.0.1", fleet.port)
    assert await dev_a.subscribe(f"dev/{a}/diag/ping/+") < 0x80
    assert await dev_b.subscribe(f"dev/{b}/diag/ping/+") < 0x80
    await dev_a.subscribe(f"dev/{b}/diag/ping/+")  # may be granted; delivery is checked per message
    # its own ping comes back to itself
    assert await dev_a.publish(f"dev/{a}/diag/ping/tok1", b'{"t": 1}') == 0
    got = await wait_for_topic(dev_a, f"dev/{a}/diag/ping/tok1")
    assert got[-1][1] == b'{"t": 1}'
    # A cannot inject a ping into B's subtree
    assert await dev_a.publish(f"dev/{b}/diag/ping/forged", b'{"forged": true}') == 0x87
    # B's own ping reaches B (marker after the forgery) but never A
    assert await dev_b.publish(f"dev/{b}/diag/ping/tok2", b'{"t": 2}') == 0
    seen_by_b = await wait_for_topic(dev_b, f"dev/{b}/diag/ping/tok2")
    assert all(b"forged" not in p for _, p in seen_by_b), seen_by_b
    seen_by_a = await drain(dev_a, 0.5)
    assert all(not t.startswith(f"dev/{b}/") for t, _ in seen_by_a), seen_by_a
    for m in (dev_a, dev_b):
        await m.close()


async def test_claim_listener_reaches_only_claim_topics(fleet: Fleet, devices: dict[str, Path]) -> None:
    (a, a_dir), _ = devices.items()
    dev_a = device_client(a_dir, f"{a}-c")
    watcher = fleet.fleet_service("claim-watch")
    # an unclaimed device logs in with its token (id, and the SHA-256 of the secret)
    (token,) = create_tokens(fleet)
    mine = ClaimToken.parse(token).id
    claimer = MqttClient(mine, tls=tls_context(verify=False), **claim_login(token))
    await dev_a.connect("127.0.0.1", fleet.port)
    await watcher.connect("127.0.0.1", fleet.service_port)
    await claimer.connect("127.0.0.1", fleet.claim_port)
    anonymous = MqttClient("zzzzzzzz", tls=tls_context(verify=False))
    with pytest.raises(MqttError):  # no claim, no login: the claim listener is not anonymous any more
        await anonymous.connect("127.0.0.1", fleet.claim_port, timeout=5)
    assert await dev_a.subscribe(f"dev/{a}/cmd/#") < 0x80
    assert await watcher.subscribe("dev/#") < 0x80
    assert await watcher.subscribe("claim/+/req") < 0x80
    await claimer.subscribe("dev/#")  # granted or not, nothing is delivered (below)
    await claimer.subscribe("claim/yyyyyyyy/res")  # another device's claim answer
    await claimer.subscribe("#")
    await drain(claimer, 0.3)
    await drain(watcher, 0.3)
    assert await claimer.publish(f"dev/{a}/cmd/reboot", b'{"forged": 1}') == 0x87
    assert await claimer.publish(f"dev/{a}/status", b'{"forged": 2}') == 0x87
    assert await claimer.publish("claim/yyyyyyyy/req", b'{"forged": 3}') == 0x87
    # its own claim topic works: this is the marker
    assert await claimer.publish(f"claim/{mine}/req", b'{"marker": 1}') in (0, 16)
    got = await wait_for_topic(watcher, f"claim/{mine}/req")
    assert all(b"forged" not in p for _, p in got), got
    await watcher.publish(f"dev/{a}/cmd/ping", b'{"marker": 2}')
    got_a = await wait_for_topic(dev_a, f"dev/{a}/cmd/ping")
    assert all(b"forged" not in p for _, p in got_a)
    # device traffic and other claims' answers never reach the claim listener
    await dev_a.publish(f"dev/{a}/telemetry", b'{"t": 1}')
    await watcher.publish("claim/yyyyyyyy/res", b'{"ok": true}')
    await watcher.publish(f"claim/{mine}/res", b'{"marker": 3}')
    got_c = await wait_for_topic(claimer, f"claim/{mine}/res")
    assert [t for t, _ in got_c if t != "claim/ca"] == [f"claim/{mine}/res"], got_c
    # and a client without a certificate cannot use the device listener at all
    anon = MqttClient("anon", tls=tls_context(str(fleet.broker_dir / "ca.crt")))
    with pytest.raises(MqttError):
        await anon.connect("127.0.0.1", fleet.port, timeout=5)
    for m in (dev_a, watcher, claimer):
        await m.close()


async def test_foreign_ca_certificate_is_refused(
    fleet: Fleet, devices: dict[str, Path], tmp_path: Path
) -> None:
    a, a_dir = next(iter(devices.items()))
    # another CA issues a certificate with the same CN as a real device
    rogue = FleetCA.init(tmp_path / "rogue")
    key, cert = rogue.issue_client(a)
    (tmp_path / "r.key").write_bytes(key)
    (tmp_path / "r.crt").write_bytes(cert_pem(cert))
    m = MqttClient(
        "rogue", tls=tls_context(str(a_dir / "ca.crt"), str(tmp_path / "r.crt"), str(tmp_path / "r.key"))
    )
    with pytest.raises(MqttError) as e:
        await m.connect("127.0.0.1", fleet.port, timeout=5)
    assert e.value.kind in ("tls", "closed", "rejected")
    # the genuine one still connects
    ok = device_client(a_dir, "genuine")
    await ok.connect("127.0.0.1", fleet.port)
    await ok.close()


async def test_revoked_certificate_is_refused(fleet: Fleet, devices: dict[str, Path]) -> None:
    (a, a_dir), (b, b_dir) = devices.items()
    before = device_client(a_dir, "before-revoke")
    await before.connect("127.0.0.1", fleet.port)  # valid until revoked
    await before.close()
    r = run_cli(
        "fleet.cli", "ca", "revoke", a, "--reason", "stolen", env={"FLEETCTL_STATE_DIR": str(fleet.state)}
    )
    assert r.returncode == 0, r.stderr
    assert "revoked 1 certificate" in r.stdout
    os.kill(fleet.broker.proc.pid, signal.SIGHUP)  # mosquitto re-reads the CRL on reload
    refused: MqttError | None = None
    for attempt in range(25):  # the reload is asynchronous: allow it a moment
        m = device_client(a_dir, f"revoked-{attempt}")
        try:
            await m.connect("127.0.0.1", fleet.port, timeout=5)
        except MqttError as exc:
            refused = exc
            break
        await m.close()
        await asyncio.sleep(0.2)
    assert refused is not None and refused.kind in ("tls", "closed", "rejected")
    ok = device_client(b_dir, "still-good")
    await ok.connect("127.0.0.1", fleet.port)
    await ok.close()
    assert fleet.store.is_revoked(a)  # so it cannot renew its way back either
    assert any(e["event"] == "device_revoked" and e["device_id"] == a for e in fleet.store.audit_log())


def test_generated_acl_gives_each_device_exactly_its_subtree(fleet: Fleet) -> None:
    acl = (fleet.broker_dir / "acl-devices").read_text()
    patterns = [line.split(None, 2)[1:] for line in acl.splitlines() if line.startswith("pattern")]
    assert all(topic.startswith("dev/%u/") for _, topic in patterns)
    assert ["read", "dev/%u/cmd/#"] in patterns and ["write", "dev/%u/status"] in patterns
    assert ["readwrite", "dev/%u/diag/ping/#"] in patterns
    conf = (fleet.broker_dir / "mosquitto.conf").read_text()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "crlfile",
        "allow_anonymous false",
    ):
        assert line in conf
    assert json.loads((fleet.state / "brokers.json").read_text()) == [str(fleet.broker_dir)]
