"""What the fleet link checks on a command message before anything runs (docs/protocol.md, Commands).

- :func:`decode_params`: the payload as a JSON object, or a structured ``CommandError``
  (``payload_too_large``, ``bad_json``, ``bad_params``), never a Python exception: strict UTF-8,
  no ``NaN``/``Infinity``/out-of-range numbers, no duplicate keys, at most ``MAX_DEPTH`` levels,
  no lone surrogates, integers within Python's digit limit;
- :func:`response_topic_problem`: a command is answered only on its device's ``dev/{id}/res``;
- :class:`RecentCommands`: a redelivered command (same name, correlation data and payload) runs once;
- :class:`LogThrottle`: one warning per kind of refusal per interval, not one per message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from typing import Any

from device_agent.protocol import ErrorCode, error_result
from device_agent.registry import CommandError

MAX_DEPTH = 32  # nesting of arrays and objects in a command's parameters
ANSWER_CACHE_BYTES = 16384  # answers kept for redeliveries; larger ones are answered `duplicate`


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _check_tree(value: Any) -> None:
    """Depth and string checks without recursion (a deep tree must not exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # lone surrogates (\ud800) raise UnicodeEncodeError
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    key.encode("utf-8")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def decode_params(payload: bytes, limit: int) -> dict[str, Any]:
    """The command's parameters from its payload (empty = ``{}``); raises ``CommandError``."""
    if len(payload) > limit:
        raise CommandError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes > mqtt.max_command_bytes {limit}"
        )
    if not payload.strip():
        return {}
    try:
        text = payload.decode("utf-8")
        params = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_no_duplicates
        )
        _check_tree(params)
    except RecursionError:
        raise CommandError(
            ErrorCode.BAD_JSON, f"payload is not valid JSON: nested deeper than {MAX_DEPTH} levels"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeError, the integer digit limit, our checks
        raise CommandError(ErrorCode.BAD_JSON, f"payload is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(params, dict):
        raise CommandError(ErrorCode.BAD_PARAMS, f"params must be a JSON object, got {type(params).__name__}")
    return params


def response_topic_problem(topic: str, expected: str) -> str | None:
    """Why a command's response topic is unusable (None when it is ``expected``, ``dev/{id}/res``).

    Anything else (wildcards, another device, a topic the device itself consumes such as its own
    ``cmd/``) would be refused by the broker's ACL or answered by paho with ``ValueError``.
    """
    if topic == expected:
        return None
    shown = topic if len(topic) <= 80 else topic[:80] + "..."
    if "#" in topic or "+" in topic:
        return f"response topic {shown!r} has a wildcard"
    return f"response topic {shown!r} is not {expected}"


class RecentCommands:
    """Commands seen recently, keyed by (name, correlation data, payload), with their answers.

    MQTT delivers at least once (a QoS 1 or 2 command can come again after a reconnect, or when the
    fleet retried its publish): a repeat within ``ttl_s`` does not run again; it gets the first
    answer (or nothing while the first run is still going).
    """

    def __init__(self, max_entries: int = 512, ttl_s: float = 600.0) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._seen: OrderedDict[bytes, tuple[float, bytes | None]] = OrderedDict()

    @staticmethod
    def key(name: str, correlation: bytes, payload: bytes) -> bytes:
        h = hashlib.sha256()
        for part in (name.encode("utf-8", "surrogatepass"), correlation, payload):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()

    def _expire(self, now: float) -> None:
        while self._seen:
            key, (expires, _answer) = next(iter(self._seen.items()))
            if expires > now and len(self._seen) <= self.max_entries:
                break
            self._seen.popitem(last=False)

    def begin(self, key: bytes, ttl_s: float | None = None) -> tuple[bool, bytes | None]:
        """``(True, None)`` for a new command; ``(False, first answer or None)`` for a repeat."""
        now = time.monotonic()
        self._expire(now)
        entry = self._seen.get(key)
        if entry is not None:
            return False, entry[1]
        self._seen[key] = (now + min(self.ttl_s, ttl_s or self.ttl_s), None)
        return True, None

    def done(self, key: bytes, answer: bytes) -> None:
        """Remember the answer a repeat gets (a marker instead when it is large)."""
        entry = self._seen.get(key)
        if entry is None:
            return
        if len(answer) > ANSWER_CACHE_BYTES:
            answer = json.dumps(
                error_result(ErrorCode.DUPLICATE, "this command already ran; its answer was sent")
            ).encode()
        self._seen[key] = (entry[0], answer)


class LogThrottle:
    """Log a warning of one kind at most once per ``interval_s``, counting the ones left out."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        self._last[kind] = now
        suffix = (
            f" ({skipped} more like it in the last {self.interval_s:.0f} s not logged)" if skipped else ""
        )
        self.logger.warning(message + suffix, *args)
