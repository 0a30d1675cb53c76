"""Structured logging for the agent: plain or JSON lines carrying device id, boot id and session ids.

Every record gets ``device`` and ``boot`` from a :class:`LogContext`; code that works for one media
session logs inside ``with log_session(ctx, "abc"):`` (or passes ``extra={"session": ...}``) so a
pulled log lines up with the fleet's health history. The plain format is parseable by
:mod:`device_agent.diag.logsource` (ISO timestamp first, then the level).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from device_agent.config import LoggingSection

_STD_ATTRS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


@dataclass
class LogContext:
    """Identity stamped on every record; ``session`` follows the asyncio task (a context variable)."""

    device_id: str
    boot_id: str
    session: contextvars.ContextVar[str] = field(
        default_factory=lambda: contextvars.ContextVar("log_session", default="")
    )


def iso_ts(epoch: float) -> str:
    """UTC ISO 8601 with milliseconds, e.g. ``2026-11-24T06:00:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


class ContextFilter(logging.Filter):
    """Adds ``device``, ``boot`` and ``session`` attributes to each record."""

    def __init__(self, ctx: LogContext) -> None:
        super().__init__()
        self.ctx = ctx

    def filter(self, record: logging.LogRecord) -> bool:
        record.device = self.ctx.device_id
        record.boot = self.ctx.boot_id
        if not getattr(record, "session", ""):
            record.session = self.ctx.session.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, device, boot, session, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "device": getattr(record, "device", ""),
            "boot": getattr(record, "boot", ""),
        }
        session = getattr(record, "session", "")
        if session:
            out["session"] = session
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and key not in out and key not in ("device", "boot", "session"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """``TS LEVEL logger [device boot session]: message``."""

    def format(self, record: logging.LogRecord) -> str:
        ids = f"{getattr(record, 'device', '')} {getattr(record, 'boot', '')}"
        session = getattr(record, "session", "")
        if session:
            ids += f" session={session}"
        text = f"{iso_ts(record.created)} {record.levelname} {record.name} [{ids}]: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(
    section: LoggingSection,
    ctx: LogContext,
    *,
    stream: TextIO | None = None,
    root: logging.Logger | None = None,
) -> list[logging.Handler]:
    """Configure ``root`` (the process root logger by default): stream handler plus optional rotating file.

    Returns the handlers it installed so callers (and tests) can remove them again.
    """
    logger = root if root is not None else logging.getLogger()
    formatter: logging.Formatter = JsonFormatter() if section.json else PlainFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if section.file:
        path = Path(section.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                path, maxBytes=section.file_max_bytes, backupCount=section.file_backups, encoding="utf-8"
            )
        )
    context_filter = ContextFilter(ctx)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(context_filter)
        logger.addHandler(handler)
    logger.setLevel(section.level.upper())
    return handlers


@contextlib.contextmanager
def log_session(ctx: LogContext, session_id: str) -> Iterator[None]:
    """Records logged inside carry ``session=session_id`` (per asyncio task)."""
    token = ctx.session.set(session_id)
    try:
        yield
    finally:
        ctx.session.reset(token)
