"""`fleetctl broker-config`: a complete, locked-down mosquitto configuration for the fleet.

Two listeners share one topic tree:

- the **device listener** (mutual TLS): ``require_certificate true``, ``use_identity_as_username
  true`` (the certificate CN is the MQTT username), a CRL, and an ACL giving each device exactly
  its own ``dev/<id>/...`` subtree and the fleet service its rights;
- the **claim listener** (server TLS only, anonymous): a client may publish only on
  ``claim/<its client id>/req``, read only ``claim/<its client id>/res`` and ``claim/ca``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fleet.provisioning.ca import FLEET_SERVICE_CN, FleetCA, cert_pem
from fleet.provisioning.store import ProvisioningStore
from ota.atomic import write_atomic
from provisioning.identity import service_owner

# What a device may do in its own subtree (see docs/protocol.md and docs/provisioning.md).
DEVICE_ACL = """\
# every device: exactly its own subtree (username = certificate CN = device id)
pattern write dev/%u/status
pattern write dev/%u/telemetry
pattern write dev/%u/events
pattern write dev/%u/res
pattern write dev/%u/logs/#
pattern write dev/%u/rtc/#
pattern read dev/%u/rtc/#
pattern read dev/%u/cmd/#
pattern write dev/%u/renew/req
pattern read dev/%u/renew/res
pattern readwrite dev/%u/diag/ping/#
"""

FLEET_ACL = f"""\
# the fleet service (certificate CN {FLEET_SERVICE_CN}): every device, the claim requests
user {FLEET_SERVICE_CN}
topic readwrite dev/#
topic readwrite fleet/#
topic read claim/+/req
topic write claim/+/res
topic write claim/ca
"""

CLAIM_ACL = """\
# claim listener: anonymous clients, each only its own claim (client id = claim token id),
# plus the fleet CA certificate (retained, published by the fleet service)
topic read claim/ca
pattern write claim/%c/req
pattern read claim/%c/res
"""


@dataclass
class BrokerFiles:
    out_dir: Path
    config: Path
    ca: Path
    crl: Path
    port: int
    claim_port: int


def service_identity_paths(state_dir: str | Path) -> tuple[Path, Path]:
    d = Path(state_dir) / "service"
    return d / f"{FLEET_SERVICE_CN}.key", d / f"{FLEET_SERVICE_CN}.crt"


def ensure_service_identity(ca: FleetCA, store: ProvisioningStore, state_dir: str | Path) -> tuple[Path, Path]:
    """The fleet service's own client certificate (CN ``fleet-service``), issued once."""
    key_path, crt_path = service_identity_paths(state_dir)
    if not (key_path.exists() and crt_path.exists()):
        key, cert = ca.issue_client(FLEET_SERVICE_CN)
        write_atomic(key_path, key, mode=0o600)
        write_atomic(crt_path, cert_pem(cert))
        store.record_cert(cert.serial_number, FLEET_SERVICE_CN, "service", cert.not_valid_before_utc,
                          cert.not_valid_after_utc)
    return key_path, crt_path


def write_crl(ca: FleetCA, store: ProvisioningStore, state_dir: str | Path) -> list[Path]:
    """Re-issue the CRL into the state dir and every broker directory written before."""
    crl = ca.crl(store.revoked())
    targets = [Path(state_dir) / "ca" / "crl.pem"]
    reg = Path(state_dir) / "brokers.json"
    if reg.exists():
        targets += [Path(p) / "crl.pem" for p in json.loads(reg.read_text())]
    written = []
    for t in targets:
        if t.parent.is_dir():
            write_atomic(t, crl, mode=0o644)
            written.append(t)
    return written




def write_broker_config(state_dir: str | Path, out_dir: str | Path, hosts: list[str], port: int = 8883,
                        claim_port: int = 8884, bind: str = "", log_dest: str = "stderr",
                        user: str = "", persistence: bool = True) -> BrokerFiles:
    """Write mosquitto.conf, the ACL files, the broker certificate, CA and CRL into ``out_dir``."""
    ca = FleetCA.load(state_dir)
    store = ProvisioningStore(state_dir)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    key, cert = ca.issue_server(hosts)
    store.record_cert(cert.serial_number, hosts[0], "broker", cert.not_valid_before_utc, cert.not_valid_after_utc)
    write_atomic(out / "server.key", key, mode=0o600, owner=service_owner(user or "mosquitto"))  # the broker reads it after dropping root
    write_atomic(out / "server.crt", cert_pem(cert))
    write_atomic(out / "ca.crt", ca.cert_pem)
    write_atomic(out / "acl-devices", FLEET_ACL + "\n" + DEVICE_ACL)
    write_atomic(out / "acl-claim", CLAIM_ACL)
    ensure_service_identity(ca, store, state_dir)
    reg = Path(state_dir) / "brokers.json"
    dirs = json.loads(reg.read_text()) if reg.exists() else []
    if str(out) not in dirs:
        write_atomic(reg, json.dumps(dirs + [str(out)], indent=1))
    write_crl(ca, store, state_dir)
    b = f" {bind}" if bind else ""
    lines = [
        "# mosquitto configuration for the device-agent fleet, written by `fleetctl broker-config`.",
        "# Re-run the command to re-issue the broker certificate; `fleetctl ca revoke` rewrites crl.pem",
        "# (reload or restart mosquitto afterwards).",
        "per_listener_settings true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {out}/data/",
        f"log_dest {log_dest}",
        "log_type error", "log_type warning", "log_type notice",
        "connection_messages true",
        "max_inflight_messages 0", "max_queued_messages 10000",
        "set_tcp_nodelay true",  # small request/answer messages: no Nagle/delayed-ACK stalls (~40 ms each)
    ]
    if user:
        lines.append(f"user {user}")
    lines += [
        "",
        "# devices and the fleet service: mutual TLS, the certificate CN is the MQTT username",
        f"listener {port}{b}",
        f"cafile {out}/ca.crt",
        f"certfile {out}/server.crt",
        f"keyfile {out}/server.key",
        f"crlfile {out}/crl.pem",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        f"acl_file {out}/acl-devices",
        "",
        "# claims: server TLS only, anonymous, reaches nothing but claim/<client id>/... and claim/ca",
        f"listener {claim_port}{b}",
        f"certfile {out}/server.crt",
        f"keyfile {out}/server.key",
        "require_certificate false",
        "allow_anonymous true",
        "max_connections 256",
        f"acl_file {out}/acl-claim",
    ]
    (out / "data").mkdir(exist_ok=True)
    config = write_atomic(out / "mosquitto.conf", "\n".join(lines) + "\n")
    return BrokerFiles(out, config, out / "ca.crt", out / "crl.pem", port, claim_port)
