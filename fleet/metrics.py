"""Prometheus metrics of one fleet service (``GET /metrics`` on ``fleetctl serve --http``).

Every series is per group, version, severity, code, kind or API route: bounded by the fleet's
configuration, never by its size. There are no per-device series (docs/fleet-api.md).

- ``fleet_devices{group,version,online}``: registry rows (gauge, from the store at scrape time)
- ``fleet_alerts_open{scope,severity,code}``: active alerts (gauge, from the store at scrape time)
- ``fleet_rollouts{status}``: rollout jobs (fleet/ota/jobs.py) by status
- ``fleet_rollout_devices{rollout,version,state}``: devices of the *running* rollouts by state
  (pending, in_progress, succeeded, failed, timed_out, skipped): bounded by concurrent rollouts
- ``fleet_ingest_messages_total{result}``: received | stored | duplicate | bad (this worker)
- ``fleet_ingest_batches_total``: committed store transactions (this worker)
- ``fleet_ingest_lag_seconds{kind}``: commit time - the message's own ``ts`` (histogram, sampled:
  at most ``LAG_SAMPLES`` messages of each batch)
- ``fleet_ingest_commit_delay_seconds``: commit time - arrival at the worker (histogram, every message)
- ``fleet_mqtt_connected``: 1 while the worker's MQTT session is up
- ``fleet_api_requests_total{route,method,status}``, ``fleet_api_request_duration_seconds{route}``
- ``fleet_store_scrape_errors_total``: store queries that failed during a scrape

Gauges read from the store are cached for ``cache_s`` (default 5 s), so several scrapers or a
short scrape interval cost one pair of ``GROUP BY`` queries per period.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.api.queries import ApiQueries
from fleet.store import Incoming

log = logging.getLogger(__name__)

LAG_SAMPLES = 100
LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FleetMetrics:
    """One service's registry; ``observe_batch`` after each committed batch, ``render()`` per scrape."""

    def __init__(
        self,
        queries: ApiQueries,
        stats: Callable[[], dict[str, int]] | None = None,
        connected: Callable[[], bool] | None = None,
        cache_s: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.store_gauges = _StoreCollector(queries, cache_s)
        self.registry.register(self.store_gauges)
        self.registry.register(_ServiceCollector(stats, connected))
        r = self.registry
        self.lag = Histogram(
            "fleet_ingest_lag_seconds",
            "commit time minus the message's own ts (sampled)",
            ["kind"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.commit_delay = Histogram(
            "fleet_ingest_commit_delay_seconds",
            "commit time minus arrival at the worker",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.api_requests = Counter(
            "fleet_api_requests", "API requests", ["route", "method", "status"], registry=r
        )
        self.api_duration = Histogram(
            "fleet_api_request_duration_seconds",
            "API request handling time",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
            registry=r,
        )

    def observe_batch(self, batch: list[Incoming], result: dict[str, int] | None = None) -> None:
        """Record one committed batch (called by the service on the event loop)."""
        now = time.time()
        for m in batch:
            self.commit_delay.observe(max(0.0, now - m.received))
        step = max(1, len(batch) // LAG_SAMPLES)
        for m in batch[::step]:
            try:
                ts = float(json.loads(m.payload).get("ts"))
            except (ValueError, TypeError, AttributeError):
                continue
            self.lag.labels(m.kind).observe(max(0.0, now - ts))

    def render(self) -> bytes:
        """The text exposition (blocking: store queries; run it in a thread)."""
        return generate_latest(self.registry)


class _StoreCollector(Collector):
    def __init__(self, queries: ApiQueries, cache_s: float) -> None:
        self.queries = queries
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._devices: list[tuple[str, str, bool, int]] = []
        self._alerts: list[tuple[str, str, str, int]] = []
        self._jobs: list[tuple[str, int]] = []
        self._rollout_devices: list[tuple[str, str, str, int]] = []
        self.errors = 0

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._at < self.cache_s:
                return
            try:
                self._devices = self.queries.device_counts()
                self._alerts = self.queries.open_alert_counts()
                self._jobs, self._rollout_devices = self.queries.rollout_counts()
            except Exception:  # a scrape must still answer; the counter says why the gauges are stale
                log.exception("metrics: store query failed")
                self.errors += 1
                return
            self._at = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        self._refresh()
        dev = GaugeMetricFamily(
            "fleet_devices", "devices in the registry", labels=["group", "version", "online"]
        )
        for grp, version, online, n in self._devices:
            dev.add_metric([grp, version, "true" if online else "false"], n)
        yield dev
        al = GaugeMetricFamily("fleet_alerts_open", "active alerts", labels=["scope", "severity", "code"])
        for scope, sev, code, n in self._alerts:
            al.add_metric([scope, sev, code], n)
        yield al
        jobs = GaugeMetricFamily("fleet_rollouts", "rollout jobs in the store", labels=["status"])
        for status, n in self._jobs:
            jobs.add_metric([status], n)
        yield jobs
        rd = GaugeMetricFamily(
            "fleet_rollout_devices",
            "devices of the running rollouts by state",
            labels=["rollout", "version", "state"],
        )
        for rid, version, state, n in self._rollout_devices:
            rd.add_metric([rid, version, state], n)
        yield rd
        yield CounterMetricFamily(
            "fleet_store_scrape_errors", "store queries failed during a scrape", value=self.errors
        )


class _ServiceCollector(Collector):
    def __init__(
        self, stats: Callable[[], dict[str, int]] | None, connected: Callable[[], bool] | None
    ) -> None:
        self.stats = stats
        self.connected = connected

    def collect(self) -> Iterable[Metric]:
        s: dict[str, Any] = self.stats() if self.stats else {}
        msgs = CounterMetricFamily(
            "fleet_ingest_messages", "messages handled by this worker", labels=["result"]
        )
        for k in ("received", "stored", "duplicate", "bad"):
            msgs.add_metric([k], s.get(k, 0))
        yield msgs
        yield CounterMetricFamily(
            "fleet_ingest_batches", "committed store transactions", value=s.get("batches", 0)
        )
        yield GaugeMetricFamily(
            "fleet_mqtt_connected",
            "1 while the worker's MQTT session is up",
            value=1 if self.connected and self.connected() else 0,
        )
