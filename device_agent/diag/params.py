"""Diagnostic request ids (the parameters themselves are declared in ``component.PARAMS``)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from device_agent.protocol import ErrorCode
from device_agent.registry import CommandError

REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def request_id(params: dict[str, Any]) -> str:
    rid = params.get("request") or uuid.uuid4().hex[:16]
    if not REQUEST_ID.match(rid):
        raise CommandError(ErrorCode.BAD_REQUEST, "request must be 1-64 letters, digits, '-' or '_'")
    return rid
