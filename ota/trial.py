"""The trial after a switch: healthy within the deadline commits, anything else rolls back.

Runs inside the agent that the service restarted into the new slot. Healthy means
``agent.healthy()`` (fleet link connected, media running...) without a break for
``trial_healthy_s``. Then the ``trial`` and ``commit`` hooks run and the slot becomes the
committed one. A missed deadline or a failing hook rolls back (idempotent) and asks the service
to restart into the old slot. Crash loops never get here: the boot check counts the starts. A
trial that ended meanwhile (an operator's ``ota.rollback``) is an outcome (``ended``), not an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from firmware_hooks import runner
from ota import state as sm
from ota.installer import InstallOptions, slot_env, slot_hooks
from ota.layout import Layout, atomic_write_bytes, boot_check_source, finish_rollback
from ota.state import OtaState, State, Update

log = logging.getLogger(__name__)

Emit = Callable[..., Any]


class TrialOutcome(StrEnum):
    """How ``Trial.run`` ended."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    ENDED = "ended"  # the trial had already ended (an operator's rollback): nothing left to do


def pending_trial(layout: Layout) -> Update | None:
    """The update on trial when the running link points at its slot, else None."""
    update = layout.load().update
    if update is not None and update.phase is State.TRIAL and layout.current_slot() == update.target_slot:
        return update
    return None


def commit(layout: Layout, options: InstallOptions) -> OtaState | None:
    """Run the ``trial`` and ``commit`` hooks, then make the trial slot the committed one.

    Returns the committed state, or None when the trial had already ended (nothing is run).
    A failing hook raises ``HookFailed`` (the caller rolls back).
    """
    st = layout.load()
    update = st.update
    if update is None or update.phase is not State.TRIAL or update.target_slot is None:
        return None
    slot = update.target_slot
    hooks, env = slot_hooks(layout, options, slot), slot_env(layout, slot, update)
    runner.run_phase(hooks, "trial", env, options.hook_timeout_s)
    runner.run_phase(hooks, "commit", env, options.hook_timeout_s)
    sm.commit(layout, st)
    update_boot_check(layout, slot)
    return st


def update_boot_check(layout: Layout, slot: str) -> Path | None:
    """Write the committed slot's boot check (``boot_check_source`` of its ``ota/``) to
    ``<root>/boot-check.py`` (temp, fsync, rename).

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
        atomic_write_bytes(dest, boot_check_source(found[0].parent))
    except OSError as exc:
        log.warning("could not update the boot check %s: %s", dest, exc)
        return None
    return dest


def rollback(layout: Layout, options: InstallOptions, reason: str) -> OtaState:
    """Run the ``rollback`` hooks (failures logged, never blocking) and roll back."""
    st = layout.load()
    update = st.update
    if update is not None and update.target_slot and update.phase is not State.ROLLING_BACK:
        slot = update.target_slot
        env = slot_env(layout, slot, update)
        for hook in slot_hooks(layout, options, slot):
            try:
                runner.run_hook(hook, "rollback", env, options.hook_timeout_s, retries=0)
            except runner.HookFailed as exc:
                log.warning("%s", exc)
    return finish_rollback(layout, st, reason)


class Trial:
    """Watches health after a switch and commits or rolls back."""

    def __init__(
        self,
        layout: Layout,
        options: InstallOptions,
        healthy: Callable[[], bool],
        emit: Emit,
        healthy_s: float = 5.0,
        poll_s: float = 0.2,
    ) -> None:
        self.layout = layout
        self.options = options
        self.healthy = healthy
        self.emit = emit
        self.healthy_s = healthy_s
        self.poll_s = poll_s

    async def run(self, update: Update) -> TrialOutcome:
        """Watch health until the trial commits, rolls back, or turns out to have ended."""
        version = update.version
        deadline_s = float(update.trial_deadline_s or self.options.trial_deadline_s)
        self.emit(
            "ota",
            phase="trial",
            version=version,
            slot=update.target_slot,
            start=update.starts,
            deadline_s=deadline_s,
        )
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
            committed = await asyncio.to_thread(commit, self.layout, self.options)
        except runner.HookFailed as exc:
            return await self._rollback(version, str(exc))
        if committed is None:
            log.warning("ota: the trial of %s ended meanwhile (rolled back by the operator)", version)
            return TrialOutcome.ENDED
        log.info("ota: committed %s", version)
        self.emit(
            "ota",
            phase="committed",
            version=version,
            slot=update.target_slot,
            trial_s=round(time.monotonic() - start, 2),
        )
        return TrialOutcome.COMMITTED

    async def _rollback(self, version: str | None, reason: str) -> TrialOutcome:
        log.error("ota: rolling back %s: %s", version, reason)
        st = await asyncio.to_thread(rollback, self.layout, self.options, reason)
        self.emit("ota", phase="rolled_back", version=version, reason=reason, slot=st.committed_slot)
        return TrialOutcome.ROLLED_BACK
