"""FleetClient: the fleet side's small async MQTT 5 client (commands and device streams).

Usage::

    async with FleetClient("mqtts://broker:8883", ca_file="ca.pem", cert_file="op.pem",
                           key_file="op.key") as fc:
        result = await fc.send_command("cam-0042", "config.get", {"section": "mqtt"}, timeout=10)
        fc.on_events(lambda device, event: print(device, event))
        fc.on_status(lambda device, status: ...)

- ``send_command(device, name, params, timeout)`` publishes ``params`` (a JSON object) on
  ``dev/{device}/cmd/{name}`` with an MQTT 5 response topic (``dev/{device}/res``) and random
  correlation data, waits for the matching answer and returns its ``result``. An answer with
  ``ok: false`` raises :class:`CommandFailed` carrying the device's ``code`` and ``message``; no
  answer within ``timeout`` raises :class:`CommandTimeout` (code ``timeout``). The command
  carries a message expiry equal to the timeout, so a device that is offline does not run it
  later, and is never retained (a retained command would run on every reconnect; devices refuse
  them with ``retained_refused``).
- ``on_status/on_telemetry/on_events(callback)`` call ``callback(device, obj)`` with the decoded
  JSON (deflated telemetry is inflated first, ``device_agent/telemetry_codec.py``);
  ``on_logs/on_rtc(callback)`` call ``callback(device, key, payload_bytes)`` where ``key`` is the
  log request or RTC session id; ``subscribe(filter, callback(topic, payload))`` is the raw form.
  Callbacks run on the event loop; coroutine functions are awaited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from device_agent import protocol, telemetry_codec
from device_agent.fleetlink.mqtt import MqttConnection, MqttOptions, response_properties
from device_agent.protocol import ErrorCode, error_result

log = logging.getLogger(__name__)


# connect failures that retrying does not cure (``MqttError.kind``): ``connect(fail_fast=True)`` stops
PERMANENT = frozenset({"dns", "refused", "tls", "rejected", "denied", "config"})

is_command_topic = protocol.is_command_topic  # re-exported: fleet code and tests import it from here


class CommandFailed(Exception):
    """The device answered ``ok: false`` (or never answered: :class:`CommandTimeout`)."""

    def __init__(self, device: str, command: str, code: str, message: str) -> None:
        super().__init__(f"{device} {command}: {code}: {message}")
        self.device = device
        self.command = command
        self.code = code
        self.message = message


class CommandTimeout(CommandFailed):
    """No answer from the device within the timeout."""


class FleetClient:
    """An operator/service MQTT session; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        username: str = "",
        password: str = "",
        client_id: str = "",
        clean_start: bool = True,
        session_expiry_s: int = 0,
        tls_insecure: bool = False,
        keepalive_s: int = 30,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self.options = MqttOptions(
            url=url,
            client_id=client_id or f"fleet-{uuid.uuid4().hex[:10]}",
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            username=username,
            password=password,
            keepalive_s=keepalive_s,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
            tls_insecure=tls_insecure,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            max_inflight=1000,
        )
        self.conn = MqttConnection(self.options)
        self._owns_conn = True
        self._pending: dict[bytes, asyncio.Future[Any]] = {}  # the decoded answer: checked by command()
        self._res_subscribed: set[str] = set()

    @classmethod
    def sharing(cls, conn: MqttConnection) -> FleetClient:
        """A client on an existing, already started connection (the fleet service's own session):
        ``connect()`` only waits for it, ``close()`` leaves it open; answers are acknowledged
        when the connection acknowledges by hand (``manual_ack``)."""
        client = cls.__new__(cls)
        client.options = conn.options
        client.conn = conn
        client._owns_conn = False
        client._pending = {}
        client._res_subscribed = set()
        return client

    async def connect(self, timeout: float = 10.0, fail_fast: bool = False) -> FleetClient:
        """Connect (retrying with backoff until ``timeout``); raises ConnectionError on failure.

        ``fail_fast``: give up at the first attempt that fails for a reason retrying will not cure
        (name does not resolve, connection refused, TLS or certificate refused, CONNACK refused), as
        a command line should; the error names the reason.
        """
        if self._owns_conn:
            self.conn.start()
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while not self.conn.connected:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise TimeoutError
                self.conn.attempt_failed.clear()
                done = asyncio.ensure_future(self.conn.wait_connected())
                failed = asyncio.ensure_future(self.conn.attempt_failed.wait())
                try:
                    await asyncio.wait({done, failed}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    done.cancel()
                    failed.cancel()
                err = self.conn.last_error
                if fail_fast and not self.conn.connected and err is not None and err.kind in PERMANENT:
                    raise ConnectionError(f"cannot connect to {self.options.url}: {err}")
        except (TimeoutError, ConnectionError) as exc:
            if self._owns_conn:
                await self.conn.close()
            if isinstance(exc, ConnectionError):
                raise
            err = self.conn.last_error
            raise ConnectionError(
                f"cannot connect to {self.options.url}: "
                f"{err or self.conn.last_connect_error or f'no answer within {timeout:g} s'}"
            ) from None
        return self

    async def close(self) -> None:
        if self._owns_conn:
            await self.conn.close()

    async def __aenter__(self) -> FleetClient:
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self.conn.connected

    # ---- commands ------------------------------------------------------------------------
    async def device_status(self, device: str, timeout: float = 10.0) -> dict[str, Any] | None:
        """The device's retained status (``dev/{id}/status``: ``{"online", "reason", "ts", ...}``), or
        None when the broker holds none: a device that never connected, or the wrong broker.

        Subscribes to the status, then to the device's answers (``dev/{id}/res``, which
        :meth:`send_command` needs anyway): the broker sends the retained status of the first
        subscription before it acknowledges the second, so the answer is known after two round trips.
        """
        got: list[bytes] = []
        topic = protocol.status(device)
        await self.conn.subscribe_wait(topic, lambda msg: got.append(bytes(msg.payload)), timeout=timeout)
        try:
            res_topic = protocol.result(device)
            await self.conn.subscribe_wait(res_topic, self._on_response, timeout=timeout)
            self._res_subscribed.add(res_topic)
            await asyncio.sleep(0)  # callbacks of messages read with the SUBACK
        finally:
            self.conn.unsubscribe(topic)
        for payload in reversed(got):
            try:
                obj = json.loads(payload) if payload else None
            except ValueError:
                continue
            return obj if isinstance(obj, dict) else None
        return None

    async def wait_online(self, device: str, timeout: float) -> dict[str, Any] | None:
        """Wait until the device's status says online (at most ``timeout`` s); its last status, or None."""
        latest: list[dict[str, Any] | None] = [None]
        online = asyncio.Event()

        def on_status(msg: mqtt.MQTTMessage) -> None:
            try:
                obj = json.loads(msg.payload) if msg.payload else None
            except ValueError:
                return
            latest[0] = obj if isinstance(obj, dict) else None
            if latest[0] and latest[0].get("online"):
                online.set()

        topic = protocol.status(device)
        await self.conn.subscribe_wait(topic, on_status)
        try:
            await asyncio.wait_for(online.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self.conn.unsubscribe(topic)
        return latest[0]

    async def send_command(
        self,
        device: str,
        name: str,
        params: dict[str, Any] | None = None,
        timeout: float = 10.0,
        raw_payload: bytes | None = None,
    ) -> Any:
        """Run command ``name`` on ``device`` and return its result (see the module docstring).

        ``raw_payload`` sends those bytes instead of ``params`` (tests of malformed input).
        """
        res_topic = protocol.result(device)
        if res_topic not in self._res_subscribed:
            await self.conn.subscribe_wait(res_topic, self._on_response)
            self._res_subscribed.add(res_topic)
        corr = uuid.uuid4().bytes
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        payload = raw_payload if raw_payload is not None else json.dumps(params or {}).encode()
        try:
            await self.conn.publish(
                protocol.command(device, name),
                payload,
                qos=1,
                retain=False,
                properties=response_properties(res_topic, corr, max(1, round(timeout))),
                timeout=timeout,
            )
            answer = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CommandTimeout(device, name, ErrorCode.TIMEOUT, f"no answer within {timeout:g} s") from None
        finally:
            self._pending.pop(corr, None)
        if not isinstance(answer, dict) or "ok" not in answer:
            raise CommandFailed(device, name, ErrorCode.BAD_ANSWER, f"unexpected answer {answer!r}")
        if not answer["ok"]:
            err = answer.get("error") or {}
            raise CommandFailed(device, name, str(err.get("code", "error")), str(err.get("message", "")))
        return answer.get("result")

    def _on_response(self, msg: mqtt.MQTTMessage) -> None:
        if self.conn.options.manual_ack and msg.qos:
            # every answer, ours or not: unacked ones fill the inflight window
            self.conn.ack(msg.mid, msg.qos)
        corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        fut = self._pending.get(bytes(corr)) if corr is not None else None
        if fut is None or fut.done():
            return
        try:
            fut.set_result(json.loads(msg.payload))
        except ValueError as exc:
            fut.set_result(error_result(ErrorCode.BAD_ANSWER, str(exc)))

    # ---- streams --------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, callback: Callable[[str, bytes], Any], qos: int = 1) -> None:
        """Raw subscription: ``callback(topic, payload)``; renewed after reconnects."""
        self.conn.subscribe(topic_filter, lambda msg: callback(msg.topic, bytes(msg.payload)), qos)

    async def publish(
        self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1, retain: bool = False
    ) -> None:
        """Raw publish. A retained command (``dev/+/cmd/#``) is refused with ``ValueError``: it would
        run again on every reconnect of the device (devices refuse them too, ``retained_refused``);
        an empty retained payload, which deletes a retained message, is allowed."""
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        if retain and data and is_command_topic(topic):
            raise ValueError(f"{topic}: commands are never published retained")
        await self.conn.publish(topic, data, qos=qos, retain=retain)

    def _json_stream(self, leaf: str, callback: Callable[[str, Any], Any], device: str) -> None:
        def deliver(msg: mqtt.MQTTMessage) -> Any:
            try:  # plain JSON, or deflated with the telemetry dictionary (device_agent/telemetry_codec.py)
                payload = telemetry_codec.decode(
                    bytes(msg.payload), telemetry_codec.message_content_type(msg)
                )
                obj = json.loads(payload) if payload else None
            except ValueError as exc:
                log.warning("ignoring undecodable %s: %s", msg.topic, exc)
                return None
            return callback(protocol.device_of(msg.topic), obj)

        self.conn.subscribe(protocol.device_topic(device, leaf), deliver, 1)

    def on_status(self, callback: Callable[[str, Any], Any], device: str = "+") -> None:
        self._json_stream(protocol.Leaf.STATUS, callback, device)

    def on_telemetry(self, callback: Callable[[str, Any], Any], device: str = "+") -> None:
        self._json_stream(protocol.Leaf.TELEMETRY, callback, device)

    def on_events(self, callback: Callable[[str, Any], Any], device: str = "+") -> None:
        self._json_stream(protocol.Leaf.EVENTS, callback, device)

    def _keyed_stream(self, leaf: str, callback: Callable[[str, str, bytes], Any], device: str) -> None:
        self.subscribe(
            protocol.device_topic(device, f"{leaf}/{protocol.ANY}"),
            lambda topic, payload: callback(topic.split("/")[1], topic.split("/", 3)[3], payload),
        )

    def on_logs(self, callback: Callable[[str, str, bytes], Any], device: str = "+") -> None:
        self._keyed_stream(protocol.Leaf.LOGS, callback, device)

    def on_rtc(self, callback: Callable[[str, str, bytes], Any], device: str = "+") -> None:
        self._keyed_stream(protocol.Leaf.RTC, callback, device)
