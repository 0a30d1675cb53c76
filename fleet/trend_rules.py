"""Fleet-wide trend alerts: many devices of one group holding the same alert become one fleet alert.

``SharedAlertRule``: when at least ``pct`` % of a group (of at least ``min_devices``) hold the same
active device alert of ``severity`` (P2 by default: freeze rate, fps, A/V offset, loss, ...), the
fleet raises ``group_alert:{group}:{code}`` at ``raise_severity`` (P1) listing the devices, and
clears it when the share drops below ``clear_pct`` (hysteresis). One operator page instead of N.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

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


def shared_alerts(devices: list[dict[str, Any]], alerts: list[dict[str, Any]], rule: SharedAlertRule
                  ) -> dict[tuple[str, str], tuple[list[str], int]]:
    """(group, code) -> (devices holding it, group size), for device alerts of ``rule.severity``."""
    group_of = {d["device"]: d["group"] or "" for d in devices}
    sizes = collections.Counter(group_of.values())
    holding: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for a in alerts:
        if a["scope"] == "device" and a["active"] and a["severity"] == rule.severity and a["device"] in group_of:
            holding[(group_of[a["device"]], a["code"])].append(a["device"])
    return {key: (sorted(devs), sizes[key[0]]) for key, devs in holding.items()}


def evaluate_shared_alerts(store: Store, rule: SharedAlertRule) -> list[tuple[str, str]]:
    """Raise and clear the ``group_alert:*`` fleet alerts from the store's current alerts; returns the changes.

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
            listed = ", ".join(devs[:MAX_LISTED]) + (f" and {len(devs) - MAX_LISTED} more" if len(devs) > MAX_LISTED else "")
            msg = f"{len(devs)} of {size} devices in group {group!r} ({pct:.0f}%) hold {code}: {listed}"
            if store.set_fleet_alert("raise", fleet_code, rule.raise_severity, msg):
                changes.append(("raise", fleet_code))
        elif pct < rule.clear_pct and fleet_code in active:
            if store.set_fleet_alert("clear", fleet_code, rule.raise_severity, f"{code} down to {pct:.0f}% of {group!r}"):
                changes.append(("clear", fleet_code))
    held = {f"{PREFIX}{group}:{code}" for group, code in shares}
    for fleet_code in sorted(active - held):  # nobody holds it any more
        if store.set_fleet_alert("clear", fleet_code, rule.raise_severity, "no device holds it any more"):
            changes.append(("clear", fleet_code))
    return changes
