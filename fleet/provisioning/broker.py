"""`fleetctl broker-config`: a complete, locked-down mosquitto configuration for the fleet.

Three listeners share one topic tree, and on each the MQTT client id is bound to an identity the
broker checked (mosquitto's client ids are one namespace across listeners: a client that may pick
its own id can disconnect anyone, whose last will then says "lost"):

- the **device listener** (mutual TLS, fleet CA): ``require_certificate true``,
  ``use_identity_as_username true`` and ``use_username_as_clientid true`` (the certificate CN is
  the username *and* the client id), a CRL, and an ACL giving each device exactly its own
  ``dev/<id>/...`` subtree;
- the **service listener** (mutual TLS, a separate *service CA* that signs only the fleet
  service's certificate): the fleet service's processes, which keep their own client ids
  (several workers, the claim responder and CLI commands at once); no device certificate is
  accepted there;
- the **claim listener** (server TLS): each claimant logs in with its token id as username (and
  the SHA-256 of its token secret as password, checked against ``claim-passwd``, the open claims),
  and ``use_username_as_clientid true`` makes the token id its client id; it may publish only on
  ``claim/<token id>/req``, read only ``claim/<token id>/res`` and ``claim/ca``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from device_agent import protocol
from device_agent.protocol import Leaf
from fleet.provisioning.ca import FLEET_SERVICE_CN, FleetCA, cert_pem
from fleet.provisioning.store import ProvisioningStore
from ota.atomic import write_atomic
from provisioning.identity import service_owner

# What a device may do in its own subtree (see docs/protocol.md and docs/provisioning.md); the
# topic shapes come from device_agent.protocol, ``%u``/``%c`` are mosquitto's pattern substitutions
# (username = certificate CN = device id; client id = claim token id).
_DEVICE_GRANTS = (
    ("write", Leaf.STATUS),
    ("write", Leaf.TELEMETRY),
    ("write", Leaf.EVENTS),
    ("write", Leaf.RESULT),
    ("write", f"{Leaf.LOGS}/#"),
    ("write", f"{Leaf.RTC}/#"),
    ("read", f"{Leaf.RTC}/#"),
    ("read", f"{Leaf.CMD}/#"),
    ("write", Leaf.RENEW_REQUEST),
    ("read", Leaf.RENEW_RESULT),
    ("readwrite", f"{Leaf.DIAG_PING}/#"),
)

DEVICE_ACL = "# every device: exactly its own subtree (username = certificate CN = device id)\n" + "".join(
    f"pattern {access} {protocol.acl_device_pattern(leaf)}\n" for access, leaf in _DEVICE_GRANTS
)

FLEET_ACL = f"""\
# service listener: the fleet service (certificate CN {FLEET_SERVICE_CN}, from the service CA):
# every device, the claim requests
user {FLEET_SERVICE_CN}
topic readwrite {protocol.DEVICE_ROOT}/#
topic readwrite fleet/#
topic read {protocol.ALL_CLAIM_REQUESTS}
topic write {protocol.claim_result(protocol.ANY)}
topic write {protocol.CLAIM_CA}
"""

CLAIM_ACL = f"""\
# claim listener: each claimant only its own claim (username = client id = claim token id,
# password checked against claim-passwd), plus the fleet CA certificate (retained, published by
# the fleet service)
pattern read {protocol.CLAIM_CA}
pattern write {protocol.claim_request("%c")}
pattern read {protocol.claim_result("%c")}
"""


SERVICE_CA_DIR = "service-ca"  # <state>/service-ca/ca/ca.{key,crt}: signs only the fleet service
CLAIM_PASSWD = "claim-passwd"
LISTENERS_FILE = "listeners.json"  # in the state dir: which port is which (the responder tells devices)
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes for its "$7$" (PBKDF2-SHA512) entries


@dataclass
class BrokerFiles:
    out_dir: Path
    config: Path
    ca: Path
    crl: Path
    port: int
    claim_port: int
    service_port: int = 8885


def service_identity_paths(state_dir: str | Path) -> tuple[Path, Path]:
    d = Path(state_dir) / "service"
    return d / f"{FLEET_SERVICE_CN}.key", d / f"{FLEET_SERVICE_CN}.crt"


def service_ca(state_dir: str | Path) -> FleetCA:
    """The CA of the service listener (created once): devices' certificates do not chain to it."""
    d = Path(state_dir) / SERVICE_CA_DIR
    key_path, _crt = FleetCA.paths(d)
    if key_path.exists():
        return FleetCA.load(d)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return FleetCA.init(d, name="device-agent fleet service CA")


