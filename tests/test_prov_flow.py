"""End-to-end provisioning through a real mosquitto running the generated configuration:
`fleetctl` and `device-agent` run as real subprocesses, the claim responder in the test's loop."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent import telemetry_codec
from device_agent.config import load_config
from tests.test_prov_support import Fleet, arun_cli, create_tokens, device_client, start_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(tmp_path_factory.mktemp("prov-flow"))
    yield f
    f.broker.stop()


@pytest.fixture
async def responder(fleet: Fleet):
    r = fleet.responder()
    task = asyncio.create_task(r.run())
    await asyncio.wait_for(r.ready.wait(), 10)
    yield r
    await r.stop()
    await asyncio.wait_for(task, 10)


async def provision_cli(
    tmp: Path, name: str, token: str, fleet: Fleet, *extra: str
) -> tuple[int, str, str, Path, Path]:
    cfg, ident = tmp / name / "agent.toml", tmp / name / "identity"
    rc, out, err = await arun_cli(
        "device_agent.cli",
        "provision",
        "--claim",
        token,
        "--fleet",
        f"127.0.0.1:{fleet.claim_port}",
        "--name",
        name,
        "--location",
        "hall",
        "--config",
        str(cfg),
        "--identity-dir",
        str(ident),
        "--timeout",
        "10",
        *extra,
    )
    return rc, out, err, cfg, ident


async def test_two_devices_end_to_end(fleet: Fleet, responder, tmp_path: Path) -> None:
    tokens = create_tokens(fleet, group="lobby", count=2)
    watcher = fleet.fleet_service("watch-e2e")
    await watcher.connect("127.0.0.1", fleet.service_port)
    assert await watcher.subscribe("dev/+/status") < 0x80
    ids = []
    for i, token in enumerate(tokens):
        rc, out, err, cfg_path, ident = await provision_cli(tmp_path, f"cam{i}", token, fleet)
        assert rc == 0, out + err
        assert "Provisioning complete" in out
        # key made on the device, 0600; the directory private
        key = ident / "device.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(ident.stat().st_mode) == 0o700
        # the agent configuration: mqtts URL, ca/cert/key, device id/name/location/group; it loads
        cfg = load_config(cfg_path)
        info = json.loads((ident / "identity.json").read_text())
        assert cfg.device.id == info["device_id"] and cfg.device.group == "lobby"
        assert cfg.device.name == f"cam{i}" and cfg.device.location == "hall"
        assert cfg.mqtt.url == f"mqtts://127.0.0.1:{fleet.port}"
        assert cfg.mqtt.key_file == str(key) and cfg.mqtt.cert_file == str(ident / "device.crt")
        assert cfg.mqtt.ca_file == str(ident / "ca.crt")
        assert "device.key" not in (ident / "device.crt").read_text()
        ids.append(cfg.device.id)
    assert ids[0] != ids[1]
    # both connected as themselves and registered (retained, MQTT 5): offline until the agent runs
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 10
    while set(seen) != set(ids) and time.monotonic() < deadline:
        msg = await watcher.next_message(deadline - time.monotonic())
        seen[msg.topic.split("/")[1]] = json.loads(msg.payload)
    assert set(seen) == set(ids)
    assert all(not s["online"] and s["reason"] == "provisioned" and s["provisioned"] for s in seen.values())
    await watcher.close()
    # the fleet registered both in their group, and the claims are used
    devices = {d["id"]: d for d in fleet.store.devices()}
    assert {devices[i]["group"] for i in ids} == {"lobby"}
    assert devices[ids[0]]["name"] == "cam0"
    assert all(c.used_at for c in fleet.store.claims() if c.id in {t.split(".")[0] for t in tokens})
    # doctor (without hardware) passes on a provisioned device, and says so in JSON
    rc, out, err = await arun_cli(
        "device_agent.cli",
        "doctor",
        "--config",
        str(tmp_path / "cam0" / "agent.toml"),
        "--json",
        "--no-hardware",
    )
    report = json.loads(out)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["Identity"]["status"] == "pass", by_name
    assert by_name["Broker"]["status"] == "pass", by_name
    assert by_name["Clock"]["status"] == "pass"
    assert rc == (0 if report["ok"] else 1)


async def test_token_cannot_be_used_twice_and_is_audited(fleet: Fleet, responder, tmp_path: Path) -> None:
    (token,) = create_tokens(fleet)
    rc, out, err, *_ = await provision_cli(tmp_path, "first", token, fleet)
    assert rc == 0, out + err
    rc, out, err, cfg, ident = await provision_cli(tmp_path, "second", token, fleet)
    assert rc == 8, out + err
    assert "already used" in err
    assert not cfg.exists() and not (ident / "device.key").exists()  # nothing left behind
    events = [a["event"] for a in fleet.store.audit_log(token.split(".")[0])]
    assert events == ["claim_created", "device_claimed", "claim_refused"]
    assert fleet.store.audit_log(token.split(".")[0])[-1]["detail"]["code"] == "used_token"


async def test_expired_and_unknown_tokens_are_refused(fleet: Fleet, responder, tmp_path: Path) -> None:
    (token,) = create_tokens(fleet, expires="1s")
    await asyncio.sleep(1.2)
    rc, out, err, cfg, _ = await provision_cli(tmp_path, "late", token, fleet)
    assert rc == 7, out + err
    assert "expired" in err.lower()
    assert not cfg.exists()
    # right fleet (pin), unknown id/secret
    pin = token.split(".")[2]
    rc, out, err, *_ = await provision_cli(tmp_path, "forged", f"aaaaaaaa.{'b' * 20}.{pin}", fleet)
    assert rc == 6 and "unknown claim token" in err, err
    # a typo caught on the device
    rc, out, err, *_ = await provision_cli(tmp_path, "typo", token[:-3], fleet)
    assert rc == 6 and "Bad claim token" in err
    codes = [a["detail"].get("code") for a in fleet.store.audit_log() if a["event"] == "claim_refused"]
    assert "expired_token" in codes
    # an unknown token no longer reaches the fleet's audit log: the claim listener refuses its login
    # (username = token id, checked against claim-passwd), and the broker's log records it
    log = fleet.broker.log_path.read_text(errors="replace")
    assert "disconnected, not authorised" in log, log[-2000:]


async def test_technician_failures_have_clear_messages(fleet: Fleet, tmp_path: Path) -> None:
    (token,) = create_tokens(fleet)
    # broker unreachable: nothing listens on that port
    from tests.support.mosquitto import free_port

    rc, out, err = await arun_cli(
        "device_agent.cli",
        "provision",
        "--claim",
        token,
        "--fleet",
        f"127.0.0.1:{free_port()}",
        "--config",
        str(tmp_path / "a.toml"),
        "--identity-dir",
        str(tmp_path / "id"),
        "--timeout",
        "5",
    )
    assert rc == 4 and "unreachable" in err and "refused the connection" in err, err
    # no network / DNS: a name that cannot resolve
    rc, out, err = await arun_cli(
        "device_agent.cli",
        "provision",
        "--claim",
        token,
        "--fleet",
        "fleet.invalid:8884",
        "--config",
        str(tmp_path / "a.toml"),
        "--identity-dir",
        str(tmp_path / "id"),
        "--timeout",
        "5",
    )
    assert rc == 3 and "No network" in err, err
    # the broker is up but the claim service is not running (no responder in this test)
    rc, out, err = await arun_cli(
        "device_agent.cli",
        "provision",
        "--claim",
        token,
        "--fleet",
        f"127.0.0.1:{fleet.claim_port}",
        "--config",
        str(tmp_path / "a.toml"),
        "--identity-dir",
        str(tmp_path / "id"),
        "--timeout",
        "2",
    )
    # claim/ca is retained from earlier responders in this module, so either message is right
    assert rc == 4 and ("claim service" in err or "did not answer" in err), err
    assert not (tmp_path / "a.toml").exists() and not (tmp_path / "id" / "device.key").exists()


async def test_wrong_clock_is_refused_before_the_token_is_used(
    fleet: Fleet, responder, tmp_path: Path
) -> None:
    from provisioning.claim import ProvisionError
    from provisioning.provision import ProvisionRequest, provision
    from provisioning.token import ClaimToken

    (token,) = create_tokens(fleet)
    req = ProvisionRequest(
        ClaimToken.parse(token),
        f"127.0.0.1:{fleet.claim_port}",
        tmp_path / "c.toml",
        identity_dir=tmp_path / "id",
        clock=lambda: time.time() + 3600,
        say=lambda s: None,
    )
    with pytest.raises(ProvisionError) as e:
        await provision(req)
    assert e.value.kind == "clock" and e.value.exit_code == 5 and "ahead" in str(e.value)
    req.clock = lambda: 0.0  # 1970: an RTC-less board before NTP
    with pytest.raises(ProvisionError, match="cannot be right"):
        await provision(req)
    req.clock = time.time  # fixed: the same token still works
    ident = await provision(req)
    assert ident.device_id.startswith("dev-")


async def test_renewal_over_mtls_and_factory_reset(fleet: Fleet, responder, tmp_path: Path) -> None:
    (token,) = create_tokens(fleet)
    rc, out, err, cfg, ident = await provision_cli(tmp_path, "renewme", token, fleet)
    assert rc == 0, err
    old_cert, old_key = (ident / "device.crt").read_bytes(), (ident / "device.key").read_bytes()
    rc, out, err = await arun_cli("device_agent.cli", "renew-cert", "--config", str(cfg))
    assert rc == 0, out + err
    assert (ident / "device.crt").read_bytes() != old_cert and (ident / "device.key").read_bytes() != old_key
    assert stat.S_IMODE((ident / "device.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in ident.iterdir()) == ["ca.crt", "device.crt", "device.key", "identity.json"]
    # the renewed identity connects
    m = device_client(ident, "renewed")
    await m.connect("127.0.0.1", fleet.port)
    await m.close()
    # factory reset: refuses without --yes, then wipes identity and configuration
    rc, out, err = await arun_cli(
        "device_agent.cli", "factory-reset", "--config", str(cfg), "--identity-dir", str(ident)
    )
    assert rc == 2 and "device.key" in out and (ident / "device.key").exists()
    rc, out, err = await arun_cli(
        "device_agent.cli", "factory-reset", "--config", str(cfg), "--identity-dir", str(ident), "--yes"
    )
    assert rc == 0, err
    assert not cfg.exists() and not ident.exists()
    # doctor now says what to do
    rc, out, err = await arun_cli("device_agent.cli", "doctor", "--config", str(cfg), "--no-hardware")
    assert rc == 1


async def test_renewal_component_renews_when_due(fleet: Fleet, responder, tmp_path: Path) -> None:
    from device_agent.agent import Agent
    from provisioning.provision import ProvisionRequest, provision
    from provisioning.renewal import RenewalComponent
    from provisioning.token import ClaimToken

    (token,) = create_tokens(fleet)
    cfg_path = tmp_path / "agent.toml"
    await provision(
        ProvisionRequest(
            ClaimToken.parse(token),
            f"127.0.0.1:{fleet.claim_port}",
            cfg_path,
            identity_dir=tmp_path / "id",
            say=lambda s: None,
        )
    )
    cfg = load_config(cfg_path)
    agent = Agent(cfg)
    comp = RenewalComponent(agent)
    assert await comp.renew_if_due() is False  # 365 days left, renew at 30
    cfg.provisioning.renew_before_days = 400
    before = tomllib.loads(cfg_path.read_text())["mqtt"]["cert_file"]
    old = Path(before).read_bytes()
    assert await comp.renew_if_due() is True
    assert Path(before).read_bytes() != old
    assert agent.health.sample()["identity"]["present"] is True
    assert "cert.renew" in agent.commands.names()
    # a revoked device cannot renew
    fleet.store.revoke_device(cfg.device.id, "test")
    with pytest.raises(Exception, match="revoked"):
        await agent.commands.dispatch("cert.renew", {})
    assert any(a.code == "cert_renewal_failed" for a in agent.alerts.active())


@pytest.mark.parametrize("command", ["serve", "claim serve"])
async def test_fleetctl_serve_answers_claims(fleet: Fleet, tmp_path: Path, command: str) -> None:
    """`fleetctl serve --claims STATE` runs the claim responder next to the fleet worker;
    `fleetctl claim serve` runs it alone."""
    import sys

    from fleet.provisioning.broker import service_identity_paths
    from tests.test_prov_support import ROOT

    key, crt = service_identity_paths(fleet.state)
    if command == "serve":
        args = [
            "serve",
            "--mqtt",
            f"mqtts://127.0.0.1:{fleet.service_port}",
            "--ca",
            str(fleet.broker_dir / "ca.crt"),
            "--cert",
            str(crt),
            "--key",
            str(key),
            "--db",
            str(tmp_path / "fleet.db"),
            "--claims",
            str(fleet.state),
            "--worker-id",
            "p6",
        ]
    else:
        args = [
            "claim",
            "serve",
            "--broker",
            f"127.0.0.1:{fleet.service_port}",
            "--state-dir",
            str(fleet.state),
        ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        (token,) = create_tokens(fleet, group="served")
        rc, out, err, cfg, _ = await provision_cli(tmp_path, "served", token, fleet)
        assert rc == 0, out + err
        assert load_config(cfg).device.group == "served"
    finally:
        proc.terminate()
        log, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, log.decode()[-2000:]


async def test_interactive_provisioning_with_a_scanned_qr_code(
    fleet: Fleet, responder, tmp_path: Path
) -> None:
    import sys

    from provisioning.token import ClaimToken, qr_payload
    from tests.test_prov_support import ROOT

    (token,) = create_tokens(fleet, group="qr")
    scanned = qr_payload(ClaimToken.parse(token), f"127.0.0.1:{fleet.claim_port}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "device_agent.cli",
        "provision",
        "--interactive",
        "--config",
        str(tmp_path / "a.toml"),
        "--identity-dir",
        str(tmp_path / "id"),
        "--timeout",
        "10",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(f"{scanned}\nBack door\nYard\n".encode()), 60)
    assert proc.returncode == 0, out.decode() + err.decode()
    assert "Fleet address" not in out.decode()  # the QR code carried it
    cfg = load_config(tmp_path / "a.toml")
    assert (cfg.device.name, cfg.device.location, cfg.device.group) == ("Back door", "Yard", "qr")


async def test_the_written_configuration_drives_the_fleet_link(
    fleet: Fleet, responder, tmp_path: Path
) -> None:
    """The agent's own fleet link, with the configuration provisioning wrote, gets through the
    locked-down broker: status and telemetry arrive (telemetry carries the identity health)."""
    fleetlink = pytest.importorskip("device_agent.fleetlink")
    from device_agent.agent import Agent
    from provisioning.provision import ProvisionRequest, provision
    from provisioning.renewal import RenewalComponent
    from provisioning.token import ClaimToken

    (token,) = create_tokens(fleet, group="linked")
    ident = await provision(
        ProvisionRequest(
            ClaimToken.parse(token),
            f"127.0.0.1:{fleet.claim_port}",
            tmp_path / "a.toml",
            identity_dir=tmp_path / "id",
            say=lambda s: None,
        )
    )
    cfg = load_config(tmp_path / "a.toml")
    cfg.device.state_dir = str(tmp_path / "state")
    watcher = fleet.fleet_service("watch-link")
    await watcher.connect("127.0.0.1", fleet.service_port)
    await watcher.subscribe(f"dev/{ident.device_id}/telemetry")
    agent = Agent(cfg)
    agent.add(fleetlink.FleetLink(agent))
    agent.add(RenewalComponent(agent))
    await agent.start()
    try:
        msg = await watcher.next_message(15)
        sample = json.loads(telemetry_codec.decode(msg.payload, telemetry_codec.message_content_type(msg)))
        assert sample["health"]["identity"]["device_id"] == ident.device_id
    finally:
        await agent.stop()
        await watcher.close()
