"""Helpers for the provisioning tests (no tests here): a fleet with its CA, a mosquitto started
with the configuration `fleetctl broker-config` wrote, and device-side helpers."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from device_agent.fleetlink.mqtt import MqttClient, tls_context
from fleet.provisioning.broker import service_identity_paths
from fleet.provisioning.ca import FleetCA
from fleet.provisioning.responder import ClaimResponder
from fleet.provisioning.store import ProvisioningStore
from provisioning.token import ClaimToken, hash_secret
from tests.support.mosquitto import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run `python -m <module> args` as a real subprocess (fleet.cli or device_agent.cli)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


async def arun_cli(module: str, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """The same, without blocking the event loop (the claim responder runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


@dataclass
class Fleet:
    state: Path
    broker_dir: Path
    broker: Mosquitto
    port: int
    claim_port: int
    service_port: int  # the fleet service's listener (service CA)

    @property
    def ca(self) -> FleetCA:
        return FleetCA.load(self.state)

    @property
    def store(self) -> ProvisioningStore:
        return ProvisioningStore(self.state)

    def responder(self, **kw: object) -> ClaimResponder:
        return ClaimResponder(self.state, "127.0.0.1", self.service_port, **kw)  # type: ignore[arg-type]

    def fleet_service(self, client_id: str = "fleet-test") -> MqttClient:
        key, crt = service_identity_paths(self.state)
        return MqttClient(client_id, tls=tls_context(str(self.broker_dir / "ca.crt"), str(crt), str(key)))


def start_fleet(base: Path) -> Fleet:
    """`fleetctl ca init` + `fleetctl broker-config` (real CLI), then mosquitto with that config."""
    state, broker_dir = base / "fleet-state", base / "broker"
    port, claim_port, service_port = free_port(), free_port(), free_port()
    env = {"FLEETCTL_STATE_DIR": str(state)}
    r = run_cli("fleet.cli", "ca", "init", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "fleet.cli",
        "broker-config",
        "--out",
        str(broker_dir),
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
        "--port",
        str(port),
        "--claim-port",
        str(claim_port),
        "--service-port",
        str(service_port),
        "--bind",
        "127.0.0.1",
        "--user",
        "root",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    broker = Mosquitto(base / "mosq-work", plain=False)
    broker.config_path = broker_dir / "mosquitto.conf"  # the generated configuration, unchanged
    broker.ports = {"devices": port, "claim": claim_port, "service": service_port}
    broker.start()
    return Fleet(state, broker_dir, broker, port, claim_port, service_port)


def create_tokens(fleet: Fleet, group: str = "lobby", expires: str = "1h", count: int = 1) -> list[str]:
    r = run_cli(
        "fleet.cli",
        "claim",
        "create",
        "--group",
        group,
        "--expires",
        expires,
        "--count",
        str(count),
        env={"FLEETCTL_STATE_DIR": str(fleet.state)},
    )
    assert r.returncode == 0, r.stderr
    tokens = r.stdout.split()
    reload_claims(fleet, tokens[-1])
    return tokens


def claim_login(token: str) -> dict[str, str]:
    """The claim listener login of a token: username = token id, password = SHA-256 of its secret."""
    t = ClaimToken.parse(token)
    return {"username": t.id, "password": hash_secret(t.secret)}


def reload_claims(fleet: Fleet, token: str, timeout: float = 10.0) -> None:
    """SIGHUP the broker (as an operator reloads it after `claim create`); wait until ``token`` logs in."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    assert fleet.broker.proc is not None
    os.kill(fleet.broker.proc.pid, signal.SIGHUP)
    login = claim_login(token)
    deadline = time.monotonic() + timeout
    while True:
        result: list[int] = []
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=login["username"],
            protocol=mqtt.MQTTv5,
        )
        c.username_pw_set(login["username"], login["password"])
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        c.tls_set_context(ctx)
        c.on_connect = lambda client, userdata, flags, rc, props, result=result: result.append(int(rc.value))
        try:
            c.connect("127.0.0.1", fleet.claim_port, 5)
            end = time.monotonic() + 3
            while not result and time.monotonic() < end:
                c.loop(0.05)
        finally:
            c.disconnect()
        if result and result[0] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"claim {login['username']} cannot log in after the reload: {result}")
        time.sleep(0.05)


def device_client(identity_dir: Path, client_id: str, ca_file: Path | None = None) -> MqttClient:
    """An MQTT client authenticating with a device's certificate."""
    return MqttClient(
        client_id,
        tls=tls_context(
            str(ca_file or identity_dir / "ca.crt"),
            str(identity_dir / "device.crt"),
            str(identity_dir / "device.key"),
        ),
    )
