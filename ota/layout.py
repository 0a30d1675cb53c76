"""A/B slot layout, the OTA state file and the boot path. Standard library only.

This module is also the service's boot check: ``device-agent install-service`` copies it to
``<root>/boot-check.py`` and the unit runs it with the system Python before every start, so it
still works when a slot is broken. Keep it free of third-party and intra-package imports.

Layout under ``root`` (``ota.root``)::

    slots/a, slots/b      two complete virtualenvs
    slots/X/.ota-slot.json  written last, after an fsync of everything: "this slot is complete"
    current -> slots/a    swapped atomically (new link + rename + fsync of the directory)

State (``<state_dir>/ota.json``), written atomically (temp, fsync, rename, fsync dir)::

    committed_slot / committed_version   the last known-good slot
    update: null | {phase, version, target_slot, previous_slot, starts, max_failed_starts, ...}
    last_result: {result, version, reason, ts, reported}

Phases of ``update``: ``installing`` (the inactive slot may be half written), ``trial`` (the
link may already point at the new slot), ``rolling_back`` (finish the rollback, idempotent).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

SLOTS = ("a", "b")
MARKER = ".ota-slot.json"
STATE_NAME = "ota.json"
EXIT_NO_SLOT = 3


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or a new entry in it survives power loss."""
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def atomic_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a new link, renamed over the old one."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.new{os.getpid()}")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


class Layout:
    """Paths of one installation: slot root and state file."""

    def __init__(self, root: str | Path, state_dir: str | Path) -> None:
        self.root = Path(root)
        self.state_dir = Path(state_dir)

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_NAME

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "ota.lock"

    @property
    def work_dir(self) -> Path:
        """Downloads and unpacked bundles (same filesystem as the state)."""
        return self.state_dir / "ota-work"

    def slot_path(self, slot: str) -> Path:
        return self.slots_dir / slot

    def current_slot(self) -> str | None:
        """The slot ``current`` points at, or None when the link is missing or foreign."""
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        name = Path(target).name
        return name if name in SLOTS else None

    def other(self, slot: str | None) -> str:
        return "b" if slot == "a" else "a"

    def slot_info(self, slot: str) -> dict[str, Any] | None:
        """The completion marker of ``slot`` when the slot is complete, else None."""
        path = self.slot_path(slot)
        try:
            info = json.loads((path / MARKER).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not (path / "bin" / "python").exists():
            return None
        return info

    def load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            # Only a hand edit can do this (writes are atomic); keep a copy, start clean.
            os.replace(self.state_path, self.state_path.with_suffix(".corrupt"))
            return {}
        return data if isinstance(data, dict) else {}

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    def point_current(self, slot: str) -> None:
        atomic_symlink(self.current_link, f"slots/{slot}")


def lock_holder(layout: Layout) -> int | None:
    """The pid holding the update lock, or None when nobody holds it.

    The lock is an ``flock`` on ``ota.lock``: the kernel drops it when its holder dies, so a
    lock left by a dead process (power cut, SIGKILL) is never stale. The file holds the pid for
    messages only.
    """
    try:
        fd = os.open(str(layout.lock_path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(os.pread(fd, 32, 0).split()[0])
            except (ValueError, IndexError):
                return -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def result(state: dict[str, Any], result_name: str, version: str | None, reason: str) -> None:
    """Record the outcome of an update for the agent to report to the fleet."""
    entry = {"result": result_name, "version": version, "reason": reason, "ts": round(time.time(), 3),
             "reported": False}
    state["last_result"] = entry
    history = state.setdefault("history", [])
    history.append({k: v for k, v in entry.items() if k != "reported"})
    del history[:-20]


def finish_rollback(layout: Layout, state: dict[str, Any], reason: str) -> dict[str, Any]:
    """Roll back to the previous slot. Idempotent: safe to repeat after a crash at any point.

    Order: state says ``rolling_back`` (with the reason) -> link to the previous slot -> state
    records the result. A crash in between is finished by the next call (boot check or agent).
    """
    update = state.get("update") or {}
    if not update:
        return state  # nothing in flight: already rolled back (or never switched)
    previous = update.get("previous_slot") or state.get("committed_slot")
    if update.get("phase") != "rolling_back":
        update = dict(update, phase="rolling_back", reason=reason)
        state["update"] = update
        layout.save_state(state)
    reason = update.get("reason") or reason
    if previous and layout.slot_info(previous) is not None and layout.current_slot() != previous:
        layout.point_current(previous)
    result(state, "rolled_back", update.get("version"), reason)
    state["update"] = None
    layout.save_state(state)
    return state


def boot_check(layout: Layout, now: float | None = None) -> tuple[str | None, str]:
    """Decide which slot the service starts from, repairing the link if needed.

    Returns ``(slot, message)``; ``slot`` is None only when no complete slot exists at all.
    Counts starts during a trial and rolls back after ``max_failed_starts`` starts without a
    commit (a crash loop, or a hang the watchdog killed).
    """
    state = layout.load_state()
    update = state.get("update") or None
    current = layout.current_slot()
    notes: list[str] = []
    if update:
        phase = update.get("phase")
        target = update.get("target_slot")
        holder = lock_holder(layout)
        if phase == "rolling_back":
            finish_rollback(layout, state, update.get("reason") or "rollback interrupted")
            notes.append(f"finished rollback: {state['last_result']['reason']}")
        elif phase == "trial" and current == target:
            starts = int(update.get("starts", 0)) + 1
            limit = int(update.get("max_failed_starts", 3))
            if starts > limit:
                finish_rollback(layout, state,
                                f"crash loop: {starts - 1} starts of {update.get('version')} without a commit")
                notes.append(f"rolled back: {state['last_result']['reason']}")
            else:
                update["starts"] = starts
                layout.save_state(state)
                notes.append(f"trial start {starts}/{limit} of {update.get('version')}")
        elif phase == "trial":
            # Killed between recording the switch and swapping the link: nothing switched.
            result(state, "failed", update.get("version"), "interrupted before the switch completed")
            state["update"] = None
            layout.save_state(state)
            notes.append("switch interrupted; staying on the old slot")
        elif holder is None:
            # An install died (power loss, SIGKILL); the inactive slot is rebuilt on the next try.
            result(state, "failed", update.get("version"), f"interrupted during {phase}")
            state["update"] = None
            layout.save_state(state)
            notes.append(f"install interrupted during {phase}; inactive slot discarded")
    current = layout.current_slot()
    if current is None or layout.slot_info(current) is None:
        candidates = [state.get("committed_slot"), *SLOTS]
        good = next((s for s in candidates if s in SLOTS and layout.slot_info(s) is not None), None)
        if good is None:
            return None, "no complete slot under " + str(layout.slots_dir)
        layout.point_current(good)
        notes.append(f"current pointed at an incomplete slot ({current}); repaired to {good}")
        current = good
    info = layout.slot_info(current) or {}
    if not state.get("committed_slot") and not state.get("update"):
        state["committed_slot"], state["committed_version"] = current, info.get("version")
        layout.save_state(state)
    notes.append(f"starting slot {current} version {info.get('version')}")
    return current, "; ".join(notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="device-agent boot check: pick a complete slot")
    parser.add_argument("--root", default="/opt/device-agent")
    parser.add_argument("--state-dir", default="/var/lib/device-agent")
    args = parser.parse_args(argv)
    slot, message = boot_check(Layout(args.root, args.state_dir))
    print(f"boot-check: {message}", file=sys.stderr if slot is None else sys.stdout, flush=True)
    return 0 if slot else EXIT_NO_SLOT


if __name__ == "__main__":
    sys.exit(main())
