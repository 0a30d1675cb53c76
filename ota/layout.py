"""A/B slot layout and the boot path. Standard library only.

This module is also the service's boot check: ``device-agent install-service`` writes
``<root>/boot-check.py`` (``boot_check_source``: this module with the few it imports, in one
file) and the unit runs it with the system Python before every start, so it still works when a
slot is broken. Keep it, and the modules in ``BOOT_CHECK_MODULES``, free of third-party imports.

Layout under ``root`` (``ota.root``)::

    slots/a, slots/b      two complete virtualenvs
    slots/X/.ota-slot.json  written last, after an fsync of everything: "this slot is complete"
    current -> slots/a    swapped atomically (new link + rename + fsync of the directory)

The state file (``<state_dir>/ota.json``) and its transitions are ``ota.state``'s.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as a file from a source tree (``python3 ota/layout.py``): import ota from beside it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ota import state as sm  # noqa: E402
from ota.atomic import atomic_symlink  # noqa: E402
from ota.atomic import write_atomic as atomic_write_bytes  # noqa: E402  (every OTA durable write goes through these two names)
from ota.state import OtaState, State  # noqa: E402

SLOTS = ("a", "b")
MARKER = ".ota-slot.json"
STATE_NAME = "ota.json"
EXIT_NO_SLOT = 3


BOOT_CHECK_MODULES = ("ota.errors", "ota.atomic", "ota.state", "ota.layout")  # what boot-check.py carries


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


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

    def load(self) -> OtaState:
        """The typed state (``ota.state``); change it only with its transitions."""
        return OtaState.load(self)

    def load_state(self) -> dict[str, Any]:
        """The raw JSON of the state file ({} when there is none)."""
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


def finish_rollback(layout: Layout, state: OtaState | dict[str, Any], reason: str) -> OtaState:
    """Roll back to the previous slot. Idempotent: safe to repeat after a crash at any point.

    Order: state says ``rolling_back`` (with the reason) -> link to the previous slot -> state
    records the result. A crash in between is finished by the next call (boot check or agent).
    """
    st = state if isinstance(state, OtaState) else OtaState.from_dict(state)
    if st.update is None:
        return st  # nothing in flight: already rolled back (or never switched)
    previous = st.update.previous_slot or st.committed_slot
    if st.state is not State.ROLLING_BACK:
        sm.begin_rollback(layout, st, reason)
    if previous and layout.slot_info(previous) is not None and layout.current_slot() != previous:
        layout.point_current(previous)
    sm.rollback_done(layout, st, reason)
    return st


def boot_check(layout: Layout, now: float | None = None) -> tuple[str | None, str]:
    """Decide which slot the service starts from, repairing the link if needed.

    Returns ``(slot, message)``; ``slot`` is None only when no complete slot exists at all.
    Counts starts during a trial and rolls back after ``max_failed_starts`` starts without a
    commit (a crash loop, or a hang the watchdog killed).
    """
    st = layout.load()
    update = st.update
    current = layout.current_slot()
    notes: list[str] = []
    if update is not None:
        if update.phase is State.ROLLING_BACK:
            finish_rollback(layout, st, "rollback interrupted")
            notes.append(f"finished rollback: {st.last_result.reason if st.last_result else ''}")
        elif update.phase is State.TRIAL and current == update.target_slot:
            loop = sm.crash_loop(st)
            if loop is not None:
                finish_rollback(layout, st, loop)
                notes.append(f"rolled back: {st.last_result.reason if st.last_result else loop}")
            else:
                starts, limit = sm.count_start(layout, st)
                notes.append(f"trial start {starts}/{limit} of {update.version}")
        elif update.phase is State.TRIAL:
            # Killed between recording the switch and swapping the link: nothing switched.
            sm.switch_interrupted(layout, st)
            notes.append("switch interrupted; staying on the old slot")
        elif lock_holder(layout) is None:
            # An install died (power loss, SIGKILL); the inactive slot is rebuilt on the next try.
            sm.install_interrupted(layout, st)
            notes.append(f"install interrupted during {update.phase.value}; inactive slot discarded")
    current = layout.current_slot()
    if current is None or layout.slot_info(current) is None:
        candidates = [st.committed_slot, *SLOTS]
        good = next((s for s in candidates if s in SLOTS and layout.slot_info(s) is not None), None)
        if good is None:
            return None, "no complete slot under " + str(layout.slots_dir)
        layout.point_current(good)
        notes.append(f"current pointed at an incomplete slot ({current}); repaired to {good}")
        current = good
    info = layout.slot_info(current) or {}
    if not st.committed_slot and st.update is None:
        sm.adopt(layout, st, current, info.get("version"))
    notes.append(f"starting slot {current} version {info.get('version')}")
    return current, "; ".join(notes)


def boot_check_source(ota_dir: Path | None = None) -> bytes:
    """The boot check as one standard-library file, from the modules in ``ota_dir`` (a slot's
    ``site-packages/ota``; default: this package): ``BOOT_CHECK_MODULES``, loaded in order, then ``main``.

    A release whose ``ota/layout.py`` stands alone (older ones: no ``ota/state.py`` beside it)
    is its own boot check and is returned as it is.
    """
    ota_dir = Path(ota_dir) if ota_dir is not None else Path(__file__).resolve().parent
    if not (ota_dir / "state.py").exists():
        return (ota_dir / "layout.py").read_bytes()
    sources = [
        (name, (ota_dir / (name.rpartition(".")[2] + ".py")).read_text()) for name in BOOT_CHECK_MODULES
    ]
    listed = "".join(f"    ({name!r}, {text!r}),\n" for name, text in sources)
    return f'''#!/usr/bin/python3
"""device-agent boot check, generated by ota.layout.boot_check_source from {", ".join(n for n, _ in sources)}.

Standard library only; run by the unit's ExecStartPre= before every start. Do not edit: every
commit rewrites it from the committed release.
"""

import sys
import types

SOURCES = [
{listed}]


def load() -> types.ModuleType:
    package = types.ModuleType("ota")
    package.__path__ = []
    sys.modules["ota"] = package
    for name, source in SOURCES:
        module = types.ModuleType(name)
        module.__package__, module.__file__ = "ota", __file__
        sys.modules[name] = module
        setattr(package, name.rpartition(".")[2], module)
        exec(compile(source, f"{{__file__}}:{{name}}", "exec"), module.__dict__)
    return sys.modules["ota.layout"]


if __name__ == "__main__":
    sys.exit(load().main())
'''.encode()


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
