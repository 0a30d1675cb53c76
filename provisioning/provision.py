"""`device-agent provision`: key on the device, claim, store identity, write config, go online."""

from __future__ import annotations

import asyncio
import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent import protocol
from device_agent.config import ConfigError, config_from_dict, dump_toml
from device_agent.fleetlink.mqtt import MqttClient, MqttError, split_endpoint, tls_context
from ota.atomic import write_atomic
from provisioning.claim import ProvisionError, check_clock_floor, claim, mqtt_failure
from provisioning.identity import IdentityStore, LoadedIdentity, service_owner
from provisioning.token import ClaimToken

DEFAULT_CLAIM_PORT = 8884
AGENT_VERSION = "0.1.0"


def agent_version() -> str:
    try:
        from importlib.metadata import version

        return version("device-agent")
    except Exception:
        return AGENT_VERSION


@dataclass
class ProvisionRequest:
    token: ClaimToken
    fleet: str  # HOST[:PORT] of the claim listener
    config_path: Path
    name: str = ""
    location: str = ""
    hardware: str = ""
    identity_dir: Path | None = None  # default from the configuration
    force: bool = False
    timeout: float = 20.0
    clock: Callable[[], float] = time.time
    say: Callable[[str], None] = field(default=print)


def read_config_dict(path: Path) -> dict[str, Any]:
    """The existing configuration as a dict ({} when absent); refuses a broken file."""
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
        config_from_dict(data)
    except (tomllib.TOMLDecodeError, ConfigError, UnicodeDecodeError) as exc:
        raise ProvisionError(
            "local",
            f"{path} is not a valid agent configuration ({exc}): fix or remove it "
            f"first; nothing was changed.",
        ) from None
    return data


def write_agent_config(path: Path, data: dict[str, Any], owner: tuple[int, int] | None) -> None:
    config_from_dict(data)  # never write a file the agent would refuse
    write_atomic(path, dump_toml(data), mode=0o640, owner=owner)


def _check_writable(config_path: Path) -> None:
    """Refuse before the token is used when the configuration cannot be written."""
    parent = config_path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            "local", f"cannot create {parent} ({exc.strerror}): run as root (sudo)."
        ) from None
    target = config_path if config_path.exists() else parent
    if not os.access(target, os.W_OK) or not os.access(parent, os.W_OK):
        raise ProvisionError("local", f"cannot write {config_path}: run as root (sudo) or pass --config.")


async def report_online(
    ident: LoadedIdentity, store: IdentityStore, host: str, port: int, timeout: float = 10.0
) -> None:
    """Connect as the device (mutual TLS, MQTT 5) and publish its retained status: known to the fleet
    (``provisioned``) but offline (``reason: provisioned``) until the agent runs and says online; a
    provisioned device that never ran the agent must not show online for ever."""
    did = ident.device_id
    status_topic = protocol.status(did)
    will = json.dumps({"online": False, "ts": time.time()}).encode()
    tls = tls_context(str(store.ca_path), str(store.cert_path), str(store.key_path))
    m = MqttClient(did, tls=tls, will=(status_topic, will, True))
    try:
        await m.connect(host, port, timeout=timeout)
    except MqttError as exc:
        if exc.kind in ("dns", "network", "refused", "timeout"):
            raise mqtt_failure(exc, host, port, "The fleet broker at") from None
        raise ProvisionError(
            "connect_as_device", f"The broker refused the device's new certificate: {exc}"
        ) from None
    try:
        status = {
            "online": False,
            "reason": "provisioned",
            "version": agent_version(),
            "ts": round(time.time(), 3),
            "provisioned": True,
            "group": ident.info.get("group", ""),
        }
        rc = await m.publish(status_topic, json.dumps(status).encode(), retain=True, timeout=timeout)
        if rc >= 0x80:
            raise ProvisionError(
                "connect_as_device",
                f"The broker refused the device's status ({rc:#x}): its ACL does not match this device id.",
            )
    finally:
        await m.close()


