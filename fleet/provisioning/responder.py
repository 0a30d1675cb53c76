"""The fleet's claim responder: answers claims and certificate renewals over MQTT.

Connects to the device listener as the fleet service (mutual TLS, CN ``fleet-service``),
publishes the fleet CA retained on ``claim/ca``, and serves two shared subscriptions (so
several fleet workers can split the load; a token is still used at most once, by the store):

- ``claim/<token id>/req``: ``{token, csr, name, location, hardware, device_time}`` ->
  ``claim/<token id>/res``: ``{ok, device_id, group, certificate, ca, mqtts_port, server_time}``
  or ``{ok: false, error: {code, message}, server_time}``;
- ``dev/<id>/renew/req``: ``{csr, request_id}`` -> ``dev/<id>/renew/res``. The broker's ACL
  guarantees only device ``<id>`` (its certificate CN) can publish there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from device_agent import protocol
from device_agent.fleetlink.mqtt import MqttClient, MqttError, tls_context
from fleet.provisioning.broker import listener_ports, service_identity_paths
from fleet.provisioning.ca import CAError, FleetCA, cert_pem
from fleet.provisioning.store import ClaimRefused, ProvisioningStore
from provisioning.token import ClaimToken, TokenFormatError

log = logging.getLogger(__name__)

CLAIM_SUB = protocol.shared(protocol.PROVISIONING_SHARE_GROUP, protocol.ALL_CLAIM_REQUESTS)
RENEW_SUB = protocol.shared(protocol.PROVISIONING_SHARE_GROUP, protocol.ALL_RENEW_REQUESTS)
MAX_REQUEST_BYTES = 16 * 1024


def device_id_for(csr_pem: bytes) -> str:
    """A device id derived from its public key: ``dev-`` + 16 hex digits of SHA-256(SPKI)."""
    csr = x509.load_pem_x509_csr(csr_pem)
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "dev-" + hashlib.sha256(spki).hexdigest()[:16]


class ClaimResponder:
    """``await run()`` until ``stop()``; each request is answered, refusals are audited."""

    name = "claim-responder"

    def __init__(
        self,
        state_dir: str | Path,
        broker_host: str,
        broker_port: int = 8883,
        device_port: int | None = None,
        cert_days: int = 365,
        max_clock_skew_s: float = 300.0,
        client_id: str = "fleet-provisioning",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host, self.port = broker_host, broker_port
        # devices connect to the device listener, not to the service listener the responder uses
        self.device_port = device_port or listener_ports(state_dir).get("devices", 8883)
        self.cert_days = cert_days
        self.max_clock_skew_s = max_clock_skew_s
        self.client_id = client_id
        self.ca = FleetCA.load(state_dir)
        self.store = ProvisioningStore(state_dir)
        self.ready = asyncio.Event()
        self.handled = 0
        self._stop = asyncio.Event()
        self._mqtt: MqttClient | None = None

    async def run(self) -> None:
        key, crt = service_identity_paths(self.state_dir)
        tls = tls_context(str(self.ca.directory / "ca.crt"), str(crt), str(key))
        backoff = 1.0
        while not self._stop.is_set():
            m = MqttClient(self.client_id, tls=tls)
            try:
                await m.connect(self.host, self.port)
                self._mqtt = m
                for topic in (CLAIM_SUB, RENEW_SUB):
                    rc = await m.subscribe(topic)
                    if rc >= 0x80:
                        raise MqttError("denied", f"subscription {topic} refused ({rc:#x}): check the ACL")
                # after subscribing: a device that sees the CA may send its request at once
                await m.publish(protocol.CLAIM_CA, self.ca.cert_pem, retain=True)
                log.info("claim responder ready on %s:%s", self.host, self.port)
                backoff = 1.0
                self.ready.set()
                await self._serve(m)
            except MqttError as exc:
                log.warning("claim responder: %s; retrying in %.0f s", exc, backoff)
            finally:
                self.ready.clear()
                self._mqtt = None
                await m.close()
            if not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 30.0)

    async def _serve(self, m: MqttClient) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while m.connected:
                get = asyncio.ensure_future(m.messages.get())
                done, _ = await asyncio.wait({get, stop}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    get.cancel()
                    return
                if get not in done:
                    get.cancel()
                    continue
                msg = get.result()
                try:
                    reply_topic, reply = await self.handle(msg.topic, msg.payload)
                except Exception:  # one bad request must not stop the service
                    log.exception("claim responder: request on %s failed", msg.topic)
                    continue
                if reply_topic:
                    await m.publish(reply_topic, json.dumps(reply).encode())
                    self.handled += 1
            raise MqttError("closed", f"connection lost ({m.disconnect_reason})")
        finally:
            stop.cancel()

    async def stop(self) -> None:
        self._stop.set()

    def healthy(self) -> bool:
        return self.ready.is_set()

    async def start(self) -> None:  # component protocol, when run inside a fleet service
        self._task = asyncio.create_task(self.run())

    # -- requests --------------------------------------------------------------------------
    async def handle(self, topic: str, payload: bytes) -> tuple[str, dict[str, Any]]:
        """Answer one request; returns (reply topic, reply) or ("", {}) for unrelated topics."""
        claim_topic = protocol.parse_claim_topic(topic)
        renewing = protocol.parse_renew_request(topic)
        if claim_topic is not None and claim_topic[1] == "req":
            key = claim_topic[0]
            reply_topic = protocol.claim_result(key)
            handler: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]] = self._claim
        elif renewing is not None:
            key = renewing
            reply_topic = protocol.renew_result(key)
            handler = self._renew
        else:
            return "", {}
        req: dict[str, Any] = {}
        try:
            if len(payload) > MAX_REQUEST_BYTES:
                raise ClaimRefused("too_large", f"request larger than {MAX_REQUEST_BYTES} bytes")
            try:
                parsed = json.loads(payload)
                if not isinstance(parsed, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                raise ClaimRefused("bad_request", f"request is not a JSON object: {exc}") from None
            req = parsed
            reply = await handler(key, req)
            reply = {"ok": True, **reply}
        except ClaimRefused as exc:
            reply = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
            if "request_id" in req:
                reply["request_id"] = req["request_id"]
        reply["server_time"] = time.time()
        return reply_topic, reply

    def _check_clock(self, req: dict[str, Any], claim_id: str | None, device_id: str | None) -> None:
        device_time = req.get("device_time")
        if isinstance(device_time, (int, float)) and abs(device_time - time.time()) > self.max_clock_skew_s:
            skew = device_time - time.time()
            self.store.audit("clock_refused", claim_id, device_id, skew_s=round(skew))
            raise ClaimRefused(
                "clock_skew",
                f"the device clock is {abs(skew):.0f} s "
                f"{'ahead' if skew > 0 else 'behind'}: set the time (NTP) and retry; "
                f"the token was not used",
            )

    def _sign(self, csr: Any, device_id: str) -> x509.Certificate:
        if not isinstance(csr, str):
            raise ClaimRefused("bad_csr", "request has no 'csr' (PEM text)")
        try:
            return self.ca.sign_csr(csr.encode(), device_id, self.cert_days)
        except CAError as exc:
            raise ClaimRefused("bad_csr", str(exc)) from None

    async def _claim(self, token_id: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            token = ClaimToken.parse(str(req.get("token", "")))
        except TokenFormatError as exc:
            await asyncio.to_thread(self.store.audit, "claim_refused", token_id, None, code="bad_token")
            raise ClaimRefused("bad_token", str(exc)) from None
        if token.id != token_id:
            await asyncio.to_thread(self.store.audit, "claim_refused", token_id, None, code="bad_token")
            raise ClaimRefused("bad_token", "the token does not belong to this claim topic")
        csr = req.get("csr")
        try:
            device_id = device_id_for(csr.encode()) if isinstance(csr, str) else ""
        except ValueError:
            device_id = ""
        claim = await asyncio.to_thread(
            self.store.check_claim, token.id, token.secret, None, device_id or None
        )
        if claim.used_at is not None:  # the same device re-sent its request: the same answer again
            if not isinstance(csr, str) or not device_id:  # no key to match the issued certificate
                raise ClaimRefused("used_token", "this claim token was already used: each token works once")
            return await self._repeat(claim.group, device_id, csr)
        self._check_clock(req, claim.id, None)
        if not device_id:
            raise ClaimRefused("bad_csr", "request has no valid 'csr' (PEM certificate request)")
        existing = await asyncio.to_thread(self.store.device, device_id)
        if existing and existing["revoked_at"] is not None:
            await asyncio.to_thread(self.store.audit, "claim_refused", claim.id, device_id, code="revoked")
            raise ClaimRefused(
                "revoked", "this device key was revoked; factory-reset the device to make a new one"
            )
        cert = await asyncio.to_thread(self._sign, csr, device_id)
        info = {k: str(req.get(k, ""))[:200] for k in ("name", "location", "hardware")}
        await asyncio.to_thread(
            self.store.redeem,
            claim,
            device_id,
            info,
            cert.serial_number,
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            cert_pem(cert),
        )
        log.info("claim %s: device %s joined group %s", claim.id, device_id, claim.group)
        return {
            "device_id": device_id,
            "group": claim.group,
            "certificate": cert_pem(cert).decode(),
            "ca": self.ca.cert_pem.decode(),
            "mqtts_port": self.device_port,
        }

    async def _repeat(self, group: str, device_id: str, csr: str) -> dict[str, Any]:
        pem = await asyncio.to_thread(self.store.latest_cert_pem, device_id)
        if pem is None:
            raise ClaimRefused("used_token", "this claim token was already used: each token works once")
        cert = x509.load_pem_x509_certificate(pem)
        der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        issued_key = cert.public_key().public_bytes(der, spki)
        request_key = x509.load_pem_x509_csr(csr.encode()).public_key().public_bytes(der, spki)
        if issued_key != request_key:
            raise ClaimRefused("used_token", "this claim token was already used: each token works once")
        return {
            "device_id": device_id,
            "group": group,
            "certificate": pem.decode(),
            "ca": self.ca.cert_pem.decode(),
            "mqtts_port": self.device_port,
        }

    async def _renew(self, device_id: str, req: dict[str, Any]) -> dict[str, Any]:
        if await asyncio.to_thread(self.store.is_revoked, device_id):
            await asyncio.to_thread(self.store.audit, "renew_refused", None, device_id, code="revoked")
            raise ClaimRefused("revoked", f"device {device_id} is unknown or revoked")
        self._check_clock(req, None, device_id)
        cert = await asyncio.to_thread(self._sign, req.get("csr"), device_id)
        await asyncio.to_thread(
            self.store.record_cert,
            cert.serial_number,
            device_id,
            "device",
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            "cert_renewed",
            cert_pem(cert),
        )
        log.info("renewed certificate of %s until %s", device_id, cert.not_valid_after_utc)
        return {
            "device_id": device_id,
            "certificate": cert_pem(cert).decode(),
            "ca": self.ca.cert_pem.decode(),
            "request_id": req.get("request_id"),
        }
