"""paho-mqtt 2.x (MQTT 5) driven by the asyncio event loop, with jittered reconnects.

One :class:`MqttConnection` is one MQTT session. Network I/O runs on the event loop through
paho's external-loop hooks (``loop_read``/``loop_write``/``loop_misc``), so a thousand simulated
devices cost no threads; only the blocking TCP/TLS connect runs in a worker thread. After a drop
the connection retries with exponential backoff and *full jitter* (``uniform(0, min(max,
min * 2**attempt))``) so a fleet does not stampede a restarted broker.

The one MQTT transport of the project: the device's fleet link, the fleet side
(:mod:`fleet.client`, ``fleetctl serve``) and, through :class:`MqttClient` (one connection for a
request/response exchange, no reconnects, classified :class:`MqttError`), the claim, the online
report, renewal before the agent runs, ``doctor`` and the fleet's claim responder. Broker URLs are
parsed by :func:`parse_broker_url` only, TLS contexts are built by :func:`tls_context` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
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

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerUrlError(ValueError):
    """A broker URL that is not ``mqtt://host[:port]`` or ``mqtts://host[:port]``."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` (default 1883) or ``mqtts://host[:port]`` (default 8883, TLS).

    Anything else (another scheme, no scheme, no host, a bad port) raises :class:`BrokerUrlError`
    naming the URL.
    """
    expected = "expected mqtt://host[:port] or mqtts://host[:port]"
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise BrokerUrlError(f"mqtt url {url!r}: {exc}; {expected}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise BrokerUrlError(f"mqtt url {url!r}: {expected}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerUrlError(f"mqtt url {url!r}: no path, query or fragment allowed; {expected}")
    if port == 0:
        raise BrokerUrlError(f"mqtt url {url!r}: port 0; {expected}")
    return BrokerAddress(parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts")


def split_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """A scheme-less endpoint ``host``, ``host:port`` or ``[v6]:port`` -> (host, port) (the claim
    listener given to ``provision --fleet``); an ``mqtt://``/``mqtts://`` URL goes through
    :func:`parse_broker_url` and its default ports."""
    text = (text or "").strip()
    if "://" in text:
        addr = parse_broker_url(text)
        return addr.host, addr.port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise BrokerUrlError(f"no host in {text!r}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise BrokerUrlError(f"bad port in {text!r}")
    return host, int(port) if port else default_port


def tls_context(
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    verify: bool = True,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """The client TLS context of every MQTT connection (TLS 1.2 at least).

    ``verify``: check the broker against ``ca_file`` (the system CAs when empty); false for the
    claim connection, which checks the broker's certificate by hand against the token's pin.
    ``cert_file``/``key_file``: the client certificate for mutual TLS.
    """
    if verify:
        ctx = ssl.create_default_context(cafile=ca_file or None)
        ctx.check_hostname = check_hostname
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


class MqttError(Exception):
    """A connection, subscription or publication failed; ``kind`` classifies it for people.

    kinds: ``dns`` (name does not resolve: no network or a typo), ``network`` (no route),
    ``refused`` (nothing listening), ``timeout``, ``tls`` (handshake or certificate refused),
    ``rejected`` (CONNACK refused), ``denied`` (not authorised), ``closed``, ``config`` (a TLS file
    that cannot be read).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def connect_error(exc: OSError, host: str, port: int, timeout: float) -> MqttError:
    """A failed TCP/TLS connect, classified and worded for people (never an empty reason)."""
    if isinstance(exc, socket.gaierror):
        return MqttError(
            "dns",
            f"cannot resolve {host!r} ({exc.strerror or exc}): no network, no DNS, "
            "or a typo in the host name",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MqttError(
            "tls",
            f"TLS: the certificate of {host}:{port} was not accepted: {exc.verify_message or exc.reason} "
            "(wrong CA file, or a host name the broker certificate does not list)",
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc) or type(exc).__name__
        hint = " (an mqtts:// URL on a plain listener?)" if "WRONG_VERSION_NUMBER" in reason.upper() else ""
        return MqttError("tls", f"TLS handshake with {host}:{port} failed: {reason}{hint}")
    if isinstance(exc, ConnectionRefusedError):
        return MqttError("refused", f"{host}:{port} refused the connection: broker not running or wrong port")
    if isinstance(exc, TimeoutError):
        return MqttError(
            "timeout",
            f"no answer from {host}:{port} within {timeout:g} s: broker unreachable "
            "or a firewall drops the traffic",
        )
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return MqttError("config", f"cannot read {exc.filename}: {exc.strerror}")
    return MqttError(
        "network", f"cannot reach {host}:{port}: {exc.strerror or exc}: check the network cable or Wi-Fi"
    )


@dataclass
class Message:
    """A received message, as :class:`MqttClient` queues it."""

    topic: str
    payload: bytes
    retain: bool
    properties: Any = None


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
    ssl_context: ssl.SSLContext | None = None  # a ready context (MqttClient); else built from the files
    extra: dict[str, Any] = field(default_factory=dict)

    def host_port(self) -> tuple[str, int, bool]:
        """Parse the URL into (host, port, tls); raises BrokerUrlError (a ValueError) naming the URL."""
        addr = parse_broker_url(self.url)
        return addr.host, addr.port, addr.tls


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

    def __init__(self, message: str, code: int = 0x80) -> None:
        super().__init__(message)
        self.code = code


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, min_s * 2**attempt)]."""
    cap = min(max_s, min_s * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, cap)


class MqttConnection:
    """An MQTT 5 session on the running event loop that reconnects by itself.

    ``on_connect(session_present)`` and ``on_disconnect()`` callbacks run on the loop; add
    subscriptions with :meth:`subscribe` (they are renewed on every connect).
    """

    def __init__(
        self,
        options: MqttOptions,
        on_connect: Callable[[bool], Any] | None = None,
        on_disconnect: Callable[[], Any] | None = None,
    ) -> None:
        self.options = options
        if options.url:
            self.host, self.port, self.tls = options.host_port()
        else:  # MqttClient: the address comes with connect()
            self.host, self.port, self.tls = "", 0, options.ssl_context is not None
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
        self._sub_codes: dict[int, asyncio.Future[int]] = {}  # mid -> SUBACK reason code
        self._refused = ""  # the CONNACK failure of the last attempt
        self._handler_tasks: set[asyncio.Future[Any]] = set()  # strong refs until done
        self._closing = False
        self._tls_ctx: ssl.SSLContext | None = None
        self._cert_mtime: int | None = None
        self._client = self._make_client()
        self.connected = False
        self.connects = 0
        self.last_connect_error = ""
        self.last_error: MqttError | None = None  # the last failed attempt, classified (None once connected)
        self.attempt_failed = asyncio.Event()  # set by every failed attempt (fleetctl fails fast on it)
        self.connected_at = 0.0
        self.disconnect_reason = ""
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

    def _make_client(self) -> _BufferedClient:
        o = self.options
        c = _BufferedClient(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=o.manual_ack,
        )
        if o.username:
            c.username_pw_set(o.username, o.password or None)
        if o.ssl_context is not None:
            c.tls_set_context(o.ssl_context)
        elif self.tls:
            ctx = tls_context(o.ca_file, check_hostname=not o.tls_insecure)
            self._tls_ctx = ctx
            self._refresh_client_cert()
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
        self._in_loop(
            lambda: (
                self._loop.add_writer(sock, self._write, sock)  # type: ignore[union-attr]
                if sock.fileno() >= 0
                else None
            )
        )

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
            self.last_connect_error = self._refused = str(rc)
            log.warning("mqtt %s refused the connection: %s", self.host, rc)
            return
        self.connected = True
        self.connects += 1
        log.debug(
            "mqtt %s connected to %s:%s (session present: %s)",
            self.client_id,
            self.host,
            self.port,
            getattr(flags, "session_present", None),
        )
        self.connected_at = time.time()
        self._connected_evt.set()
        self._sub_mids = set()
        unsent = False  # paho gives no mid when the connection is already gone (on_disconnect follows)
        for topic, (qos, _cb, _shared) in self._subs.items():
            _rc, mid = self._send_subscribe(topic, qos)
            if mid is None:
                unsent = True
            else:
                self._sub_mids.add(mid)
        if not self._sub_mids and not unsent:
            self._ready_evt.set()
        if self._on_connect_cb:
            self._on_connect_cb(bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        was = self.connected
        self.connected = False
        self._connected_evt.clear()
        self._ready_evt.clear()
        pending: list[asyncio.Future[Any]] = [*self._acks.values(), *self._sub_codes.values()]
        for fut in pending:
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection closed ({rc}) before the broker acknowledged"))
        self._acks.clear()
        self._sub_codes.clear()
        self.disconnect_reason = str(rc)
        self._dropped.set()
        if was and self._on_disconnect_cb:
            self._on_disconnect_cb()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        callbacks = self._route_cache.get(topic)
        if callbacks is None:
            callbacks = [
                cb
                for sub, (_qos, cb, _shared) in self._subs.items()
                if mqtt.topic_matches_sub(protocol.strip_share(sub), topic)
            ]
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
        code = self._sub_codes.pop(mid, None)
        if code is not None and not code.done():
            code.set_result(int(rcs[0].value) if rcs else 0x80)
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
                fut.set_exception(
                    PublishRefused(f"broker refused the publish: {rc}", int(getattr(rc, "value", 0x80)))
                )
            else:
                fut.set_result(None)

    # ---- public API ---------------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting in the background (returns at once)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        self._runner = self._loop.create_task(self._run())

    async def connect_once(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Connect once, without reconnecting after a drop; raises a classified :class:`MqttError`.

        For request/response exchanges (:class:`MqttClient`); :meth:`start` is the self-healing session.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        self.host, self.port = host, port
        self._refused = ""
        self._dropped.clear()
        self._client.connect_timeout = timeout
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.options.session_expiry_s
        try:
            await asyncio.wait_for(
                asyncio.to_thread(
                    self._client.connect,
                    host,
                    port,
                    self.options.keepalive_s,
                    clean_start=self.options.clean_start,
                    properties=props,
                ),
                timeout,
            )
        except (OSError, ssl.SSLError) as exc:
            raise connect_error(exc, host, port, timeout) from None
        if await self._wait_connack(timeout):
            return
        err = self._no_connack_error(timeout)
        await self.close()
        raise err

    def _no_connack_error(self, timeout: float) -> MqttError:
        """Why an attempt that opened TCP (and TLS) got no CONNACK: refused, dropped or silent."""
        host, port = self.host, self.port
        if self._refused:
            return MqttError("rejected", f"broker {host}:{port} refused the connection: {self._refused}")
        if self._dropped.is_set():
            hint = (
                "client certificate refused (wrong --cert/--key, or one the broker's CA did not sign)?"
                if self.tls
                else "a plain mqtt:// URL on a TLS listener (use mqtts://)?"
            )
            return MqttError(
                "tls",
                f"broker {host}:{port} closed the connection before CONNACK "
                f"({self.disconnect_reason}): {hint}",
            )
        return MqttError("timeout", f"{host}:{port} accepted TCP but sent no CONNACK within {timeout:g} s")

    def peer_certificate_der(self) -> bytes | None:
        """The broker's leaf certificate (DER) of the current TLS connection."""
        sock = self._client.socket()
        if isinstance(sock, ssl.SSLSocket):
            return sock.getpeercert(binary_form=True)
        return None

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
                    await asyncio.to_thread(
                        self._client.connect,
                        self.host,
                        self.port,
                        o.keepalive_s,
                        clean_start=o.clean_start,
                        properties=props,
                    )
                    first = False
                else:
                    await asyncio.to_thread(self._client.reconnect)
                ok = await self._wait_connack(max(10.0, o.keepalive_s))
                if ok:
                    attempt = 0
                    self.last_error = None
                    await self._dropped.wait()
                    if self._closing:
                        return
                else:
                    self._fail_attempt(self._no_connack_error(max(10.0, o.keepalive_s)))
                    self._client._sock_close()  # noqa: SLF001 -- abandon a half-open attempt
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.last_connect_error = f"{type(exc).__name__}: {exc}"
                log.debug("mqtt connect to %s:%s failed: %s", self.host, self.port, exc)
                self._fail_attempt(
                    connect_error(exc, self.host, self.port, max(10.0, o.keepalive_s))
                    if isinstance(exc, OSError)
                    else MqttError("config", f"{type(exc).__name__}: {exc}")
                )
            if self._closing:
                return
            delay = backoff_delay(attempt, o.reconnect_min_s, o.reconnect_max_s, self.rng)
            attempt += 1
            await asyncio.sleep(delay)

    def _fail_attempt(self, err: MqttError) -> None:
        self.last_error = err
        if not self.last_connect_error:
            self.last_connect_error = str(err)
        self.attempt_failed.set()

    async def _wait_connack(self, timeout: float) -> bool:
        conn = asyncio.ensure_future(self._connected_evt.wait())
        drop = asyncio.ensure_future(self._dropped.wait())
        try:
            await asyncio.wait({conn, drop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            conn.cancel()
            drop.cancel()
        return self.connected

    def _send_subscribe(
        self, topic: str, qos: int | mqtt.SubscribeOptions
    ) -> tuple[mqtt.MQTTErrorCode, int | None]:
        if isinstance(qos, mqtt.SubscribeOptions):
            return self._client.subscribe(topic, options=qos)
        return self._client.subscribe(topic, qos=qos)

    def subscribe(
        self,
        topic: str,
        callback: MessageCallback,
        qos: int = 1,
        options: mqtt.SubscribeOptions | None = None,
    ) -> None:
        """Subscribe now (if connected) and after every reconnect; callback(msg) on the loop.

        ``options`` (MQTT 5 subscribe options: QoS, retain-as-published, ...) replace ``qos``.
        """
        self._subs[topic] = (options or qos, callback, protocol.is_shared(topic))
        self._route_cache.clear()
        if self.connected:
            self._send_subscribe(topic, options or qos)

    async def subscribe_wait(
        self, topic: str, callback: MessageCallback, qos: int = 1, timeout: float = 10.0
    ) -> None:
        """Subscribe and wait for the broker's SUBACK (raises PermissionError when refused)."""
        self._subs[topic] = (qos, callback, protocol.is_shared(topic))
        self._route_cache.clear()
        if not self.connected:
            raise ConnectionError(f"not connected to {self.options.url}")
        rc, mid = self._client.subscribe(topic, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"subscribe {topic}: {mqtt.error_string(rc)}")
        await asyncio.wait_for(self.ack_future(mid), timeout)

    async def subscribe_code(
        self, topic: str, callback: MessageCallback, qos: int = 1, timeout: float = 10.0
    ) -> int:
        """Subscribe and return the SUBACK reason code (0..2 granted QoS, >= 0x80 refused)."""
        self._subs[topic] = (qos, callback, protocol.is_shared(topic))
        self._route_cache.clear()
        if not self.connected:
            raise ConnectionError(f"not connected to {self.host}:{self.port}")
        rc, mid = self._client.subscribe(topic, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"subscribe {topic}: {mqtt.error_string(rc)}")
        assert self._loop is not None
        fut: asyncio.Future[int] = self._loop.create_future()
        self._sub_codes[mid] = fut
        return await asyncio.wait_for(fut, timeout)

    def unsubscribe(self, topic: str) -> None:
        self._route_cache.clear()
        if self._subs.pop(topic, None) is not None and self.connected:
            self._client.unsubscribe(topic)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
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

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 30.0,
    ) -> None:
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
            except TimeoutError:
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


class MqttClient:
    """One MQTT 5 connection for a request/response exchange, on :class:`MqttConnection`.

    ``await connect(host, port)``, ``subscribe`` (returns the SUBACK code), ``publish`` (returns
    the PUBACK code: 0 or 16 accepted, 0x87 not authorised), every message in ``messages``
    (``next_message``), ``close``. Clean start, no session, no reconnects; failures are
    :class:`MqttError`. Used by the claim, the online report, renewal outside the agent, ``doctor``
    and the fleet's claim responder.
    """

    def __init__(
        self,
        client_id: str,
        tls: ssl.SSLContext | None = None,
        keepalive: int = 30,
        will: tuple[str, bytes, bool] | None = None,
        username: str = "",
        password: str = "",
    ) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self._last: Any = None
        self.conn = MqttConnection(
            MqttOptions(
                url="",
                client_id=client_id,
                ssl_context=tls,
                keepalive_s=keepalive,
                clean_start=True,
                session_expiry_s=0,
                username=username,
                password=password,
                will=(will[0], will[1], 1, will[2]) if will is not None else None,
            )
        )

    @property
    def connected(self) -> bool:
        return self.conn.connected

    @property
    def disconnect_reason(self) -> str:
        return self.conn.disconnect_reason

    def _queue(self, msg: mqtt.MQTTMessage) -> None:
        if msg is self._last:  # one message matching two of our filters is queued once
            return
        self._last = msg
        self.messages.put_nowait(
            Message(msg.topic, bytes(msg.payload), bool(msg.retain), getattr(msg, "properties", None))
        )

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Open TCP + TLS and wait for a successful CONNACK; raises ``MqttError``."""
        await self.conn.connect_once(host, port, timeout)

    async def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> int:
        """Subscribe and return the SUBACK reason code (0..2 granted QoS, >= 0x80 refused)."""
        try:
            return await self.conn.subscribe_code(topic, self._queue, qos, timeout)
        except ConnectionError as exc:
            raise MqttError("closed", f"subscribe {topic}: {exc}") from None

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> int:
        """Publish and, for QoS 1, wait for the PUBACK; returns its reason code (0 or 16: accepted,
        0x87: not authorised; mosquitto drops denied messages either way)."""
        props = None
        if response_topic or correlation:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        try:
            await self.conn.publish(topic, payload, qos=qos, retain=retain, properties=props, timeout=timeout)
        except PublishRefused as exc:
            return exc.code
        except ConnectionError as exc:
            raise MqttError("closed", f"publish {topic}: {exc}") from None
        return 0

    async def next_message(self, timeout: float) -> Message:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def close(self) -> None:
        """Disconnect cleanly (no will)."""
        await self.conn.close()

    def peer_certificate_der(self) -> bytes | None:
        """The broker's leaf certificate (DER) of the current TLS connection."""
        return self.conn.peer_certificate_der()
