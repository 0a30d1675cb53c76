"""Per-device alert rules from ``[[alerts]]``: thresholds with hold times and hysteresis.

A rule raises its alert once its condition has held for ``hold_s`` and clears it once the value
has been back past ``clear_threshold`` (default: ``threshold``) for ``hold_s``. A value that flaps
around the threshold therefore produces no alert storm. A metric missing from the sample leaves
the rule's state unchanged.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from device_agent.config import AlertRule
from device_agent.registry import AlertBus

OPS: dict[str, Callable[[Any, Any], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt,
                                              "<=": operator.le, "==": operator.eq, "!=": operator.ne}


def lookup(sample: dict[str, Any], dotted: str) -> Any:
    """``lookup({"system": {"cpu_pct": 5}}, "system.cpu_pct") == 5``; None when missing."""
    node: Any = sample
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


class _RuleState:
    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self.active = False
        self.pending_since: float | None = None  # condition for the next transition started


class RuleEngine:
    """Evaluates rules against health samples and raises/clears through the AlertBus."""

    def __init__(self, rules: list[AlertRule], alerts: AlertBus) -> None:
        self.alerts = alerts
        self._states = [_RuleState(r) for r in rules]

    def replace(self, rules: list[AlertRule]) -> None:
        """New rule set (config.set); alerts of removed rules are cleared."""
        keep = {r.code for r in rules}
        for st in self._states:
            if st.active and st.rule.code not in keep:
                self.alerts.clear(st.rule.code, "rule removed")
        old = {st.rule.code: st for st in self._states}
        self._states = []
        for r in rules:
            st = _RuleState(r)
            if r.code in old:
                st.active = old[r.code].active
            self._states.append(st)

    def evaluate(self, sample: dict[str, Any], now: float) -> None:
        for st in self._states:
            rule = st.rule
            value = lookup(sample, rule.metric)
            if value is None or isinstance(value, (dict, list)):
                continue
            op = OPS[rule.op]
            try:
                if not st.active:
                    want = bool(op(value, rule.threshold))
                else:
                    clear_at = rule.threshold if rule.clear_threshold is None else rule.clear_threshold
                    want = not op(value, clear_at)
            except TypeError:
                continue
            if not want:
                st.pending_since = None
                continue
            if st.pending_since is None:
                st.pending_since = now
            if now - st.pending_since < rule.hold_s:
                continue
            st.pending_since = None
            if not st.active:
                st.active = True
                msg = rule.message or f"{rule.metric} {rule.op} {rule.threshold:g} (value {value})"
                self.alerts.raise_alert(rule.severity, rule.code, msg, metric=rule.metric, value=value,
                                        threshold=rule.threshold)
            else:
                st.active = False
                self.alerts.clear(rule.code, f"{rule.metric} back to {value}")
