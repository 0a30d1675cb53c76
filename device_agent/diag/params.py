"""Validation of diagnostic command parameters: anything unexpected is a structured ``bad_request``."""

from __future__ import annotations

import re
import uuid
from typing import Any

from device_agent.registry import CommandError

REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NUMBER = (int, float)


def check_params(params: Any, allowed: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """Refuse anything but a JSON object with known keys of the right types (structured error)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise CommandError("bad_request", f"parameters must be a JSON object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise CommandError("bad_request", f"unknown parameter {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    for key, value in params.items():
        types = allowed[key]
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            names = "/".join(t.__name__ for t in types)
            raise CommandError("bad_request", f"parameter {key!r} must be {names}, got {type(value).__name__}")
    return params


def request_id(params: dict[str, Any]) -> str:
    rid = params.get("request") or uuid.uuid4().hex[:16]
    if not REQUEST_ID.match(rid):
        raise CommandError("bad_request", "request must be 1-64 letters, digits, '-' or '_'")
    return rid
