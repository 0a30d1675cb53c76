"""paho-mqtt 2.x (MQTT 5) driven by the asyncio event loop, with jittered reconnects.

One :class:`MqttConnection` is one MQTT session. Network I/O runs on the event loop through
paho's external-loop hooks (``loop_read``/``loop_write``/``loop_misc``), so a thousand simulated
devices cost no threads; only the blocking TCP/TLS connect runs in a worker thread. After a drop
the connection retries with exponential backoff and *full jitter* (``uniform(0, min(max,
min * 2**attempt))``) so a fleet does not stampede a restarted broker.

Used by the device's fleet link and by the fleet side (:mod:`fleet.client`, ``fleetctl serve``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import os
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent import protocol

log = logging.getLogger(__name__)

MessageCallback = Callable[[mqtt.MQTTMessage], Any]


@dataclass
class MqttOptions:
    """How to reach the broker; ``url`` is ``mqtt://host[:port]`` or ``mqtts://host[:port]``."""

    url: str
    client_id: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    keepalive_s: int = 30
    clean_start: bool = False
    session_expiry_s: int = 86400
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_inflight: int = 100
    will: tuple[str, bytes, int, bool] | None = None  # topic, payload, qos, retain
    tls_insecure: bool = False  # skip hostname check (tests with IP-only certs)
    manual_ack: bool = False  # QoS 1 messages are acknowledged by ``ack()``, not on receipt
    extra: dict[str, Any] = field(default_factory=dict)

    def host_port(self) -> tuple[str, int, bool]:
        """Parse the URL into (host, port, tls); raises ValueError naming the URL."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"mqtt url {self.url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        tls = parts.scheme == "mqtts"
        return parts.hostname, parts.port or (8883 if tls else 1883), tls


class _BufferedClient(mqtt.Client):
    """paho Client reading the socket in 64 KiB chunks instead of 3-4 tiny ``recv`` calls per packet.

    Overrides the private ``_sock_recv`` (paho is pinned to 2.x; tests/test_fleetlink_* cover it).
    ``rbuf_pending()`` tells the reader loop that whole packets may still wait in the buffer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()
        self._rbuf_sock: Any = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._rbuf_sock:
            self._rbuf_sock = self._sock
            self._rbuf.clear()
        if not self._rbuf:
            data = super()._sock_recv(max(bufsize, 65536))
            if len(data) <= bufsize:
                return data
            self._rbuf += data
        out = bytes(self._rbuf[:bufsize])
        del self._rbuf[:bufsize]
        return out

    def rbuf_pending(self) -> bool:
        return bool(self._rbuf) and self._sock is self._rbuf_sock


