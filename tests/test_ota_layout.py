"""The boot check's repairs: missing or dangling link, incomplete slot, corrupt state, no slot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ota.layout import MARKER, Layout, atomic_write_json, boot_check, finish_rollback

BOOT = Path(__file__).resolve().parents[1] / "ota" / "layout.py"


def _slot(layout: Layout, name: str, version: str, complete: bool = True) -> None:
    path = layout.slot_path(name)
    (path / "bin").mkdir(parents=True)
    os.symlink(sys.executable, path / "bin" / "python")
    if complete:
        atomic_write_json(path / MARKER, {"version": version})


def _boot(layout: Layout) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable,
            str(BOOT),
            "--root",
            str(layout.root),
            "--state-dir",
            str(layout.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_missing_link_points_at_the_committed_slot(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "opt", tmp_path / "state")
    _slot(layout, "a", "1.0.0")
    _slot(layout, "b", "2.0.0")
    layout.save_state({"committed_slot": "b", "committed_version": "2.0.0", "update": None})
    r = _boot(layout)
    assert r.returncode == 0 and "repaired to b" in r.stdout
    assert layout.current_slot() == "b"


def test_link_to_incomplete_slot_is_repaired(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "opt", tmp_path / "state")
    _slot(layout, "a", "1.0.0")
    _slot(layout, "b", "2.0.0", complete=False)
    layout.point_current("b")
    slot, message = boot_check(layout)
    assert slot == "a" and layout.current_slot() == "a" and "incomplete" in message
    state = layout.load_state()
    assert state["committed_slot"] == "a" and state["committed_version"] == "1.0.0"


def test_corrupt_state_is_kept_aside_and_the_device_boots(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "opt", tmp_path / "state")
    _slot(layout, "a", "1.0.0")
    layout.point_current("a")
    layout.state_dir.mkdir(parents=True)
    layout.state_path.write_text("{not json")
    r = _boot(layout)
    assert r.returncode == 0 and "starting slot a" in r.stdout
    assert (layout.state_dir / "ota.corrupt").read_text() == "{not json"
    assert json.loads(layout.state_path.read_text())["committed_slot"] == "a"


def test_no_complete_slot_is_a_clear_failure(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "opt", tmp_path / "state")
    _slot(layout, "a", "1.0.0", complete=False)
    r = _boot(layout)
    assert r.returncode == 3 and "no complete slot" in r.stderr


def test_interrupted_rollback_is_finished_and_rollback_is_idempotent(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "opt", tmp_path / "state")
    _slot(layout, "a", "1.0.0")
    _slot(layout, "b", "2.0.0")
    layout.point_current("b")
    layout.save_state(
        {
            "committed_slot": "a",
            "committed_version": "1.0.0",
            "update": {
                "phase": "rolling_back",
                "version": "2.0.0",
                "target_slot": "b",
                "previous_slot": "a",
                "reason": "not healthy",
            },
        }
    )
    slot, message = boot_check(layout)
    assert slot == "a" and "finished rollback: not healthy" in message
    state = layout.load_state()
    assert state["update"] is None and state["last_result"]["result"] == "rolled_back"
    finish_rollback(layout, layout.load_state(), "again")  # nothing left to do: still on a
    assert layout.current_slot() == "a" and layout.load_state() == state
