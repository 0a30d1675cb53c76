"""Declared command parameters: each command says what it takes, the dispatcher checks it first.

A command registers with a list of :class:`Param` (``agent.commands.register(name, handler,
params=[Param("path", "string"), ...])``); :meth:`CommandRegistry.dispatch
<device_agent.registry.CommandRegistry.dispatch>` runs :func:`validate` before the handler, so a
handler only ever sees known keys of the declared JSON types within their bounds. Anything else is a
``CommandError`` (``bad_params`` unless the command declares another code) naming the field.
A JSON ``null`` for an optional parameter means "not given".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

JsonType = Literal["string", "integer", "number", "boolean", "array", "object", "any"]
JSON_TYPES: tuple[JsonType, ...] = ("string", "integer", "number", "boolean", "array", "object", "any")


def json_type(value: Any) -> str:
    """The JSON type name of a decoded JSON value (``integer`` for ints, ``number`` for floats)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is(value: Any, kind: JsonType) -> bool:
    actual = json_type(value)
    if kind == "any":
        return actual != "null"
    if kind == "number":
        return actual in ("integer", "number") and math.isfinite(value)
    return actual == kind


@dataclass(frozen=True)
class Param:
    """One parameter of a command.

    ``types`` is a JSON type name or a tuple of them (``"number"`` accepts integers too); ``low``/``high``
    bound numbers, ``min_len``/``max_len`` bound the length of strings, arrays and objects.
    """

    name: str
    types: JsonType | tuple[JsonType, ...]
    required: bool = False
    default: Any = None
    low: float | None = None
    high: float | None = None
    min_len: int | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        for kind in self.kinds:
            if kind not in JSON_TYPES:
                raise ValueError(f"parameter {self.name!r}: unknown JSON type {kind!r}")

    @property
    def kinds(self) -> tuple[JsonType, ...]:
        return (self.types,) if isinstance(self.types, str) else tuple(self.types)

    def describe(self) -> str:
        """``name: type[, required][, bounds]`` for documentation and error messages."""
        parts = [" or ".join(self.kinds)]
        if self.required:
            parts.append("required")
        if self.low is not None:
            parts.append(f">= {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        if self.min_len is not None:
            parts.append(f"length >= {self.min_len}")
        if self.max_len is not None:
            parts.append(f"length <= {self.max_len}")
        if self.default is not None:
            parts.append(f"default {self.default!r}")
        return f"{self.name}: {', '.join(parts)}"

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable (a message naming the field), or None."""
        if not any(_is(value, kind) for kind in self.kinds):
            want = " or ".join(self.kinds)
            got = json_type(value)
            if got == "number" and "number" in self.kinds:
                got = "a non-finite number"
            return f"{self.name}: must be {want}, got {got}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.low is not None and value < self.low:
                return f"{self.name}: must be >= {self.low:g}, got {value!r}"
            if self.high is not None and value > self.high:
                return f"{self.name}: must be <= {self.high:g}, got {value!r}"
        if isinstance(value, (str, list, dict)):
            if self.min_len is not None and len(value) < self.min_len:
                return f"{self.name}: must have at least {self.min_len} {_unit(value)}, got {len(value)}"
            if self.max_len is not None and len(value) > self.max_len:
                return f"{self.name}: must have at most {self.max_len} {_unit(value)}, got {len(value)}"
        return None


class ParamError(ValueError):
    """Parameters that do not match the declaration; the message names the field."""


def _unit(value: Any) -> str:
    return "characters" if isinstance(value, str) else ("keys" if isinstance(value, dict) else "items")


def validate(params: Any, declared: Sequence[Param]) -> dict[str, Any]:
    """The parameters a handler gets: declared keys only, of the declared types, defaults filled in.

    Raises :class:`ParamError` naming the first offending field.
    """
    if not isinstance(params, Mapping):
        raise ParamError(f"parameters must be a JSON object, got {json_type(params)}")
    by_name = {p.name: p for p in declared}
    unknown = sorted(str(k) for k in params if k not in by_name)
    if unknown:
        known = "; ".join(p.describe() for p in declared) or "no parameters"
        raise ParamError(f"{unknown[0][:64]}: unknown parameter (this command takes {known})")
    out: dict[str, Any] = {}
    for spec in declared:
        value = params.get(spec.name)
        if value is None:
            if spec.required:
                raise ParamError(f"{spec.name}: required ({' or '.join(spec.kinds)})")
            if spec.default is not None:
                out[spec.name] = spec.default
            continue
        problem = spec.check(value)
        if problem:
            raise ParamError(problem)
        out[spec.name] = value
    return out
