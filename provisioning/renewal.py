"""Certificate renewal before expiry, over mutual TLS with the current (still valid) certificate.

The device makes a fresh key (``device.key.pending``, 0600), publishes a CSR on
``dev/<id>/renew/req`` and gets the certificate on ``dev/<id>/renew/res``; the broker's ACL
guarantees that only the holder of ``<id>``'s certificate can ask. Then the new key and
certificate are swapped in (crash-safe, see ``IdentityStore.recover``). The fleet link picks up
the new files on its next reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from device_agent import protocol
from device_agent.config import AgentConfig
from device_agent.fleetlink.mqtt import MqttClient, MqttError, parse_broker_url, tls_context
from device_agent.registry import CommandError
from provisioning.identity import IdentityError, IdentityStore, public_key_der, service_owner

log = logging.getLogger(__name__)


class RenewalError(Exception):
    """Renewal failed; the current certificate stays in use."""


# (request, request id, timeout) -> the fleet's reply: over the agent's own fleet-link connection
Exchange = Callable[[dict[str, Any], str, float], Awaitable[dict[str, Any]]]


async def renew_certificate(
    store: IdentityStore, mqtt_url: str, timeout: float = 30.0, exchange: Exchange | None = None
) -> x509.Certificate:
    """Renew now; returns the installed certificate. The old key and cert stay until success.

    ``exchange`` sends the request over a connection the caller already has (the running agent's
    fleet link); without it a connection of its own is opened. The device listener binds the
    client id to the certificate, so a second connection of a running agent would take over (and
    disconnect) the agent's own.
    """
    ident = store.load()
    pending = store.dir / "device.key.pending"
    key = await asyncio.to_thread(store.new_key, pending)
    request_id = secrets.token_hex(8)
    try:
        req = {
            "csr": store.csr(key, ident.device_id).decode(),
            "request_id": request_id,
            "device_time": time.time(),
        }
        if exchange is not None:
            reply = await exchange(req, request_id, timeout)
        else:
            reply = await _exchange_own_connection(store, ident.device_id, mqtt_url, req, request_id, timeout)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    if not reply.get("ok"):
        pending.unlink(missing_ok=True)
        err = reply.get("error") or {}
        raise RenewalError(f"the fleet refused the renewal: {err.get('code')}: {err.get('message')}")
    try:
        cert = x509.load_pem_x509_certificate(str(reply["certificate"]).encode())
        ca = x509.load_pem_x509_certificate(str(reply["ca"]).encode())
        cert.verify_directly_issued_by(ident.ca)
        ok = public_key_der(cert.public_key()) == public_key_der(key.public_key())
    except Exception as exc:
        pending.unlink(missing_ok=True)
        raise RenewalError(f"the fleet sent an invalid certificate: {exc}") from None
    if not ok:
        pending.unlink(missing_ok=True)
        raise RenewalError("the fleet's certificate is not for the new key")
    await asyncio.to_thread(
        store.install_renewed, str(reply["certificate"]).encode(), ca.public_bytes(serialization.Encoding.PEM)
    )
    log.info("device certificate renewed until %s", cert.not_valid_after_utc)
    return cert


async def _exchange_own_connection(
    store: IdentityStore, device_id: str, mqtt_url: str, req: dict[str, Any], request_id: str, timeout: float
) -> dict[str, Any]:
    try:
        addr = parse_broker_url(mqtt_url)
    except ValueError as exc:
        raise RenewalError(str(exc)) from None
    host, port = addr.host, addr.port
    tls = tls_context(str(store.ca_path), str(store.cert_path), str(store.key_path))
    m = MqttClient(device_id, tls=tls)  # the broker assigns the certificate CN anyway
    try:
        try:
            await m.connect(host, port, timeout=min(timeout, 10.0))
        except MqttError as exc:
            raise RenewalError(f"cannot reach the fleet broker: {exc}") from None
        res_topic = protocol.renew_result(device_id)
        if await m.subscribe(res_topic) >= 0x80:
            raise RenewalError(f"the broker refused {res_topic}: ACL without renewal topics?")
        await m.publish(protocol.renew_request(device_id), json.dumps(req).encode())
        return await _reply(m, res_topic, request_id, timeout)
    finally:
        await m.close()


async def _reply(m: MqttClient, topic: str, request_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RenewalError(
                f"no renewal answer within {timeout:g} s: is the fleet's claim responder running?"
            )
        try:
            msg = await m.next_message(left)
        except TimeoutError:
            continue
        if msg.topic != topic:
            continue
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            continue
        if isinstance(reply, dict) and reply.get("request_id") == request_id:
            return reply


class RenewalComponent:
    """Checks the certificate periodically and renews it ``renew_before_days`` before expiry.

    Registers the ``cert.renew`` command (renew now) and the ``identity`` health provider.
    """

    name = "cert-renewal"

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        cfg: AgentConfig = agent.config
        self.cfg = cfg.provisioning
        self.mqtt_url = cfg.mqtt.url
        self.store = IdentityStore(
            cfg.provisioning.resolve_identity_dir(cfg.device.state_dir),
            owner=service_owner(cfg.provisioning.service_user),
        )
        self.last_error = ""
        self.last_renewal = 0.0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._link: Any = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        agent.commands.register("cert.renew", self._cmd_renew)
        agent.health.add("identity", self.health)

    async def start(self) -> None:
        # renew over the fleet link's own connection: a second one would take it over (one client id)
        self._link = self.agent.get("fleet_link")
        if self._link is not None:
            self._link.add_handler(protocol.Leaf.RENEW_RESULT, self._on_renew_res)
        self._task = asyncio.create_task(self._loop())

    def _on_renew_res(self, subtopic: str, payload: bytes) -> None:
        try:
            reply = json.loads(payload)
        except ValueError:
            return
        fut = self._waiting.get(reply.get("request_id", "")) if isinstance(reply, dict) else None
        if fut is not None and not fut.done():
            fut.set_result(reply)

    async def _exchange_over_link(
        self, req: dict[str, Any], request_id: str, timeout: float
    ) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        try:
            try:
                await self._link.wait_ready(timeout)
                await self._link.publish(protocol.Leaf.RENEW_REQUEST, json.dumps(req).encode())
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise RenewalError(
                    f"no renewal answer within {timeout:g} s: is the fleet's claim responder running?"
                ) from None
            except (OSError, RuntimeError, MqttError) as exc:
                raise RenewalError(f"cannot send the renewal over the fleet link: {exc}") from None
        finally:
            self._waiting.pop(request_id, None)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def healthy(self) -> bool:
        return True  # an expiring certificate is an alert, not a reason to roll back an update

    def health(self) -> dict[str, Any]:
        try:
            ident = self.store.load()
        except IdentityError as exc:
            return {"present": False, "error": str(exc)}
        return {
            "present": True,
            "device_id": ident.device_id,
            "cert_days_left": round(ident.days_left(), 2),
            "cert_not_after": ident.not_after.isoformat(),
            "last_renewal": self.last_renewal,
            "last_error": self.last_error,
        }

    async def renew_if_due(self) -> bool:
        """Renew when within ``renew_before_days`` of expiry; True when a renewal happened."""
        ident = await asyncio.to_thread(self.store.load)
        if ident.days_left() > self.cfg.renew_before_days:
            return False
        await self.renew()
        return True

    async def renew(self) -> x509.Certificate:
        async with self._lock:
            try:
                cert = await renew_certificate(
                    self.store,
                    self.mqtt_url,
                    self.cfg.renew_timeout_s,
                    self._exchange_over_link if self._link is not None else None,
                )
            except (RenewalError, IdentityError, MqttError) as exc:
                self.last_error = str(exc)
                self.agent.alerts.raise_alert(
                    "P2", "cert_renewal_failed", f"certificate renewal failed: {exc}"
                )
                raise
            self.last_error = ""
            self.last_renewal = time.time()
            self.agent.alerts.clear("cert_renewal_failed")
            self.agent.events.emit("cert_renewed", not_after=cert.not_valid_after_utc.isoformat())
            return cert

    async def _cmd_renew(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            cert = await self.renew()
        except (RenewalError, IdentityError, MqttError) as exc:
            raise CommandError(protocol.ErrorCode.RENEWAL_FAILED, str(exc)) from None
        return {"not_after": cert.not_valid_after_utc.isoformat()}

    async def _loop(self) -> None:
        while True:
            try:
                await self.renew_if_due()
            except (RenewalError, IdentityError, MqttError) as exc:
                log.warning("certificate renewal: %s", exc)
            except Exception:
                log.exception("certificate renewal failed")
            await asyncio.sleep(self.cfg.renew_check_interval_s)
