"""Per-device alert rules from ``[[alerts]]`` (and the shipped defaults): thresholds with hold times,
hysteresis, aggregates over viewers and windows over time.

A rule raises its alert once its condition has held for ``hold_s`` and clears it once the value
has been back past ``clear_threshold`` (default: ``threshold``) for ``hold_s``. A value that flaps
around the threshold therefore produces no alert storm. A metric missing from the sample leaves
the rule's state unchanged.

- **Aggregates**: a ``*`` segment in ``metric`` matches every element of a list (or value of an
  object), e.g. ``media.viewers.sessions.*.qoe.freeze_rate``; ``aggregate`` folds the numbers
  found: ``max``, ``min``, ``median``, ``mean``, ``count`` (how many) compare one number, ``any`` /
  ``all`` compare each. No match at all (no viewers): the condition does not hold (an active alert
  clears after ``hold_s``), except ``count``, which is 0.
- **Windows**: with ``window_s``, the rule compares ``window`` (``mean``, ``max``, ``min`` or
  ``increase`` = last - first, for counters) of the value over the last ``window_s`` seconds, once
  it has been watched that long without a gap in matches.
"""

from __future__ import annotations

import collections
import operator
import statistics
from collections.abc import Callable
from typing import Any

from device_agent.config import AlertRule
from device_agent.registry import AlertBus

OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "max": max,
    "min": min,
    "median": statistics.median,
    "mean": statistics.fmean,
    "count": len,
}
WINDOWS: dict[str, Callable[[list[float]], float]] = {
    "mean": statistics.fmean,
    "max": max,
    "min": min,
    "increase": lambda v: max(0.0, v[-1] - v[0]),
}
NO_MATCH = object()  # a wildcard path that matched nothing: nothing to be degraded


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


def lookup_all(sample: Any, dotted: str) -> list[Any] | None:
    """Every value a path with ``*`` segments reaches; None when the part before the first ``*`` is
    missing."""
    head, star, rest = dotted.partition("*")
    base = lookup(sample, head.rstrip(".")) if head.rstrip(".") else sample
    if not star:
        return None if base is None else [base]
    if not isinstance(base, (list, dict)):
        return None
    children = base if isinstance(base, list) else list(base.values())
    rest = rest.lstrip(".")
    out: list[Any] = []
    for child in children:
        found = lookup_all(child, rest) if rest else [child]
        out.extend(found or [])
    return out


def _numbers(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


class _RuleState:
    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self.active = False
        self.pending_since: float | None = None  # condition for the next transition started
        self.history: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)
        self.watched_since: float | None = None

    def value(self, sample: dict[str, Any], now: float) -> Any:
        """The number (or, for any/all, the numbers) the rule compares; None = unknown; NO_MATCH."""
        rule = self.rule
        if not rule.aggregate:
            value = lookup(sample, rule.metric)
            if value is None or isinstance(value, (dict, list)):
                return None
        else:
            found = lookup_all(sample, rule.metric)
            if found is None:
                return None
            numbers = _numbers(found)
            if rule.aggregate in ("any", "all"):
                return numbers or NO_MATCH
            if not numbers and rule.aggregate != "count":
                value = NO_MATCH
            else:
                value = AGGREGATES[rule.aggregate](numbers)
        if not rule.window_s:
            return value
        if value is NO_MATCH or isinstance(value, bool) or not isinstance(value, (int, float)):
            self.history.clear()
            self.watched_since = None
            return value if value is NO_MATCH else None
        if self.watched_since is None:
            self.watched_since = now
        self.history.append((now, float(value)))
        while self.history and self.history[0][0] < now - rule.window_s:
            self.history.popleft()
        if now - self.watched_since < rule.window_s:
            return None  # not watched for a whole window yet
        return WINDOWS[rule.window]([v for _, v in self.history])

    def holds(self, value: Any, threshold: float) -> bool:
        op = OPS[self.rule.op]
        if value is NO_MATCH:
            return False
        if isinstance(value, list):
            results = [op(v, threshold) for v in value]
            return any(results) if self.rule.aggregate == "any" else all(results)
        return bool(op(value, threshold))


def _shown(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_shown(v) for v in value[:16]]
    return None if value is NO_MATCH else value


class RuleEngine:
    """Evaluates rules against health samples and raises/clears through the AlertBus."""

    def __init__(self, rules: list[AlertRule], alerts: AlertBus) -> None:
        self.alerts = alerts
        self._states = [_RuleState(r) for r in rules]

    @property
    def rules(self) -> list[AlertRule]:
        return [st.rule for st in self._states]

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
                if old[r.code].rule == r:  # unchanged: keep its window
                    st.history, st.watched_since = old[r.code].history, old[r.code].watched_since
            self._states.append(st)

    def evaluate(self, sample: dict[str, Any], now: float) -> None:
        for st in self._states:
            rule = st.rule
            value = st.value(sample, now)
            if value is None:
                continue
            try:
                if not st.active:
                    want = st.holds(value, rule.threshold)
                else:
                    clear_at = rule.threshold if rule.clear_threshold is None else rule.clear_threshold
                    want = not st.holds(value, clear_at)
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
            shown = _shown(value)
            if not st.active:
                st.active = True
                what = f"{rule.aggregate}({rule.metric})" if rule.aggregate else rule.metric
                if rule.window_s:
                    what = f"{rule.window} over {rule.window_s:g} s of {what}"
                msg = rule.message or f"{what} {rule.op} {rule.threshold:g} (value {shown})"
                self.alerts.raise_alert(
                    rule.severity, rule.code, msg, metric=rule.metric, value=shown, threshold=rule.threshold
                )
            else:
                st.active = False
                self.alerts.clear(rule.code, f"{rule.metric} back to {shown}")
