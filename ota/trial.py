"""The trial after a switch: healthy within the deadline commits, anything else rolls back.

Runs inside the agent that the service restarted into the new slot. Healthy means
``agent.healthy()`` (fleet link connected, media running...) without a break for
``trial_healthy_s``. Then the ``trial`` and ``commit`` hooks run and the slot becomes the
committed one. A missed deadline or a failing hook rolls back (idempotent) and asks the service
to restart into the old slot. Crash loops never get here: the boot check counts the starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware_hooks import runner
from ota.installer import InstallOptions, slot_env, slot_hooks
from ota.layout import Layout, atomic_write_bytes, finish_rollback, result

log = logging.getLogger(__name__)

Emit = Callable[..., Any]


def pending_trial(layout: Layout) -> dict[str, Any] | None:
    """The update on trial when the running link points at its slot, else None."""
    update = layout.load_state().get("update") or None
    if update and update.get("phase") == "trial" and layout.current_slot() == update.get("target_slot"):
        return update
    return None


def commit(layout: Layout, options: InstallOptions) -> dict[str, Any]:
    """Run the ``trial`` and ``commit`` hooks, then make the trial slot the committed one."""
    state = layout.load_state()
    update = state.get("update")
    if not update or update.get("phase") != "trial":
        raise runner.HookFailed("-", "commit", "the trial ended meanwhile (rolled back or committed elsewhere)")
    slot = update["target_slot"]
    hooks, env = slot_hooks(layout, options, slot), slot_env(layout, slot, update)
    runner.run_phase(hooks, "trial", env, options.hook_timeout_s)
    runner.run_phase(hooks, "commit", env, options.hook_timeout_s)
    state["committed_slot"], state["committed_version"] = slot, update.get("version")
    result(state, "committed", update.get("version"), f"healthy after {update.get('starts', 1)} start(s)")
    state["update"] = None
    layout.save_state(state)
    update_boot_check(layout, slot)
    return state


def update_boot_check(layout: Layout, slot: str) -> Path | None:
    """Copy the committed slot's ``ota/layout.py`` to ``<root>/boot-check.py`` (temp, fsync, rename).

    The unit runs that copy before every start, so it must follow the committed release. A slot
    without the module (e.g. a release that is not the agent) leaves the copy alone; a failure
    is logged, never undoes the commit.
    """
    found = sorted(layout.slot_path(slot).glob("lib/python3*/site-packages/ota/layout.py"))
    if not found:
        log.info("slot %s carries no ota/layout.py; boot check left as it is", slot)
        return None
    dest = layout.root / "boot-check.py"
    try:
        atomic_write_bytes(dest, found[0].read_bytes())
    except OSError as exc:
        log.warning("could not update the boot check %s: %s", dest, exc)
        return None
    return dest


def rollback(layout: Layout, options: InstallOptions, reason: str) -> dict[str, Any]:
    """Run the ``rollback`` hooks (failures logged, never blocking) and roll back."""
    state = layout.load_state()
    update = state.get("update") or {}
    slot = update.get("target_slot")
    if slot and update.get("phase") != "rolling_back":
        env = slot_env(layout, slot, update)
        for hook in slot_hooks(layout, options, slot):
            try:
                runner.run_hook(hook, "rollback", env, options.hook_timeout_s, retries=0)
            except runner.HookFailed as exc:
                log.warning("%s", exc)
    return finish_rollback(layout, state, reason)


class Trial:
    """Watches health after a switch and commits or rolls back."""

    def __init__(self, layout: Layout, options: InstallOptions, healthy: Callable[[], bool], emit: Emit,
                 healthy_s: float = 5.0, poll_s: float = 0.2) -> None:
        self.layout = layout
        self.options = options
        self.healthy = healthy
        self.emit = emit
        self.healthy_s = healthy_s
        self.poll_s = poll_s

    async def run(self, update: dict[str, Any]) -> str:
        """Returns ``"committed"`` or ``"rolled_back"``."""
        version = update.get("version")
        deadline_s = float(update.get("trial_deadline_s") or self.options.trial_deadline_s)
        self.emit("ota", phase="trial", version=version, slot=update.get("target_slot"),
                  start=update.get("starts"), deadline_s=deadline_s)
        start = time.monotonic()
        healthy_since: float | None = None
        while True:
            now = time.monotonic()
            ok = False
            try:
                ok = bool(self.healthy())
            except Exception:
                log.exception("health check failed during the trial")
            if ok:
                healthy_since = healthy_since or now
                if now - healthy_since >= self.healthy_s:
                    break
            else:
                healthy_since = None
            if now - start >= deadline_s:
                reason = f"not healthy for {self.healthy_s:g} s within the {deadline_s:g} s trial deadline"
                return await self._rollback(version, reason)
            await asyncio.sleep(self.poll_s)
        try:
            await asyncio.to_thread(commit, self.layout, self.options)
        except runner.HookFailed as exc:
            return await self._rollback(version, str(exc))
        log.info("ota: committed %s", version)
        self.emit("ota", phase="committed", version=version, slot=update.get("target_slot"),
                  trial_s=round(time.monotonic() - start, 2))
        return "committed"

    async def _rollback(self, version: str | None, reason: str) -> str:
        log.error("ota: rolling back %s: %s", version, reason)
        state = await asyncio.to_thread(rollback, self.layout, self.options, reason)
        self.emit("ota", phase="rolled_back", version=version, reason=reason,
                  slot=state.get("committed_slot"))
        return "rolled_back"
