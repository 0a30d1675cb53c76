"""Fleet-wide trend alerts: many devices of one group holding the same alert become one fleet alert,
and a group's median freeze rate rising well above its own baseline.

``SharedAlertRule``: when at least ``pct`` % of a group (of at least ``min_devices``) hold the same
active device alert of ``severity`` (P2 by default: freeze rate, fps, A/V offset, loss, ...), the
fleet raises ``group_alert:{group}:{code}`` at ``raise_severity`` (P1) listing the devices, and
clears it when the share drops below ``clear_pct`` (hysteresis). One operator page instead of N.

``BaselineRule``: every ``record_every_s`` the group's median over its online devices (at least
``min_devices`` with viewers) of the worst viewer's ``freeze_rate`` is stored (``group_metrics``).
When the median of the last ``recent_s`` is at least ``factor`` x the median of the baseline
(``baseline_s`` back, excluding the recent part; at least ``min_history_s`` of it) and at least
``floor`` %, the fleet raises ``freeze_trend:{group}`` (P2); it clears below ``clear_factor`` x.
"""

from __future__ import annotations

import collections
import statistics
import time
from dataclasses import dataclass
from typing import Any

from device_agent.fleetlink.rules import lookup_all
from fleet.store import Store

MAX_LISTED = 20
PREFIX = "group_alert:"


@dataclass
class SharedAlertRule:
    pct: float = 20.0
    clear_pct: float = 10.0
    min_devices: int = 3
    severity: str = "P2"
    raise_severity: str = "P1"


def shared_alerts(
    devices: list[dict[str, Any]], alerts: list[dict[str, Any]], rule: SharedAlertRule
) -> dict[tuple[str, str], tuple[list[str], int]]:
    """(group, code) -> (devices holding it, group size), for device alerts of ``rule.severity``."""
    group_of = {d["device"]: d["group"] or "" for d in devices}
    sizes = collections.Counter(group_of.values())
    holding: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for a in alerts:
        if (
            a["scope"] == "device"
            and a["active"]
            and a["severity"] == rule.severity
            and a["device"] in group_of
        ):
            holding[(group_of[a["device"]], a["code"])].append(a["device"])
    return {key: (sorted(devs), sizes[key[0]]) for key, devs in holding.items()}


def evaluate_shared_alerts(store: Store, rule: SharedAlertRule) -> list[tuple[str, str]]:
    """Raise and clear the ``group_alert:*`` fleet alerts from the store's current alerts; returns the
    changes.

    Stateless (what is raised is read back from the store), so any worker may run it, and a restart
    still clears what an earlier run raised.
    """
    alerts = store.list_alerts()
    active = {a["code"] for a in alerts if a["scope"] == "fleet" and a["code"].startswith(PREFIX)}
    changes: list[tuple[str, str]] = []
    shares = shared_alerts(store.list_devices(), alerts, rule)
    for (group, code), (devs, size) in shares.items():
        fleet_code = f"{PREFIX}{group}:{code}"
        pct = 100.0 * len(devs) / size if size else 0.0
        if size >= rule.min_devices and pct >= rule.pct:
            listed = ", ".join(devs[:MAX_LISTED]) + (
                f" and {len(devs) - MAX_LISTED} more" if len(devs) > MAX_LISTED else ""
            )
            msg = f"{len(devs)} of {size} devices in group {group!r} ({pct:.0f}%) hold {code}: {listed}"
            if store.set_fleet_alert("raise", fleet_code, rule.raise_severity, msg):
                changes.append(("raise", fleet_code))
        elif pct < rule.clear_pct and fleet_code in active:
            if store.set_fleet_alert(
                "clear", fleet_code, rule.raise_severity, f"{code} down to {pct:.0f}% of {group!r}"
            ):
                changes.append(("clear", fleet_code))
    held = {f"{PREFIX}{group}:{code}" for group, code in shares}
    for fleet_code in sorted(active - held):  # nobody holds it any more
        if store.set_fleet_alert("clear", fleet_code, rule.raise_severity, "no device holds it any more"):
            changes.append(("clear", fleet_code))
    return changes


@dataclass
class BaselineRule:
    metric: str = "media.viewers.sessions.*.qoe.freeze_rate"
    name: str = "freeze_rate"
    factor: float = 2.0
    clear_factor: float = 1.5
    floor: float = 1.0
    baseline_s: float = 86400.0
    recent_s: float = 900.0
    min_history_s: float = 6 * 3600.0
    record_every_s: float = 300.0
    min_devices: int = 3
    severity: str = "P2"


def group_medians(health: list[tuple[str, str, dict[str, Any]]], rule: BaselineRule) -> dict[str, float]:
    """group -> median over its devices with viewers of their worst viewer's figure."""
    per_group: dict[str, list[float]] = collections.defaultdict(list)
    for _device, group, sample in health:
        values = [
            v
            for v in lookup_all(sample, rule.metric) or []
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if values:
            per_group[group or ""].append(float(max(values)))
    return {g: statistics.median(v) for g, v in per_group.items() if len(v) >= rule.min_devices}


def evaluate_baseline(store: Store, rule: BaselineRule, now: float | None = None) -> list[tuple[str, str]]:
    """Record the groups' medians (at most every ``record_every_s``) and raise/clear ``freeze_trend:*``."""
    now = time.time() if now is None else now
    changes: list[tuple[str, str]] = []
    active = {a["code"] for a in store.list_alerts() if a["scope"] == "fleet"}
    for group, median in group_medians(store.latest_health(), rule).items():
        last = store.group_metric(group, rule.name, now - rule.record_every_s, now + 1)
        if not last:
            store.add_group_metric(group, rule.name, now, median)
        recent = [v for _, v in store.group_metric(group, rule.name, now - rule.recent_s, now + 1)]
        history = store.group_metric(group, rule.name, now - rule.baseline_s, now - rule.recent_s)
        if not recent or not history or now - history[0][0] < rule.min_history_s:
            continue
        base, cur = statistics.median(v for _, v in history), statistics.median(recent)
        code = f"freeze_trend:{group}"
        if cur >= rule.floor and cur >= rule.factor * base:
            msg = (
                f"group {group!r}: median freeze rate {cur:.1f} % over the last {rule.recent_s / 60:g} min, "
                f"{cur / base if base else float('inf'):.1f}x its {rule.baseline_s / 3600:g} h baseline "
                f"({base:.1f} %)"
            )
            if store.set_fleet_alert("raise", code, rule.severity, msg):
                changes.append(("raise", code))
        elif code in active and (cur < rule.clear_factor * base or cur < rule.floor / 2):
            if store.set_fleet_alert("clear", code, rule.severity, f"group {group!r} back to {cur:.1f} %"):
                changes.append(("clear", code))
    return changes
