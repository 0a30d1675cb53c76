"""The fleet link component: status, telemetry, alerts, events and commands over MQTT 5.

Topics live under ``dev/{device.id}/`` (docs/protocol.md). Telemetry samples and events are
numbered with the agent's boot id and a per-boot sequence number and always pass through the
on-disk :class:`~device_agent.fleetlink.spool.Spool`, so they reach the fleet in order after an
outage or a restart; the fleet de-duplicates redeliveries by (device, boot, seq).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent import __version__, protocol, telemetry_codec
from device_agent.fleetlink.commands import LinkCommands, Runner, run_command
from device_agent.fleetlink.default_rules import effective_rules
from device_agent.fleetlink.intake import LogThrottle, RecentCommands, decode_params, response_topic_problem
from device_agent.fleetlink.mqtt import MqttConnection, MqttOptions, PublishRefused
from device_agent.fleetlink.rules import RuleEngine
from device_agent.fleetlink.spool import KIND_EVENT, KIND_TELEMETRY, Spool
from device_agent.protocol import ErrorCode, Leaf, error_result, ok_result
from device_agent.registry import Alert, CommandError
from ota.layout import Layout
from provisioning.identity import fleet_client_id

if TYPE_CHECKING:
    from device_agent.agent import Agent

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None] | None]
SEND_WINDOW = 100  # spooled messages in flight at once


def compact(value: Any) -> Any:
    """Round floats to 3 decimals, recursively: telemetry stays small."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [compact(v) for v in value]
    return value


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class FleetLink:
    """Component ``fleet_link``. Public API for other features:

    - ``await link.publish(subtopic, payload, qos=1)``: publish on ``dev/{id}/{subtopic}`` now
      (raises ``ConnectionError`` while offline; use ``agent.events`` for spooled delivery);
    - ``link.add_handler(subtopic_filter, callback)``: ``callback(subtopic, payload)`` for
      messages on ``dev/{id}/{subtopic_filter}`` (wildcards allowed; coroutines are awaited);
    - ``link.connected``; ``await link.wait_ready(timeout)`` until connected and subscribed.
    """

    name = "fleet_link"

    def __init__(
        self,
        agent: Agent,
        runner: Runner = run_command,
        executor: concurrent.futures.Executor | None = None,
        system_metrics: bool = True,
        spool_path: str | Path | None = None,
        client_id: str = "",
    ) -> None:
        """``client_id``: the MQTT client id (default :func:`fleet_client_id`: the certificate's CN, else
        ``dev-<id>``); simulated devices sharing one service certificate each give their own."""
        self.agent = agent
        cfg = agent.config
        self.device_id = cfg.device.id
        self.base = protocol.device_base(self.device_id)
        self.version = __version__
        self.slot = Layout(cfg.ota.root, cfg.device.state_dir).current_slot() or ""  # "" outside A/B slots
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._system_metrics = system_metrics
        self.spool_path = Path(spool_path) if spool_path else cfg.state_dir / "fleetlink" / "spool.db"
        self.spool: Spool | None = None
        self.commands = LinkCommands(agent, runner, on_config_applied=self._config_applied)
        self.rules = RuleEngine(effective_rules(cfg), agent.alerts)
        m = cfg.mqtt
        self.conn = MqttConnection(
            MqttOptions(
                url=m.url,
                client_id=client_id or fleet_client_id(self.device_id, m.cert_file),
                ca_file=m.ca_file,
                cert_file=m.cert_file,
                key_file=m.key_file,
                username=m.username,
                password=m.password,
                keepalive_s=m.keepalive_s,
                clean_start=False,
                session_expiry_s=m.session_expiry_s,
                reconnect_min_s=m.reconnect_min_s,
                reconnect_max_s=m.reconnect_max_s,
                max_inflight=SEND_WINDOW,
                will=(protocol.status(self.device_id), self._status(False, "lost"), 1, True),
            ),
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )
        self._seq = 0
        self._inflight: dict[int, int] = {}  # mid -> spool row id
        self._last_sent = 0
        self._gen = 0
        self._wake = asyncio.Event()
        self._interval_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._pending_delete: list[int] = []
        self._delete_scheduled = False
        self._spool_stats: dict[str, int] = {}
        self._spool_error = ""
        self.delivered = 0
        self.refused = 0
        self.last_refusal = ""
        self.samples = 0
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._recent = RecentCommands()
        self._log_throttle = LogThrottle(log)
        self._compressed_props = Properties(PacketTypes.PUBLISH)
        self._compressed_props.ContentType = telemetry_codec.content_type()

    # ---- public API ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.conn.connected

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until connected and subscribed (commands and handlers are live)."""
        await self.conn.wait_ready(timeout)

    async def publish(self, subtopic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None:
        """Publish on ``dev/{id}/{subtopic}`` and wait for the broker's ack (QoS 1)."""
        data = dumps(payload) if isinstance(payload, dict) else payload
        await self.conn.publish(protocol.device_topic(self.device_id, subtopic), data, qos=qos)

    def add_handler(self, subtopic_filter: str, callback: Handler) -> None:
        """Call ``callback(subtopic, payload)`` for messages on ``dev/{id}/{subtopic_filter}``."""
        prefix = len(self.base) + 1

        async def deliver(msg: mqtt.MQTTMessage) -> None:
            try:
                res = callback(msg.topic[prefix:], bytes(msg.payload))  # bytes(b) is b: no copy
                if asyncio.iscoroutine(res):
                    await res
            except Exception:
                log.exception("handler for %s failed", msg.topic)

        self.conn.subscribe(protocol.device_topic(self.device_id, subtopic_filter), deliver)

    def emit_telemetry(self, sample: dict[str, Any]) -> None:
        """Spool one telemetry sample now (the periodic loop calls this too)."""
        self._enqueue(
            KIND_TELEMETRY, Leaf.TELEMETRY, {"ts": round(time.time(), 3), "health": compact(sample)}
        )

    # ---- component ----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.spool = await loop.run_in_executor(
            self._executor, Spool, self.spool_path, self.agent.config.mqtt.spool_max_bytes
        )
        self._spool_stats = await loop.run_in_executor(self._executor, self.spool.stats)
        if self.spool.quarantined is not None:
            log.error(
                "spool %s was corrupt: moved to %s, starting empty", self.spool_path, self.spool.quarantined
            )
        if self._system_metrics:
            from device_agent.health.system import SystemMetrics

            disk = self.agent.config.state_dir if self.agent.config.state_dir.exists() else Path("/")
            self.agent.health.add(
                "system", SystemMetrics(disk_path=str(disk), version=self.version, slot=self.slot)
            )
            from device_agent.health.starts import StartHistory

            starts = StartHistory(self.agent.config.state_dir / "agent-starts.json", boot=self.agent.boot_id)
            self.agent.health.add("agent", await asyncio.to_thread(starts.record))  # the crash_loop rule
        self.agent.health.add("fleet_link", self.health)
        self.commands.register()
        self.agent.alerts.subscribe(self._on_alert)
        self.agent.events.subscribe(self._on_event)
        if self.spool.quarantined is not None:
            self.agent.events.emit("spool.reset", reason="corrupt", moved_to=str(self.spool.quarantined))
        # retain-as-published: a retained command keeps its flag even when delivered live, so it is refused
        self.conn.subscribe(
            protocol.command_filter(self.device_id),
            self._on_command,
            options=mqtt.SubscribeOptions(qos=1, retainAsPublished=True),
        )
        self.conn.start()
        self._tasks = [
            loop.create_task(self._send_loop(), name="fleetlink-send"),
            loop.create_task(self._telemetry_loop(), name="fleetlink-telemetry"),
            loop.create_task(self._rules_loop(), name="fleetlink-rules"),
        ]
        self._started = True

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self.conn.connected:
            try:
                await self.conn.publish(
                    protocol.status(self.device_id), self._status(False, "stopped"), retain=True, timeout=2.0
                )
            except (TimeoutError, ConnectionError):
                pass
        await self.conn.close()
        loop = asyncio.get_running_loop()
        if self.spool is not None:
            await self._flush_deletes()
            await loop.run_in_executor(self._executor, self.spool.close)
        if self._own_executor:
            self._executor.shutdown(wait=True)
        self._started = False

    def healthy(self) -> bool:
        return self._started and not self._spool_error and all(not t.done() for t in self._tasks)

    def health(self) -> dict[str, Any]:
        return {
            "connected": self.conn.connected,
            "connects": self.conn.connects,
            "seq": self._seq,
            "refused": self.refused,
            **({"last_refusal": self.last_refusal} if self.last_refusal else {}),
            "spool": self._spool_stats,
            **({"spool_error": self._spool_error} if self._spool_error else {}),
        }

    # ---- status ---------------------------------------------------------------------------
    def _status(self, online: bool, reason: str = "") -> bytes:
        cfg = self.agent.config.device
        body: protocol.Status = {
            "online": online,
            "boot": self.agent.boot_id,
            "ts": round(time.time(), 3),
            "version": self.version,
            "slot": self.slot,
            "hardware": cfg.hardware,
            "group": cfg.group,
        }
        if reason:
            body["reason"] = reason
        return dumps(body)

    def _on_connect(self, session_present: bool) -> None:
        log.info(
            "fleet link connected to %s (session present: %s)", self.agent.config.mqtt.url, session_present
        )
        self.conn.publish_nowait(protocol.status(self.device_id), self._status(True), qos=1, retain=True)
        self._wake.set()

    def _on_disconnect(self) -> None:
        if not self.conn.closing:
            log.warning("fleet link lost the broker; spooling")
        self._inflight.clear()
        self._last_sent = 0
        self._gen += 1

    # ---- spool in / out ---------------------------------------------------------------------
    def _enqueue(self, kind: str, subtopic: str, body: dict[str, Any]) -> None:
        self._seq += 1
        data = dumps({"boot": self.agent.boot_id, "seq": self._seq, **body})
        if self.spool is None:
            log.warning("fleet link not started; %s seq %d not spooled", kind, self._seq)
            return
        fut = asyncio.get_running_loop().run_in_executor(
            self._executor, self._append_sync, kind, protocol.device_topic(self.device_id, subtopic), data
        )
        fut.add_done_callback(self._appended)

    def _append_sync(self, kind: str, topic: str, data: bytes) -> dict[str, int]:
        assert self.spool is not None
        dropped = self.spool.append(kind, topic, data)
        self._spool_stats = self.spool.stats()
        return dropped

    def _appended(self, fut: asyncio.Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            self._spool_error = f"{type(exc).__name__}: {exc}"
            log.error("spool append failed: %s", exc)
            return
        dropped = fut.result()
        if dropped.get(KIND_TELEMETRY) or dropped.get(KIND_EVENT):
            log.warning("spool full: dropped %s", dropped)
        self._wake.set()

    def _on_alert(self, alert: Alert) -> None:
        self._enqueue_any_thread(KIND_EVENT, Leaf.EVENTS, alert.to_dict())

    def _on_event(self, event: dict[str, Any]) -> None:
        self._enqueue_any_thread(KIND_EVENT, Leaf.EVENTS, compact(event))

    def _enqueue_any_thread(self, kind: str, subtopic: str, body: dict[str, Any]) -> None:
        """Alerts/events raised from a worker thread are numbered on the loop, in arrival order."""
        if self._loop is None or threading.get_ident() == self._loop_thread:
            self._enqueue(kind, subtopic, body)
        else:
            self._loop.call_soon_threadsafe(self._enqueue, kind, subtopic, body)

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.conn.connected and self.spool is not None:
                room = SEND_WINDOW - len(self._inflight)
                if room <= 0:
                    break
                gen = self._gen
                rows = await loop.run_in_executor(self._executor, self.spool.peek, self._last_sent, room)
                if not rows or not self.conn.connected or gen != self._gen:
                    break
                for row in rows:
                    payload, props = self._wire(row.kind, row.payload)
                    mid = self.conn.publish_nowait(row.topic, payload, qos=1, properties=props)
                    self._inflight[mid] = row.id
                    self._last_sent = row.id
                    self.conn.ack_future(mid).add_done_callback(partial(self._acked, mid, gen))

    def _wire(self, kind: str, payload: bytes) -> tuple[bytes, Properties | None]:
        """What goes on the wire for a spooled row: telemetry deflated with the preset dictionary and
        marked with its Content Type (``mqtt.compress_telemetry``); the spool keeps plain JSON."""
        if kind != KIND_TELEMETRY or not self.agent.config.mqtt.compress_telemetry:
            return payload, None
        return telemetry_codec.encode(payload), self._compressed_props

    def _acked(self, mid: int, gen: int, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or gen != self._gen:
            return
        error = fut.exception()
        if isinstance(error, PublishRefused):
            # Refused, not lost: the row stays in the spool (sent again after the next reconnect,
            # evicted only by the spool bound), counted and alerted, so an ACL or identity mistake
            # shows up in health instead of silently eating telemetry.
            self._inflight.pop(mid, None)
            self.refused += 1
            self.last_refusal = str(error)
            self.agent.alerts.raise_alert(
                "P2", "publish_refused", f"the broker refuses our messages: {error}"
            )
            self._wake.set()
            return
        if error is not None:
            return
        rid = self._inflight.pop(mid, None)
        if rid is None:
            return
        self.delivered += 1
        self._pending_delete.append(rid)
        if not self._delete_scheduled:
            self._delete_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush_deletes()))
        self._wake.set()

    async def _flush_deletes(self) -> None:
        self._delete_scheduled = False
        ids, self._pending_delete = self._pending_delete, []
        if ids and self.spool is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._delete_sync, ids)

    def _delete_sync(self, ids: list[int]) -> None:
        assert self.spool is not None
        self.spool.delete(ids)
        self._spool_stats = self.spool.stats()

    # ---- telemetry ---------------------------------------------------------------------------
    async def _telemetry_loop(self) -> None:
        while True:
            sample = self.agent.health.sample()
            self.rules.evaluate(sample, time.monotonic())
            self.emit_telemetry(sample)
            self.samples += 1
            self._interval_changed.clear()
            try:
                await asyncio.wait_for(
                    self._interval_changed.wait(), self.agent.config.mqtt.telemetry_interval_s
                )
            except TimeoutError:
                pass

    async def _rules_loop(self) -> None:
        """Alert rules between telemetry samples too (hold times and windows of seconds)."""
        while True:
            interval = self.agent.config.alert_defaults.evaluate_interval_s
            await asyncio.sleep(interval or 60.0)  # 0: on telemetry samples only (simulations)
            if interval:
                try:
                    self.rules.evaluate(self.agent.health.sample(), time.monotonic())
                except Exception:  # a rule bug must not stop the link (it would turn unhealthy)
                    log.exception("alert rules failed")

    def _config_applied(self, keys: set[str]) -> None:
        if any(k.partition(".")[0] in ("alerts", "alert_defaults") for k in keys):  # rules, defaults
            self.rules.replace(effective_rules(self.agent.config))
        if "mqtt.telemetry_interval_s" in keys or "mqtt" in keys:
            self._interval_changed.set()

    # ---- commands ------------------------------------------------------------------------------
    async def _on_command(self, msg: mqtt.MQTTMessage) -> None:
        """Check a command (retain flag, response topic, payload, parameters), run it once, answer it."""
        name = msg.topic[len(protocol.command(self.device_id, "")) :]
        props = getattr(msg, "properties", None)
        own = protocol.result(self.device_id)
        response_topic = getattr(props, "ResponseTopic", None) or own
        problem = response_topic_problem(response_topic, own)
        if problem is not None:
            self._log_throttle.warning(
                "response_topic", "command %s ignored, not run: %s", name[:64], problem
            )
            return
        correlation = getattr(props, "CorrelationData", None)
        expiry = getattr(props, "MessageExpiryInterval", None)
        if msg.retain:
            if not msg.payload:
                return  # the deletion of a retained message: nothing to run, nothing to answer
            # a retained command would run again on every reconnect or restart: never run one
            self._log_throttle.warning("retained", "retained command %s refused", name[:64])
            answer = error_result(
                ErrorCode.RETAINED_REFUSED, "commands must not be published retained; nothing ran"
            )
            await self._answer(name, response_topic, correlation, expiry, dumps(answer))
            return
        payload = bytes(msg.payload)  # paho types it bytes | bytearray; received ones are bytes (no copy)
        key = RecentCommands.key(name, bytes(correlation or b""), payload)
        first, earlier = self._recent.begin(key, expiry) if correlation else (True, None)
        if not first:
            log.info(
                "command %s delivered again: %s", name[:64], "answered again" if earlier else "still running"
            )
            if earlier is not None:
                await self._answer(name, response_topic, correlation, expiry, earlier)
            return
        data = dumps(await self._execute(name, payload))
        if correlation:
            self._recent.done(key, data)
        await self._answer(name, response_topic, correlation, expiry, data)

    async def _answer(
        self, name: str, topic: str, correlation: bytes | None, expiry: int | None, data: bytes
    ) -> None:
        out = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            out.CorrelationData = correlation
        if expiry is not None:  # an answer nobody waits for any more is not kept either
            # the broker hands on the remaining lifetime, which rounds to 0 in the command's last
            # second: 0 would mean "never expires" on the answer, so the shortest is 1 s
            out.MessageExpiryInterval = max(1, int(expiry))
        try:
            await self.conn.publish(topic, data, qos=1, properties=out, timeout=10.0)
        except (TimeoutError, ConnectionError, ValueError) as exc:
            log.warning("answer to %s lost: %s", name[:64], exc)

    async def _execute(self, name: str, payload: bytes) -> protocol.CommandResult:
        try:
            params = decode_params(payload, self.agent.config.mqtt.max_command_bytes)
            result = await self.agent.commands.dispatch(name, params)
            return ok_result(result)  # exact: rounding is for telemetry (config.get, echo)
        except CommandError as exc:
            return error_result(exc.code, exc.message)
        except Exception as exc:
            log.exception("command %s failed", name[:64])
            return error_result(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