async def provision(req: ProvisionRequest) -> LoadedIdentity:
    """The whole technician flow; raises ProvisionError (with its exit code) on any failure."""
    say = req.say
    host, claim_port = split_endpoint(req.fleet, DEFAULT_CLAIM_PORT)
    cfg_dict = read_config_dict(req.config_path)
    cfg = config_from_dict(cfg_dict)
    ident_dir = req.identity_dir or cfg.provisioning.resolve_identity_dir(cfg.device.state_dir)
    owner = service_owner(cfg.provisioning.service_user)
    store = IdentityStore(ident_dir, owner=owner)
    if store.exists() and not req.force:
        raise ProvisionError(
            "local",
            f"This device already has an identity in {ident_dir}: run "
            f"`device-agent factory-reset --yes` first (or pass --force).",
        )
    check_clock_floor(req.clock())
    _check_writable(req.config_path)
    say(f"Generating the device key in {store.key_path} (it never leaves the device)...")
    pending = store.dir / "device.key.pending"
    key = await asyncio.to_thread(store.new_key, pending)
    csr = store.csr(key)
    say(f"Claiming at {host}:{claim_port} with token {req.token.id}...")
    info = {"name": req.name, "location": req.location, "hardware": req.hardware or cfg.device.hardware}
    try:
        result = await claim(host, claim_port, req.token, csr, info, timeout=req.timeout, clock=req.clock)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    # install: key, certificate, CA, identity record (key first: a cert without its key is useless)
    for stale in ("device.key.new", "device.crt.new"):
        (store.dir / stale).unlink(missing_ok=True)
    pending.replace(store.key_path)
    mqtts_url = f"mqtts://{host}:{result.mqtts_port}"
    store.save(
        result.cert_pem,
        result.ca_pem,
        {
            "device_id": result.device_id,
            "group": result.group,
            "fleet": mqtts_url,
            "claim_endpoint": f"{host}:{claim_port}",
            "claim_id": req.token.id,
            "provisioned_at": round(time.time(), 3),
            "name": req.name,
            "location": req.location,
        },
    )
    ident = store.load()
    say(
        f"Device id {ident.device_id}, group {result.group}, certificate valid until "
        f"{ident.not_after:%Y-%m-%d}."
    )
    device = dict(cfg_dict.get("device", {}))
    device.update({"id": result.device_id, "group": result.group})
    if req.name:
        device["name"] = req.name
    if req.location:
        device["location"] = req.location
    mqtt = dict(cfg_dict.get("mqtt", {}))
    mqtt.update(
        {
            "url": mqtts_url,
            "ca_file": str(store.ca_path),
            "cert_file": str(store.cert_path),
            "key_file": str(store.key_path),
        }
    )
    mqtt.pop("username", None)
    mqtt.pop("password", None)
    new_cfg = {**cfg_dict, "device": device, "mqtt": mqtt}
    if req.identity_dir:
        new_cfg["provisioning"] = {**cfg_dict.get("provisioning", {}), "identity_dir": str(ident_dir)}
    # root-owned, readable by the service user's group (it may hold secrets of other features)
    write_agent_config(req.config_path, new_cfg, owner=(os.geteuid(), owner[1]) if owner else None)
    say(f"Wrote the agent configuration {req.config_path}.")
    say(f"Connecting to {mqtts_url} as {ident.device_id} (mutual TLS)...")
    try:
        await report_online(ident, store, host, result.mqtts_port, timeout=min(req.timeout, 15.0))
    except ProvisionError as exc:
        raise ProvisionError(
            exc.kind,
            f"The device is provisioned as {ident.device_id}, but could not report "
            f"online: {exc} Run `device-agent doctor` once the cause is fixed.",
        ) from None
    say(
        f"Registered: {protocol.status(ident.device_id)} published (offline until the agent runs). "
        "Provisioning complete."
    )
    return ident
