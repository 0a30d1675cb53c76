"""A small asyncio wrapper over one paho-mqtt (MQTT 5) connection.

Used by the claim client, the online report, certificate renewal, ``doctor`` and the fleet's
claim responder. paho's network loop runs in its own thread; every result (CONNACK, SUBACK,
PUBACK, messages, disconnects) is handed to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes


class MqttError(Exception):
    """A connection, subscription or publication failed; ``kind`` classifies it for people.

    kinds: ``dns`` (name does not resolve: no network or a typo), ``network`` (no route),
    ``refused`` (nothing listening), ``timeout``, ``tls`` (handshake or certificate refused),
    ``rejected`` (CONNACK refused), ``denied`` (not authorised), ``closed``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    properties: Any = None


def tls_context(ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                verify: bool = True) -> ssl.SSLContext:
    """A client TLS context: verify the broker against ``ca_file`` (or not at all when
    ``verify`` is false, for the claim connection which checks the broker by hand)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        ctx.load_verify_locations(cafile=ca_file)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` -> (host, port)."""
    text = text.strip()
    for prefix in ("mqtts://", "mqtt://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port in {text!r}")
    return host, int(port) if port else default_port


class AsyncMqtt:
    """One MQTT 5 connection: ``await connect()``, ``subscribe``, ``publish``, ``messages``."""

    def __init__(self, client_id: str, tls: ssl.SSLContext | None = None, keepalive: int = 30,
                 will: tuple[str, bytes, bool] | None = None, username: str = "", password: str = "") -> None:
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password or None)
        if tls is not None:
            self.client.tls_set_context(tls)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=will[2])
        self.keepalive = keepalive
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.connected = False
        self.disconnect_reason: str = ""
        self._loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[Any] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._early: dict[int, Any] = {}
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_message = self._on_message

    # -- paho thread callbacks -------------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(self._connected, rc.is_failure, str(rc))

    def _connected(self, failed: bool, reason: str) -> None:
        self.connected = not failed
        fut = self._connack
        if fut is not None and not fut.done():
            if failed:
                fut.set_exception(MqttError("rejected", f"broker refused the connection: {reason}"))
            else:
                fut.set_result(None)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(self._disconnected, str(rc))

    def _disconnected(self, reason: str) -> None:
        self.connected = False
        self.disconnect_reason = reason
        err = MqttError("closed", f"connection closed by the broker ({reason})")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError("tls", f"broker closed the connection during "
                                                          f"the handshake ({reason}): certificate refused?"))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self._call(self._resolve, mid, [int(rc.value) for rc in rcs])

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._call(self._resolve, mid, int(rc.value))

    def _resolve(self, mid: int, value: Any) -> None:
        fut = self._pending.pop(mid, None)
        if fut is None:
            self._early[mid] = value  # acknowledged before we registered the future
        elif not fut.done():
            fut.set_result(value)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._call(self.messages.put_nowait, Message(msg.topic, bytes(msg.payload), bool(msg.retain),
                                                     getattr(msg, "properties", None)))

    # -- API --------------------------------------------------------------------------------
    async def connect(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Open TCP + TLS and wait for a successful CONNACK; raises ``MqttError``."""
        self.client.connect_timeout = timeout
        self._connack = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.client.connect, host, port, self.keepalive,
                                                     clean_start=True), timeout)
        except socket.gaierror as exc:
            raise MqttError("dns", f"cannot resolve {host!r} ({exc.strerror or exc}): no network, "
                                   f"no DNS, or a typo in the host name") from None
        except ssl.SSLError as exc:
            raise MqttError("tls", f"TLS handshake with {host}:{port} failed: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            raise MqttError("refused", f"{host}:{port} refused the connection: broker not running "
                                       f"or wrong port") from None
        except (TimeoutError, asyncio.TimeoutError, socket.timeout):
            raise MqttError("timeout", f"no answer from {host}:{port} within {timeout:g} s: broker "
                                       f"unreachable or a firewall drops the traffic") from None
        except OSError as exc:
            raise MqttError("network", f"cannot reach {host}:{port}: {exc.strerror or exc}: check the "
                                       f"network cable or Wi-Fi") from None
        sock = self.client.socket()
        if sock is not None:  # small request/answer packets: no Nagle + delayed-ACK stalls (~40 ms)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            await self.close()
            raise MqttError("timeout", f"{host}:{port} accepted TCP but sent no CONNACK within "
                                       f"{timeout:g} s") from None
        except MqttError:
            await self.close()
            raise

    def _track(self, mid: int) -> asyncio.Future[Any]:
        fut = self._loop.create_future()
        if mid in self._early:
            fut.set_result(self._early.pop(mid))
        else:
            self._pending[mid] = fut
        return fut

    async def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> int:
        """Subscribe and return the SUBACK reason code (0..2 granted QoS, >= 0x80 refused)."""
        rc, mid = self.client.subscribe(topic, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise MqttError("closed", f"subscribe {topic}: {mqtt.error_string(rc)}")
        codes = await asyncio.wait_for(self._track(mid), timeout)
        return int(codes[0])

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                      timeout: float = 10.0, response_topic: str | None = None,
                      correlation: bytes | None = None) -> int:
        """Publish and, for QoS 1, wait for the PUBACK; returns its reason code (0 or 16: accepted,
        0x87: not authorised; mosquitto drops denied messages either way)."""
        props = None
        if response_topic or correlation:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise MqttError("closed", f"publish {topic}: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return 0
        return int(await asyncio.wait_for(self._track(info.mid), timeout))

    async def next_message(self, timeout: float) -> Message:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def close(self) -> None:
        """Disconnect cleanly (no will) and stop paho's thread."""
        try:
            self.client.disconnect()
        except Exception:
            pass
        await asyncio.to_thread(self.client.loop_stop)
        self.connected = False

    def peer_certificate_der(self) -> bytes | None:
        """The broker's leaf certificate (DER) of the current TLS connection."""
        sock = self.client.socket()
        if isinstance(sock, ssl.SSLSocket):
            return sock.getpeercert(binary_form=True)
        return None
