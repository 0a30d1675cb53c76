"""Device side of the claim: talk to the fleet over the claim listener, get a certificate.

1. TLS to the claim listener (the device has no trust anchor yet), MQTT client id = token id.
2. Read the fleet CA from ``claim/ca`` (retained); its SHA-256 must match the token's pin.
3. Check the broker's own certificate against that CA (signature, host name, validity with the
   device clock) *before* sending the secret: a look-alike broker learns nothing.
4. Publish ``{token, csr, name, location, hardware, device_time}`` on ``claim/<id>/req`` and
   wait for ``claim/<id>/res``; check the certificate (issuer, our key, validity) before use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from device_agent import protocol
from device_agent.checks.thresholds import CLOCK_FLOOR  # any clock before it is wrong (no RTC); doctor's too
from device_agent.fleetlink.mqtt import MqttClient, MqttError, tls_context
from provisioning.identity import public_key_der
from provisioning.token import ClaimToken, ca_pin, hash_secret

# Exit codes of `device-agent provision` (docs/provisioning.md lists them for technicians).
EXIT_CODES = {
    "local": 1,
    "no_network": 3,
    "unreachable": 4,
    "clock": 5,
    "bad_token": 6,
    "expired_token": 7,
    "used_token": 8,
    "refused": 9,
    "connect_as_device": 10,
}
MAX_SKEW_S = 300.0
RESEND_S = 3.0  # re-send an unanswered claim request this often


class ProvisionError(Exception):
    """A failure a technician can act on: ``kind`` selects the exit code, the message the fix."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.kind, 1)


@dataclass
class ClaimResult:
    device_id: str
    group: str
    cert_pem: bytes
    ca_pem: bytes
    mqtts_port: int
    server_time: float


def mqtt_failure(exc: MqttError, host: str, port: int, what: str) -> ProvisionError:
    """Translate a connection failure into the technician's words."""
    if exc.kind in ("dns", "network"):
        return ProvisionError("no_network", f"No network: {exc}.")
    return ProvisionError("unreachable", f"{what} {host}:{port} is unreachable: {exc}.")


def check_clock_floor(now: float) -> None:
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if t < CLOCK_FLOOR:
        raise ProvisionError(
            "clock",
            f"The device clock says {t:%Y-%m-%d %H:%M} UTC, which cannot be right: "
            f"connect the device to a network with NTP (or set the date) and retry.",
        )


def check_skew(now: float, server_time: float) -> None:
    skew = now - server_time
    if abs(skew) > MAX_SKEW_S:
        raise ProvisionError(
            "clock",
            f"The device clock is {abs(skew) / 60:.0f} minutes "
            f"{'ahead of' if skew > 0 else 'behind'} the fleet: fix the time "
            f"(NTP) and retry; the claim token is still valid.",
        )


def verify_broker_cert(leaf_der: bytes | None, ca: x509.Certificate, host: str, now: float) -> None:
    """The claim listener's certificate must come from the fleet CA and name ``host``."""
    if not leaf_der:
        raise ProvisionError("unreachable", "The claim connection is not TLS: wrong port?")
    leaf = x509.load_der_x509_certificate(leaf_der)
    try:
        leaf.verify_directly_issued_by(ca)
    except Exception:
        raise ProvisionError(
            "refused",
            "The broker's certificate was not issued by the fleet CA in the token: "
            "wrong fleet address, or someone is intercepting the connection.",
        ) from None
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if not leaf.not_valid_before_utc <= t <= leaf.not_valid_after_utc:
        raise ProvisionError(
            "clock",
            f"The fleet broker's certificate is valid {leaf.not_valid_before_utc:%Y-%m-%d} "
            f"to {leaf.not_valid_after_utc:%Y-%m-%d} but the device clock says "
            f"{t:%Y-%m-%d %H:%M} UTC: fix the device time (NTP) and retry.",
        )
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    names = set(sans.get_values_for_type(x509.DNSName)) if sans else set()
    ips = {str(a) for a in sans.get_values_for_type(x509.IPAddress)} if sans else set()
    try:
        ok = str(ipaddress.ip_address(host)) in ips
    except ValueError:
        ok = host.lower() in {n.lower() for n in names}
    if not ok:
        raise ProvisionError(
            "refused",
            f"The broker's certificate is for {sorted(names | ips)}, not {host!r}: "
            f"use one of those names with --fleet.",
        )