def ensure_service_identity(
    ca: FleetCA, store: ProvisioningStore, state_dir: str | Path
) -> tuple[Path, Path]:
    """The fleet service's own client certificate (CN ``fleet-service``) from ``ca`` (the service CA).

    Issued once, and again when the one on disk is from another CA (before the service listener,
    it came from the fleet CA, which the service listener does not accept).
    """
    key_path, crt_path = service_identity_paths(state_dir)
    current = x509.load_pem_x509_certificate(crt_path.read_bytes()) if crt_path.exists() else None
    if not key_path.exists() or current is None or current.issuer != ca.cert.subject:
        key, cert = ca.issue_client(FLEET_SERVICE_CN)
        write_atomic(key_path, key, mode=0o600)
        write_atomic(crt_path, cert_pem(cert))
        store.record_cert(
            cert.serial_number,
            FLEET_SERVICE_CN,
            "service",
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
        )
    return key_path, crt_path


def write_crl(ca: FleetCA, store: ProvisioningStore, state_dir: str | Path) -> list[Path]:
    """Re-issue the CRL into the state dir and every broker directory written before."""
    crl = ca.crl(store.revoked())
    targets = [Path(state_dir) / "ca" / "crl.pem"] + [d / "crl.pem" for d in _broker_dirs(state_dir)]
    written = []
    for t in targets:
        if t.parent.is_dir():
            write_atomic(t, crl, mode=0o644)
            written.append(t)
    return written


def claim_password(secret_hash: str) -> str:
    """What a claimant sends as its MQTT password: the SHA-256 (hex) of its token secret.

    The fleet stores exactly that, so ``claim-passwd`` can be rebuilt from the registry at any
    time; and it is no use to redeem the token (the fleet wants the secret itself).
    """
    return secret_hash


def mosquitto_password_hash(password: str, salt: bytes | None = None) -> str:
    """A mosquitto password-file hash (``$7$``: PBKDF2-SHA512, as ``mosquitto_passwd`` writes)."""
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def claim_passwd_text(store: ProvisioningStore, now: float | None = None) -> str:
    """The claim listener's password file: one line per open (unused, unexpired) claim."""
    now = time.time() if now is None else now
    lines = [
        f"{c.id}:{mosquitto_password_hash(claim_password(h))}" for c, h in store.open_claims_with_hashes(now)
    ]
    return "".join(line + "\n" for line in lines)


def listener_ports(state_dir: str | Path) -> dict[str, int]:
    """The ports the last ``broker-config`` gave the listeners (``devices``, ``claim``, ``service``)."""
    try:
        return {k: int(v) for k, v in json.loads((Path(state_dir) / LISTENERS_FILE).read_text()).items()}
    except (FileNotFoundError, ValueError, AttributeError, TypeError):
        return {}


def _broker_dirs(state_dir: str | Path) -> list[Path]:
    reg = Path(state_dir) / "brokers.json"
    return [Path(p) for p in json.loads(reg.read_text())] if reg.exists() else []


def write_claim_passwords(store: ProvisioningStore, state_dir: str | Path) -> list[Path]:
    """Rewrite ``claim-passwd`` in every broker directory (after ``claim create``; then reload mosquitto)."""
    text = claim_passwd_text(store)
    written = []
    for d in _broker_dirs(state_dir):
        if d.is_dir():
            written.append(
                write_atomic(d / CLAIM_PASSWD, text, mode=0o600, owner=_owner_of(d / "server.key"))
            )
    return written


