"""Time arguments for log pulls: ``2h``/``30m``/``45s``/``1d`` ago, ISO 8601, or epoch seconds."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str | float | int | None, now: float | None = None) -> float | None:
    """Epoch seconds for ``value``; ``None`` passes through. Raises ValueError on anything else."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    m = _RELATIVE.match(value)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {value!r} (use 2h, 30m, an ISO date or epoch seconds)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