async def claim(
    host: str,
    port: int,
    token: ClaimToken,
    csr_pem: bytes,
    info: dict[str, str],
    timeout: float = 20.0,
    clock: Callable[[], float] = time.time,
) -> ClaimResult:
    """Run the claim exchange; raises ProvisionError for every failure."""
    check_clock_floor(clock())
    # the claim listener binds the client id to the username (the token id): no claimant can take
    # another's (or a device's) client id; the password is the SHA-256 of the secret, never the secret
    m = MqttClient(
        token.id, tls=tls_context(verify=False), username=token.id, password=hash_secret(token.secret)
    )
    try:
        await m.connect(host, port, timeout=min(timeout, 10.0))
    except MqttError as exc:
        if exc.kind == "rejected":
            raise ProvisionError(
                "bad_token",
                f"unknown claim token: the fleet claim service at {host}:{port} "
                "does not accept it (a typo, expired, already used, or the broker "
                "was not reloaded after `fleetctl claim create`): check it, or ask "
                "for a new one.",
            ) from None
        raise mqtt_failure(exc, host, port, "The fleet claim service at") from None
    try:
        ca = await _fleet_ca(m, token, timeout)
        verify_broker_cert(m.peer_certificate_der(), ca, host, clock())
        res_topic = protocol.claim_result(token.id)
        if await m.subscribe(res_topic) >= 0x80:
            raise ProvisionError(
                "refused",
                "The broker refused the claim subscription: its claim listener "
                "is misconfigured (see `fleetctl broker-config`).",
            )
        req = {"token": str(token), "csr": csr_pem.decode(), "device_time": clock(), **info}
        reply = await _request(
            m, protocol.claim_request(token.id), json.dumps(req).encode(), res_topic, timeout
        )
    finally:
        await m.close()
    return _check_reply(reply, ca, csr_pem, clock())


async def _fleet_ca(m: MqttClient, token: ClaimToken, timeout: float) -> x509.Certificate:
    if await m.subscribe(protocol.CLAIM_CA) >= 0x80:
        raise ProvisionError(
            "refused", "The broker refused to show the fleet CA: this port is not the fleet's claim listener."
        )
    try:
        msg = await _next_on(m, protocol.CLAIM_CA, timeout)
    except TimeoutError:
        raise ProvisionError(
            "unreachable",
            "The broker answers but the fleet claim service does not (no CA "
            "published): ask the operator to start `fleetctl serve` / "
            "`fleetctl claim serve`.",
        ) from None
    try:
        ca = x509.load_pem_x509_certificate(msg.payload)
    except ValueError:
        raise ProvisionError("refused", "The fleet published an unreadable CA certificate.") from None
    if ca_pin(ca.public_bytes(serialization.Encoding.DER)) != token.pin:
        raise ProvisionError(
            "bad_token",
            "This token belongs to another fleet (its CA pin does not match this "
            "broker's CA): check the fleet address or the token.",
        )
    return ca


async def _next_on(m: MqttClient, topic: str, timeout: float) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError
        msg = await m.next_message(left)
        if msg.topic == topic:
            return msg


async def _request(
    m: MqttClient, topic: str, payload: bytes, res_topic: str, timeout: float, resend_s: float = RESEND_S
) -> dict[str, Any]:
    """Publish the request and wait for the answer, re-sending every ``resend_s``: ``claim/ca`` is
    retained, so it is there even while the responder restarts and misses a request."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await m.publish(topic, payload)
        left = deadline - asyncio.get_running_loop().time()
        try:
            msg = await _next_on(m, res_topic, min(resend_s, left))
            break
        except TimeoutError:
            if asyncio.get_running_loop().time() >= deadline:
                raise ProvisionError(
                    "unreachable",
                    f"The fleet did not answer the claim within {timeout:g} s: "
                    f"the claim service may be down; retry later (the token is "
                    f"not used).",
                ) from None
    try:
        reply = json.loads(msg.payload)
        assert isinstance(reply, dict)
    except (ValueError, AssertionError):
        raise ProvisionError("refused", "The fleet sent an unreadable answer.") from None
    return reply


def _check_reply(reply: dict[str, Any], ca: x509.Certificate, csr_pem: bytes, now: float) -> ClaimResult:
    if not reply.get("ok"):
        err = reply.get("error") or {}
        code, message = str(err.get("code", "refused")), str(err.get("message", "refused"))
        kind = {
            "bad_token": "bad_token",
            "expired_token": "expired_token",
            "used_token": "used_token",
            "clock_skew": "clock",
        }.get(code, "refused")
        prefix = {
            "bad_token": "Bad claim token",
            "expired_token": "Expired claim token",
            "used_token": "Claim token already used",
            "clock": "Wrong clock",
        }.get(kind, "Claim refused")
        raise ProvisionError(kind, f"{prefix}: {message}")
    server_time = float(reply.get("server_time", now))
    check_skew(now, server_time)
    try:
        cert = x509.load_pem_x509_certificate(str(reply["certificate"]).encode())
        cert.verify_directly_issued_by(ca)
    except Exception:
        raise ProvisionError(
            "refused", "The fleet's certificate is invalid or not from the fleet CA."
        ) from None
    csr = x509.load_pem_x509_csr(csr_pem)
    if public_key_der(cert.public_key()) != public_key_der(csr.public_key()):
        raise ProvisionError("refused", "The fleet's certificate is not for this device's key.")
    device_id = str(reply.get("device_id", ""))
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if not cn or cn[0].value != device_id:
        raise ProvisionError("refused", "The fleet's certificate does not name the device id it announced.")
    return ClaimResult(
        device_id,
        str(reply.get("group", "")),
        str(reply["certificate"]).encode(),
        ca.public_bytes(serialization.Encoding.PEM),
        int(reply.get("mqtts_port", 8883)),
        server_time,
    )
