"""`fleetctl serve`: one fleet worker ingesting device traffic into the store.

Workers subscribe to telemetry and events with the shared subscription ``$share/fleet/...``, so
the broker splits the load between however many run; each keeps a persistent MQTT session (clean
start false) so messages published while it restarts wait for it at the broker. Status is
subscribed without sharing: the broker sends retained messages only to plain subscriptions, and
status is low volume and idempotent.

Broker crashes: mosquitto 2.0 restores plain subscriptions of persistent sessions from its
persistence file but not shared ones, so messages that devices publish after a broker *crash* and
before the workers resubscribe are lost with a shared subscription. A single worker with
``share_group=""`` (``fleetctl serve --share-group ''``) has no such gap (docs/protocol.md).

Messages are buffered and written in batches (one transaction per ``flush_interval_s`` or
``max_batch`` messages) from a single thread and acknowledged to the broker (MQTT 5 manual ack)
only after their batch is committed, so a worker crash loses nothing: the broker redelivers.
Duplicates (redeliveries after reconnects) are dropped by the store's (device, boot, seq) unique
index. Payloads are decoded here (``device_agent/telemetry_codec.py``: plain JSON, or deflated with
the preset dictionary and marked by its MQTT 5 Content Type), so the store and every reader see the
same JSON; one that cannot be decoded (unknown dictionary, corrupt, over 256 KB inflated) is logged,
counted in ``stats["refused"]`` and ``stats["bad"]``, and acknowledged: nothing else is affected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from device_agent import protocol, telemetry_codec
from device_agent.fleetlink.intake import LogThrottle
from device_agent.fleetlink.mqtt import MqttConnection, MqttOptions
from fleet.ota.driver import RolloutDriver
from fleet.rollups import Retention, prune
from fleet.store import Incoming, Store
from fleet.trend_rules import BaselineRule, SharedAlertRule, evaluate_baseline, evaluate_shared_alerts

log = logging.getLogger(__name__)

SHARE_GROUP = "fleet"
ROLLUP_PRUNE_EVERY_S = 3600.0  # rollup cutoffs move by days; raw rows are pruned every interval


@dataclass
class GroupOfflineRule:
    """More than ``pct`` % of a group (of at least ``min_devices``) offline within ``window_s``: P1."""

    pct: float = 20.0
    window_s: float = 300.0
    min_devices: int = 3
    severity: str = "P1"


class FleetService:
    """One worker; ``await start()``, then ``await stop()``. ``stats`` counts what it did."""

    def __init__(
        self,
        mqtt_url: str,
        store: Store,
        worker_id: str = "1",
        *,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        username: str = "",
        password: str = "",
        tls_insecure: bool = False,
        flush_interval_s: float = 0.2,
        max_batch: int = 2000,
        rule: GroupOfflineRule | None = None,
        rule_interval_s: float = 10.0,
        session_expiry_s: int = 3600,
        share_group: str = SHARE_GROUP,
        shared_rule: SharedAlertRule | None = None,
        baseline_rule: BaselineRule | None = None,
        rollouts: bool = True,
        rollout_options: dict[str, Any] | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.store = store
        self.retention = retention  # None: keep everything (fleet/rollups.py prunes otherwise)
        self.pruned = {"telemetry": 0, "events": 0, "minute": 0, "hour": 0, "runs": 0}
        self._rollups_pruned_at = -1e18  # rollups are pruned at most every ROLLUP_PRUNE_EVERY_S
        # drives the rollout jobs whose lease this worker holds (fleet/ota/driver.py)
        self.rollouts = (
            RolloutDriver(
                store,
                mqtt_url,
                worker_id,
                ca_file=ca_file,
                cert_file=cert_file,
                key_file=key_file,
                username=username,
                password=password,
                tls_insecure=tls_insecure,
                **(rollout_options or {}),
            )
            if rollouts
            else None
        )
        self.share_group = share_group
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.rule = rule or GroupOfflineRule()
        self.shared_rule = shared_rule or SharedAlertRule()  # N % of a group holding one P2 -> one fleet P1
        # a group's freeze rate against its 24 h baseline
        self.baseline_rule = baseline_rule or BaselineRule()
        self.rule_interval_s = rule_interval_s
        self.conn = MqttConnection(
            MqttOptions(
                url=mqtt_url,
                client_id=f"fleet-worker-{worker_id}",
                ca_file=ca_file,
                cert_file=cert_file,
                key_file=key_file,
                username=username,
                password=password,
                clean_start=False,
                session_expiry_s=session_expiry_s,
                reconnect_min_s=0.2,
                reconnect_max_s=5.0,
                max_inflight=1000,
                manual_ack=True,
            )
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fleet-store")
        self._buffer: list[Incoming] = []
        self._unacked: list[tuple[int, int, int]] = []  # (mid, qos, connection number) per buffered message
        self._full = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.stats = {"received": 0, "stored": 0, "duplicate": 0, "bad": 0, "batches": 0, "refused": 0}
        self._refusals = LogThrottle(log, 10.0)  # undecodable payloads (telemetry_codec): logged, bounded
        self.fleet_alerts: dict[str, bool] = {}
        # called on the loop with (batch, counts) after each committed batch (fleet/metrics.py)
        self.batch_observers: list[Callable[[list[Incoming], dict[str, int]], None]] = []

    async def start(self, connect_timeout: float = 10.0) -> None:
        self.conn.subscribe(protocol.shared(self.share_group, protocol.ALL_TELEMETRY), self._on_message)
        self.conn.subscribe(protocol.shared(self.share_group, protocol.ALL_EVENTS), self._on_message)
        self.conn.subscribe(protocol.ALL_STATUS, self._on_message)
        self.conn.start()
        await self.conn.wait_connected(connect_timeout)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._flush_loop(), name="fleet-flush"),
            loop.create_task(self._rule_loop(), name="fleet-rules"),
        ]
        if self.retention is not None:
            self._tasks.append(loop.create_task(self._prune_loop(), name="fleet-prune"))
        if self.rollouts is not None:
            await self.rollouts.start()

    async def stop(self) -> None:
        self._stopping = True
        self._full.set()
        if self.rollouts is not None:
            await self.rollouts.stop()
        for t in self._tasks[1:]:
            t.cancel()
        for t in self._tasks:  # the flush loop ends by itself after a last flush
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        await self._flush()  # commit and acknowledge what arrived; later arrivals stay with the broker
        await self.conn.close()
        self._buffer.clear()
        self._unacked.clear()
        self._executor.shutdown(wait=True)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 3:
            return
        payload = self.decode(
            parts[2], parts[1], bytes(msg.payload), telemetry_codec.message_content_type(msg)
        )
        self._buffer.append(Incoming(parts[2], parts[1], payload, time.time()))
        self._unacked.append((msg.mid, msg.qos, self.conn.connects))
        self.stats["received"] += 1
        if len(self._buffer) >= self.max_batch:
            self._full.set()

    def decode(self, kind: str, device: str, payload: bytes, ctype: str | None) -> bytes:
        """The JSON of one received payload (``telemetry_codec.decode``); b"" for a refused one, which
        the store counts as bad and which is acknowledged with its batch, in order (never redelivered)."""
        try:
            return telemetry_codec.decode(payload, ctype)
        except telemetry_codec.PayloadError as exc:
            self.stats["refused"] += 1
            self._refusals.warning(
                "refused", "refused %s from %s (%d bytes): %s", kind, device, len(payload), exc
            )
            return b""

    async def _flush_loop(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._full.wait(), self.flush_interval_s)
            except TimeoutError:
                pass
            self._full.clear()
            try:
                await self._flush()
            except Exception:
                log.exception("store write failed; retrying the batch")
                await asyncio.sleep(1.0)

    async def _flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        acks, self._unacked = self._unacked, []
        try:
            res = await asyncio.get_running_loop().run_in_executor(self._executor, self.store.ingest, batch)
        except Exception:
            self._buffer[:0] = batch  # keep order; retried by the loop
            self._unacked[:0] = acks
            raise
        # acknowledge only what is committed; messages of an older connection come again (de-duplicated)
        current = self.conn.connects
        for mid, qos, conn_no in acks:
            if qos and conn_no == current:
                self.conn.ack(mid, qos)
        self.stats["batches"] += 1
        for k in ("stored", "duplicate", "bad"):
            self.stats[k] += res[k]
        for observe in self.batch_observers:
            try:
                observe(batch, res)
            except Exception:
                log.exception("batch observer failed")

    async def _prune_loop(self) -> None:
        assert self.retention is not None
        await asyncio.sleep(min(60.0, self.retention.interval_s))
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("retention pruning failed")
            await asyncio.sleep(self.retention.interval_s)

    async def prune(self, now: float | None = None) -> dict[str, int]:
        """Delete what the retention no longer keeps, in its own thread (not the ingest thread), in
        short transactions: ingest goes on meanwhile. Returns the rows deleted per kind."""
        if self.retention is None:
            return {}
        at = time.time() if now is None else now
        rollups = at - self._rollups_pruned_at >= ROLLUP_PRUNE_EVERY_S
        res = await asyncio.to_thread(prune, self.store, self.retention, at, lambda: self._stopping, rollups)
        if rollups:
            self._rollups_pruned_at = at
        for k, v in res.items():
            self.pruned[k] += v
        self.pruned["runs"] += 1
        if any(res.values()):
            log.info("retention: deleted %s", ", ".join(f"{v} {k}" for k, v in res.items() if v))
        return res

    async def _rule_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rule_interval_s)
            try:
                await self.evaluate_rules()
            except Exception:
                log.exception("fleet rule evaluation failed")

    async def evaluate_rules(self) -> list[tuple[str, str]]:
        """Evaluate the group-offline rule now; returns the (op, code) transitions made."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._evaluate_sync)

    def _evaluate_sync(self) -> list[tuple[str, str]]:
        r = self.rule
        changes = []
        for grp, (offline, size) in self.store.group_offline(r.window_s).items():
            code = f"group_offline:{grp}"
            pct = 100.0 * offline / size if size else 0.0
            if size >= r.min_devices and pct > r.pct:
                msg = (
                    f"{offline} of {size} devices in group {grp!r} ({pct:.0f}%) went offline "
                    f"within {r.window_s:g} s"
                )
                if self.store.set_fleet_alert("raise", code, r.severity, msg):
                    changes.append(("raise", code))
            elif self.store.set_fleet_alert(
                "clear", code, r.severity, f"group {grp!r} back to {pct:.0f}% offline"
            ):
                changes.append(("clear", code))
        return (
            changes
            + evaluate_shared_alerts(self.store, self.shared_rule)
            + evaluate_baseline(self.store, self.baseline_rule)
        )