def _owner_of(path: Path) -> tuple[int, int] | None:
    """The owner of the broker's key (the mosquitto user), so the broker can read what we write."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_uid, st.st_gid) if os.geteuid() == 0 else None


def write_broker_config(
    state_dir: str | Path,
    out_dir: str | Path,
    hosts: list[str],
    port: int = 8883,
    claim_port: int = 8884,
    bind: str = "",
    log_dest: str = "stderr",
    user: str = "",
    persistence: bool = True,
    service_port: int = 8885,
) -> BrokerFiles:
    """Write mosquitto.conf, the ACL files, the broker certificate, CAs, CRL and claim passwords into
    ``out_dir``."""
    ca = FleetCA.load(state_dir)
    store = ProvisioningStore(state_dir)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    key, cert = ca.issue_server(hosts)
    store.record_cert(
        cert.serial_number, hosts[0], "broker", cert.not_valid_before_utc, cert.not_valid_after_utc
    )
    # the broker reads it after dropping root
    write_atomic(out / "server.key", key, mode=0o600, owner=service_owner(user or "mosquitto"))
    write_atomic(out / "server.crt", cert_pem(cert))
    write_atomic(out / "ca.crt", ca.cert_pem)
    svc_ca = service_ca(state_dir)
    write_atomic(out / "service-ca.crt", svc_ca.cert_pem)
    write_atomic(out / "acl-devices", DEVICE_ACL)
    write_atomic(out / "acl-service", FLEET_ACL)
    write_atomic(out / "acl-claim", CLAIM_ACL)
    ensure_service_identity(svc_ca, store, state_dir)
    reg = Path(state_dir) / "brokers.json"
    dirs = json.loads(reg.read_text()) if reg.exists() else []
    if str(out) not in dirs:
        write_atomic(reg, json.dumps(dirs + [str(out)], indent=1))
    write_atomic(
        Path(state_dir) / LISTENERS_FILE,
        json.dumps({"devices": port, "claim": claim_port, "service": service_port}),
    )
    write_crl(ca, store, state_dir)
    write_claim_passwords(store, state_dir)
    b = f" {bind}" if bind else ""
    lines = [
        "# mosquitto configuration for the device-agent fleet, written by `fleetctl broker-config`.",
        "# Re-run the command to re-issue the broker certificate; `fleetctl ca revoke` rewrites crl.pem",
        "# (reload or restart mosquitto afterwards).",
        "per_listener_settings true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {out}/data/",
        f"log_dest {log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        "max_inflight_messages 0",
        "max_queued_messages 10000",
        "set_tcp_nodelay true",  # small request/answer messages: no Nagle/delayed-ACK stalls (~40 ms each)
    ]
    if user:
        lines.append(f"user {user}")
    lines += [
        "",
        "# devices: mutual TLS; the certificate CN is the MQTT username and the client id, so no",
        "# client can take over (and disconnect) another's session",
        f"listener {port}{b}",
        f"cafile {out}/ca.crt",
        f"certfile {out}/server.crt",
        f"keyfile {out}/server.key",
        f"crlfile {out}/crl.pem",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"acl_file {out}/acl-devices",
        "",
        "# the fleet service: mutual TLS with the service CA (no device certificate chains to it);",
        "# its processes keep their own client ids",
        f"listener {service_port}{b}",
        f"cafile {out}/service-ca.crt",
        f"certfile {out}/server.crt",
        f"keyfile {out}/server.key",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        f"acl_file {out}/acl-service",
        "",
        "# claims: server TLS; username = token id (password: SHA-256 of the token secret, open claims",
        "# in claim-passwd, reload after `fleetctl claim create`) = client id; reaches nothing but",
        f"# {protocol.CLAIM_ROOT}/<token id>/... and {protocol.CLAIM_CA}",
        f"listener {claim_port}{b}",
        f"certfile {out}/server.crt",
        f"keyfile {out}/server.key",
        "require_certificate false",
        "allow_anonymous false",
        f"password_file {out}/{CLAIM_PASSWD}",
        "use_username_as_clientid true",
        "max_connections 256",
        f"acl_file {out}/acl-claim",
    ]
    (out / "data").mkdir(exist_ok=True)
    config = write_atomic(out / "mosquitto.conf", "\n".join(lines) + "\n")
    return BrokerFiles(out, config, out / "ca.crt", out / "crl.pem", port, claim_port, service_port)
