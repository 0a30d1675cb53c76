"""The agent's extension points: health providers, command handlers and alerts.

Components plug into these instead of into each other: the media pipeline adds a health
provider, the MQTT link dispatches commands and forwards alerts, diagnostics adds commands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from device_agent.params import Param, ParamError, validate
from device_agent.protocol import ErrorCode

log = logging.getLogger(__name__)

HealthProvider = Callable[[], dict[str, Any]]
CommandHandler = Callable[[dict[str, Any]], Awaitable[Any]]
AlertListener = Callable[["Alert"], None]
EventListener = Callable[[dict[str, Any]], None]


class HealthRegistry:
    """Collects one health sample from every registered provider."""

    def __init__(self) -> None:
        self._providers: dict[str, HealthProvider] = {}

    def add(self, name: str, provider: HealthProvider) -> None:
        self._providers[name] = provider

    def remove(self, name: str) -> None:
        self._providers.pop(name, None)

    def sample(self) -> dict[str, Any]:
        """One dict keyed by provider name; a failing provider reports its error, not a crash."""
        out: dict[str, Any] = {}
        for name, provider in list(self._providers.items()):
            try:
                out[name] = provider()
            except Exception as exc:  # a broken provider must not take health down
                log.exception("health provider %s failed", name)
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return out


class CommandError(Exception):
    """A command refused or failed; ``code`` is machine-readable, ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Command:
    """A registered command: its handler, its declared parameters and the code for bad ones."""

    name: str
    handler: CommandHandler
    params: tuple[Param, ...] = ()
    param_error: str = ErrorCode.BAD_PARAMS


class CommandRegistry:
    """Named async command handlers taking a JSON object of declared parameters.

    ``register(name, handler, params=[Param(...), ...])``: the parameters a command takes (none when
    omitted). :meth:`dispatch` validates them before the handler runs, so a handler sees only declared
    keys of the declared types; anything else is refused with ``param_error`` (``bad_params``) naming
    the field.
    """

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def register(
        self,
        name: str,
        handler: CommandHandler,
        params: Sequence[Param] = (),
        param_error: str = ErrorCode.BAD_PARAMS,
    ) -> None:
        if name in self._commands:
            raise ValueError(f"command {name!r} registered twice")
        self._commands[name] = Command(name, handler, tuple(params), param_error)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def get(self, name: str) -> Command | None:
        """The registration of ``name`` (its declared parameters), or None."""
        return self._commands.get(name)

    async def dispatch(self, name: str, params: dict[str, Any]) -> Any:
        command = self._commands.get(name)
        if command is None:
            raise CommandError(
                ErrorCode.UNKNOWN_COMMAND, f"no command {name!r}; known: {', '.join(self.names())}"
            )
        try:
            checked = validate(params, command.params)
        except ParamError as exc:
            raise CommandError(command.param_error, f"{name}: {exc}") from None
        return await command.handler(checked)


@dataclass
class Alert:
    severity: str  # P1 | P2 | P3
    code: str
    message: str
    active: bool = True
    ts: float = field(default_factory=time.time)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "alert",
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "active": self.active,
            "ts": round(self.ts, 3),
            "details": self.details,
        }


class AlertBus:
    """Raised and cleared alerts; listeners (the MQTT link) get each transition once."""

    def __init__(self) -> None:
        self._active: dict[str, Alert] = {}
        self._listeners: list[AlertListener] = []

    def subscribe(self, listener: AlertListener) -> None:
        self._listeners.append(listener)

    def raise_alert(self, severity: str, code: str, message: str, **details: Any) -> None:
        if code in self._active:
            return
        alert = Alert(severity, code, message, details=details)
        self._active[code] = alert
        log.warning("alert %s %s: %s", severity, code, message)
        self._emit(alert)

    def clear(self, code: str, message: str = "") -> None:
        alert = self._active.pop(code, None)
        if alert is None:
            return
        log.info("alert cleared %s", code)
        self._emit(Alert(alert.severity, code, message or alert.message, active=False))

    def active(self) -> list[Alert]:
        return list(self._active.values())

    def _emit(self, alert: Alert) -> None:
        for listener in self._listeners:
            try:
                listener(alert)
            except Exception:
                log.exception("alert listener failed")


class EventBus:
    """Device events for the fleet that are not alerts (OTA progress, rollbacks, transfers).

    The fleet link subscribes and delivers each event on ``dev/{id}/events`` (spooled while
    offline); other components only ``emit``.
    """

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"type": kind, "ts": now, **fields}`` to every listener; returns the event."""
        event = {"type": kind, "ts": round(time.time(), 3), **fields}
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")
        return event