class PublishRefused(PermissionError):
    """The broker answered a QoS 1 publish with a failure reason code (ACL, quota, ...)."""


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, min_s * 2**attempt)]."""
    cap = min(max_s, min_s * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, cap)


class MqttConnection:
    """An MQTT 5 session on the running event loop that reconnects by itself.

    ``on_connect(session_present)`` and ``on_disconnect()`` callbacks run on the loop; add
    subscriptions with :meth:`subscribe` (they are renewed on every connect).
    """

    def __init__(self, options: MqttOptions, on_connect: Callable[[bool], Any] | None = None,
                 on_disconnect: Callable[[], Any] | None = None) -> None:
        self.options = options
        self.host, self.port, self.tls = options.host_port()
        self.client_id = options.client_id or f"c-{uuid.uuid4().hex[:12]}"
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._subs: dict[str, tuple[int | mqtt.SubscribeOptions, MessageCallback, bool]] = {}
        self._route_cache: dict[str, list[MessageCallback]] = {}
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._dropped = asyncio.Event()
        self._connected_evt = asyncio.Event()
        self._ready_evt = asyncio.Event()  # connected and every subscription acknowledged
        self._sub_mids: set[int] = set()
        self._handler_tasks: set[asyncio.Future[Any]] = set()  # strong refs until done
        self._closing = False
        self._tls_ctx: ssl.SSLContext | None = None
        self._cert_mtime: int | None = None
        self._client = self._make_client()
        self.connected = False
        self.connects = 0
        self.last_connect_error = ""
        self.connected_at = 0.0
        self.rng = random.Random()

    # ---- setup -------------------------------------------------------------------------
    def _refresh_client_cert(self) -> None:
        """(Re)load the client certificate when its file changed (renewal), before a connect.

        ``load_cert_chain`` replaces the chain in the context paho already holds, so the next
        handshake uses the renewed certificate without rebuilding the client. A pair caught
        half-written (key and certificate not matching) keeps the old one until the next attempt.
        """
        o = self.options
        if self._tls_ctx is None or not o.cert_file:
            return
        try:
            mtime = os.stat(o.cert_file).st_mtime_ns
            if mtime == self._cert_mtime:
                return
            self._tls_ctx.load_cert_chain(o.cert_file, o.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            if self._cert_mtime is None:
                raise  # no usable identity at all: the caller reports it
            log.warning("client certificate not reloaded (%s); keeping the previous one", exc)
            return
        if self._cert_mtime is not None:
            log.info("client certificate reloaded from %s", o.cert_file)
        self._cert_mtime = mtime

    def _make_client(self) -> mqtt.Client:
        o = self.options
        c = _BufferedClient(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv5, reconnect_on_failure=False, manual_ack=o.manual_ack)
        if o.username:
            c.username_pw_set(o.username, o.password or None)
        if self.tls:
            ctx = ssl.create_default_context(cafile=o.ca_file or None)
            self._tls_ctx = ctx
            self._refresh_client_cert()
            if o.tls_insecure:
                ctx.check_hostname = False
            c.tls_set_context(ctx)
        if o.will:
            topic, payload, qos, retain = o.will
            c.will_set(topic, payload, qos=qos, retain=retain)
        c.max_inflight_messages_set(o.max_inflight)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = self._sock_open
        c.on_socket_close = self._sock_close
        c.on_socket_register_write = self._sock_reg_write
        c.on_socket_unregister_write = self._sock_unreg_write
        return c

    def set_will(self, topic: str, payload: bytes, qos: int = 1, retain: bool = True) -> None:
        """Change the last will used from the next connect on."""
        self.options.will = (topic, payload, qos, retain)
        self._client.will_set(topic, payload, qos=qos, retain=retain)

    # ---- event-loop integration (paho's external loop hooks) ----------------------------
    def _in_loop(self, fn: Callable[[], None]) -> None:
        """Run a socket-registration change on the connection's loop. Once that loop is closed there is
        nothing left to change (its readers and writers went with it): paho's client calls the hooks
        from its destructor too, which may run after ``asyncio.run`` returned."""
        assert self._loop is not None
        if self._loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _sock_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def add() -> None:
            assert self._loop is not None
            # No Nagle: a publish right after an ack (a command's answer after its PUBACK) would wait
            # for the peer's delayed ACK, 40 ms each; batches are coalesced by corking instead.
            _set_tcp_option(sock, "TCP_NODELAY", 1)
            self._loop.add_reader(sock, self._read, sock)
            if self._misc is None or self._misc.done():
                self._misc = self._loop.create_task(self._misc_loop())
        self._in_loop(add)

    def _read(self, sock: Any) -> None:
        """Drain what is readable in one go; acks go out corked in as few segments as possible."""
        c = self._client
        cork = _set_tcp_option(sock, "TCP_CORK", 1)
        try:
            for _ in range(500):
                c.loop_read()
                if c.socket() is not sock:
                    return
                # buffered packets, or TLS bytes the selector cannot see
                if not (c.rbuf_pending() or (isinstance(sock, ssl.SSLSocket) and sock.pending())):
                    break
            else:
                assert self._loop is not None
                self._loop.call_soon(self._read, sock)  # more to do: yield to the loop first
            if c.want_write():
                c.loop_write()
        finally:
            if cork and c.socket() is sock:
                _set_tcp_option(sock, "TCP_CORK", 0)

    def _write(self, sock: Any) -> None:
        """Write every queued packet, corked: a burst of publishes leaves in as few segments as possible."""
        c = self._client
        cork = _set_tcp_option(sock, "TCP_CORK", 1)
        try:
            c.loop_write()
        finally:
            if cork and c.socket() is sock:
                _set_tcp_option(sock, "TCP_CORK", 0)

    def _sock_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def remove() -> None:
            assert self._loop is not None
            try:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            except (ValueError, OSError):
                pass
        self._in_loop(remove)

    def _sock_reg_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(lambda: self._loop.add_writer(sock, self._write, sock)  # type: ignore[union-attr]
                      if sock.fileno() >= 0 else None)

    def _sock_unreg_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def remove() -> None:
            try:
                self._loop.remove_writer(sock)  # type: ignore[union-attr]
            except (ValueError, OSError):
                pass
        self._in_loop(remove)

    async def _misc_loop(self) -> None:
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1.0)

    # ---- paho callbacks (on the loop) ---------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.last_connect_error = str(rc)
            log.warning("mqtt %s refused the connection: %s", self.host, rc)
            return
        self.connected = True
        self.connects += 1
        log.debug("mqtt %s connected to %s:%s (session present: %s)", self.client_id, self.host, self.port,
                  getattr(flags, "session_present", None))
        self.connected_at = time.time()
        self._connected_evt.set()
        self._sub_mids = set()
        for topic, (qos, _cb, _shared) in self._subs.items():
            _rc, mid = self._send_subscribe(topic, qos)
            self._sub_mids.add(mid)
        if not self._sub_mids:
            self._ready_evt.set()
        if self._on_connect_cb:
            self._on_connect_cb(bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        was = self.connected
        self.connected = False
        self._connected_evt.clear()
        self._ready_evt.clear()
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost before the broker acknowledged"))
        self._acks.clear()
        self._dropped.set()
        if was and self._on_disconnect_cb:
            self._on_disconnect_cb()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        callbacks = self._route_cache.get(topic)
        if callbacks is None:
            callbacks = [cb for sub, (_qos, cb, _shared) in self._subs.items()
                         if mqtt.topic_matches_sub(protocol.strip_share(sub), topic)]
            if len(self._route_cache) > 100_000:
                self._route_cache.clear()
            self._route_cache[topic] = callbacks
        for cb in callbacks:
            try:
                res = cb(msg)
                if asyncio.iscoroutine(res):
                    task = asyncio.ensure_future(res)
                    self._handler_tasks.add(task)
                    task.add_done_callback(self._handler_tasks.discard)
            except Exception:
                log.exception("mqtt message handler for %s failed", topic)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        if mid in self._sub_mids:
            self._sub_mids.discard(mid)
            if not self._sub_mids:
                self._ready_evt.set()
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            bad = [str(rc) for rc in rcs if getattr(rc, "is_failure", False)]
            if bad:
                fut.set_exception(PermissionError(f"subscription refused: {', '.join(bad)}"))
            else:
                fut.set_result(None)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            if getattr(rc, "is_failure", False):  # e.g. 0x87 not authorized: the broker dropped it
                fut.set_exception(PublishRefused(f"broker refused the publish: {rc}"))
            else:
                fut.set_result(None)

    # ---- public API ---------------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting in the background (returns at once)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        self._runner = self._loop.create_task(self._run())

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until connected with every subscription acknowledged (SUBACK) by the broker."""
        await asyncio.wait_for(self._ready_evt.wait(), timeout)

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected_evt.wait(), timeout)

    async def _run(self) -> None:
        o = self.options
        attempt = 0
        first = True
        while not self._closing:
            self._dropped.clear()
            try:
                self._refresh_client_cert()
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = o.session_expiry_s
                if first:
                    await asyncio.to_thread(self._client.connect, self.host, self.port, o.keepalive_s,
                                            clean_start=o.clean_start, properties=props)
                    first = False
                else:
                    await asyncio.to_thread(self._client.reconnect)
                ok = await self._wait_connack(max(10.0, o.keepalive_s))
                if ok:
                    attempt = 0
                    await self._dropped.wait()
                    if self._closing:
                        return
                else:
                    self._client._sock_close()  # noqa: SLF001 -- abandon a half-open attempt
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.last_connect_error = f"{type(exc).__name__}: {exc}"
                log.debug("mqtt connect to %s:%s failed: %s", self.host, self.port, exc)
            if self._closing:
                return
            delay = backoff_delay(attempt, o.reconnect_min_s, o.reconnect_max_s, self.rng)
            attempt += 1
            await asyncio.sleep(delay)

    async def _wait_connack(self, timeout: float) -> bool:
        conn = asyncio.ensure_future(self._connected_evt.wait())
        drop = asyncio.ensure_future(self._dropped.wait())
        try:
            await asyncio.wait({conn, drop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            conn.cancel()
            drop.cancel()
        return self.connected

    def _send_subscribe(self, topic: str, qos: int | mqtt.SubscribeOptions) -> tuple[int, int]:
        if isinstance(qos, mqtt.SubscribeOptions):
            return self._client.subscribe(topic, options=qos)
        return self._client.subscribe(topic, qos=qos)

    def subscribe(self, topic: str, callback: MessageCallback, qos: int = 1,
                  options: mqtt.SubscribeOptions | None = None) -> None:
        """Subscribe now (if connected) and after every reconnect; callback(msg) on the loop.

        ``options`` (MQTT 5 subscribe options: QoS, retain-as-published, ...) replace ``qos``.
        """
        self._subs[topic] = (options or qos, callback, protocol.is_shared(topic))
        self._route_cache.clear()
        if self.connected:
            self._send_subscribe(topic, options or qos)

    async def subscribe_wait(self, topic: str, callback: MessageCallback, qos: int = 1,
                             timeout: float = 10.0) -> None:
        """Subscribe and wait for the broker's SUBACK (raises PermissionError when refused)."""
        self._subs[topic] = (qos, callback, protocol.is_shared(topic))
        self._route_cache.clear()
        if not self.connected:
            raise ConnectionError(f"not connected to {self.options.url}")
        rc, mid = self._client.subscribe(topic, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe {topic}: {mqtt.error_string(rc)}")
        await asyncio.wait_for(self.ack_future(mid), timeout)

    def unsubscribe(self, topic: str) -> None:
        self._route_cache.clear()
        if self._subs.pop(topic, None) is not None and self.connected:
            self._client.unsubscribe(topic)

    def publish_nowait(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                       properties: Properties | None = None) -> int:
        """Queue a publish; returns its mid (paho resends it after a reconnect)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        return info.mid

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (``manual_ack`` sessions) on the current connection."""
        if self.connected:
            self._client.ack(mid, qos)

    def ack_future(self, mid: int) -> asyncio.Future[None]:
        """A future resolved when the broker acknowledges ``mid`` (QoS 1)."""
        assert self._loop is not None
        fut = self._loop.create_future()
        self._acks[mid] = fut
        return fut

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                      properties: Properties | None = None, timeout: float = 30.0) -> None:
        """Publish and, for QoS > 0, wait for the broker's acknowledgement."""
        if not self.connected:
            raise ConnectionError(f"not connected to {self.options.url}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos == 0:
            return
        if info.is_published():
            return
        fut = self.ack_future(info.mid)
        if info.is_published():  # acknowledged in between
            self._acks.pop(info.mid, None)
            return
        await asyncio.wait_for(fut, timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no last will) and stop reconnecting."""
        self._closing = True
        if self.connected:
            self._client.disconnect()
            try:
                await asyncio.wait_for(self._dropped.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        self._dropped.set()
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, Exception):
                pass
        if self._misc is not None:
            self._misc.cancel()
        self._client._sock_close()  # noqa: SLF001 -- idempotent; removes readers via the hook
        self.connected = False


def _set_tcp_option(sock: Any, name: str, value: int) -> bool:
    """Set a TCP socket option where this system has it; False when it could not be set."""
    option = getattr(socket, name, None)
    if option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        return False
    return True


def response_properties(response_topic: str, correlation: bytes, expiry_s: int = 0) -> Properties:
    """PUBLISH properties for a request expecting an answer (MQTT 5 request/response)."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    if expiry_s:
        props.MessageExpiryInterval = int(expiry_s)
    return props


AsyncHandler = Callable[[str, bytes], Awaitable[None] | None]
