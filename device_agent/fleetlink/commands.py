"""The fleet link's own commands: ping, config.get, config.set, agent.restart, reboot."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent.config import ConfigError, config_from_dict, dump_toml
from device_agent.diag.redact import is_secret
from device_agent.params import Param
from device_agent.protocol import ErrorCode
from device_agent.registry import CommandError, CommandHandler
from ota.atomic import write_atomic

if TYPE_CHECKING:
    from device_agent.agent import Agent

log = logging.getLogger(__name__)

REDACTED = "***"
# keys a running agent applies without a restart
LIVE_KEYS = {
    "mqtt.telemetry_interval_s",
    "logging.level",
    "device.name",
    "device.location",
    "device.group",
    "alerts",
    "alert_defaults.enabled",  # [alert_defaults]: the rule set is rebuilt at once (link._config_applied)
    "alert_defaults.disable",
    "alert_defaults.evaluate_interval_s",  # from the next evaluation on
}

Runner = Callable[[list[str]], Awaitable[int]]


def redact(value: Any) -> Any:
    """A copy of a config dict with secret values replaced by ``***`` (empty ones left empty)."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if is_secret(k) and v not in ("", None) else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


async def run_command(argv: list[str]) -> int:
    """Default runner: a real subprocess; returns its exit code."""
    proc = await asyncio.create_subprocess_exec(*argv)
    return await proc.wait()


class LinkCommands:
    """Registers the commands on ``agent.commands``; ``on_config_applied`` hears live changes."""

    def __init__(
        self,
        agent: Agent,
        runner: Runner = run_command,
        on_config_applied: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.agent = agent
        self.runner = runner
        self.on_config_applied = on_config_applied
        self.started = time.monotonic()
        self._lock = asyncio.Lock()

    def register(self) -> None:
        """Register the commands with their declared parameters (checked by the dispatcher)."""
        reg = self.agent.commands
        declared: tuple[tuple[str, CommandHandler, list[Param]], ...] = (
            ("ping", self.ping, [Param("echo", "any")]),
            ("config.get", self.config_get, [Param("section", "string", max_len=64)]),
            ("config.set", self.config_set, [Param("set", "object", required=True, min_len=1, max_len=256)]),
            ("agent.restart", self.agent_restart, []),
            ("reboot", self.reboot, [Param("confirm", "boolean")]),
        )
        for name, handler, params in declared:
            if name not in reg.names():
                reg.register(name, handler, params=params)

    async def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "ts": round(time.time(), 3),
            "boot": self.agent.boot_id,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "echo": params.get("echo"),
        }

    async def config_get(self, params: dict[str, Any]) -> dict[str, Any]:
        data = redact(self.agent.config.to_dict())
        section = params.get("section")
        if section is not None:
            if section not in data:
                raise CommandError(ErrorCode.BAD_PARAMS, f"section: unknown section {section!r}")
            data = {section: data[section]}
        return {"config": data, "source_path": self.agent.config.source_path}

    async def config_set(self, params: dict[str, Any]) -> dict[str, Any]:
        changes = params["set"]  # a non-empty object (declared)
        source = self.agent.config.source_path
        if not source:
            raise CommandError(
                ErrorCode.NOT_PERSISTENT, "the agent runs without a configuration file; nothing changed"
            )
        path = Path(source)
        async with self._lock:
            try:
                raw = tomllib.loads(await asyncio.to_thread(path.read_text)) if path.exists() else {}
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise CommandError(ErrorCode.CONFIG_UNREADABLE, f"{path}: {exc}") from None
            new_raw = copy.deepcopy(raw)
            for key, value in changes.items():
                if not isinstance(key, str) or not key:
                    raise CommandError(ErrorCode.BAD_PARAMS, f"key {key!r}: expected 'section.key'")
                if isinstance(value, str) and value == REDACTED:
                    raise CommandError(ErrorCode.BAD_PARAMS, f"{key}: refusing to store the redaction marker")
                section, _, name = key.partition(".")
                if not name:
                    new_raw[section] = value
                    continue
                table = new_raw.setdefault(section, {})
                if not isinstance(table, dict):
                    raise CommandError(ErrorCode.BAD_PARAMS, f"{key}: {section} is not a table")
                table[name] = value
            try:
                new_cfg = config_from_dict(new_raw, source_path=source)
            except ConfigError as exc:
                raise CommandError(ErrorCode.INVALID_CONFIG, str(exc)) from None
            try:
                text = dump_toml(new_raw)
            except TypeError as exc:
                raise CommandError(ErrorCode.INVALID_CONFIG, str(exc)) from None
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o640  # it may hold the broker password
            await asyncio.to_thread(write_atomic, path, text, mode)
            live, restart = self._apply(new_cfg, set(changes))
        log.info(
            "config.set %s (live: %s, restart needed for: %s)", sorted(changes), sorted(live), sorted(restart)
        )
        return {
            "persisted": True,
            "applied": sorted(live),
            "restart_required": bool(restart),
            "pending_restart": sorted(restart),
        }

    def _apply(self, new_cfg: Any, keys: set[str]) -> tuple[set[str], set[str]]:
        cfg = self.agent.config
        live: set[str] = set()
        restart: set[str] = set()
        for key in keys:
            if key in LIVE_KEYS or (key.partition(".")[0] == "alerts"):
                live.add(key)
            elif "." not in key and dataclasses.is_dataclass(getattr(cfg, key, None)):
                # a whole section: live only if every key in it is live
                names = (f.name for f in dataclasses.fields(getattr(cfg, key)))
                all_live = all(f"{key}.{name}" in LIVE_KEYS for name in names)
                (live if all_live else restart).add(key)
            else:
                restart.add(key)
        for key in live:
            section, _, name = key.partition(".")
            if section == "alerts" or not name:  # the rule list, or a whole section whose keys are all live
                setattr(cfg, section, getattr(new_cfg, section))
            else:
                setattr(getattr(cfg, section), name, getattr(getattr(new_cfg, section), name))
            if key == "logging.level":
                logging.getLogger().setLevel(cfg.logging.level.upper())
        if live and self.on_config_applied:
            self.on_config_applied(live)
        return live, restart

    async def agent_restart(self, params: dict[str, Any]) -> dict[str, Any]:
        delay = 0.3  # let the answer leave first
        asyncio.get_running_loop().call_later(delay, self.agent.request_restart)
        return {"restarting": True, "in_s": delay}

    async def reboot(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("confirm") is not True:
            raise CommandError(ErrorCode.CONFIRMATION_REQUIRED, 'reboot needs {"confirm": true}')
        rc = await self.runner(["systemctl", "reboot"])
        if rc != 0:
            raise CommandError(ErrorCode.REBOOT_FAILED, f"systemctl reboot exited with {rc}")
        return {"rebooting": True}
