"""ota.state, table-driven: every transition of the table, every illegal (state, event) pair, and
the resume point after a power cut behind each transition (the saved file, then the real boot check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ota import state as sm
from ota.layout import MARKER, Layout, atomic_write_json, boot_check
from ota.state import TRANSITIONS, Event, IllegalTransition, OtaState, Result, State

BOOT = Path(__file__).resolve().parents[1] / "ota" / "layout.py"

# One call per event, with the arguments its caller (installer, trial, component, boot check) passes.
CALLS: dict[Event, Callable[[Layout, OtaState], object]] = {
    Event.PREPARE: lambda lay, st: sm.prepare(lay, st, "2.0.0", "b", "a", "1.0.0", "/bundles/v2.tar"),
    Event.INSTALL_FAILED: lambda lay, st: sm.install_failed(lay, st, "pip install failed", "2.0.0"),
    Event.INSTALL_INTERRUPTED: sm.install_interrupted,
    Event.SWITCH: lambda lay, st: sm.switch(lay, st, 3, 120.0, 1.5),
    Event.SWITCH_INTERRUPTED: sm.switch_interrupted,
    Event.START: sm.count_start,
    Event.COMMIT: sm.commit,
    Event.ROLLBACK: lambda lay, st: sm.begin_rollback(lay, st, "not healthy"),
    Event.ROLLBACK_DONE: lambda lay, st: sm.rollback_done(lay, st, "rollback interrupted"),
    Event.REVERT: lambda lay, st: sm.revert(lay, st, "b", "2.0.0", "requested by the operator"),
    Event.ADOPT: lambda lay, st: sm.adopt(lay, st, "a", "1.0.0"),
    Event.REPORTED: sm.mark_reported,
}

# A state file in each state, in the JSON shape every release so far writes (1.0.0 in a, 2.0.0 in b).
_UPDATE = {
    "version": "2.0.0",
    "target_slot": "b",
    "previous_slot": "a",
    "previous_version": "1.0.0",
    "bundle": "/bundles/v2.tar",
    "started": 1700000000.0,
}
_TRIAL = {
    **_UPDATE,
    "phase": "trial",
    "starts": 1,
    "max_failed_starts": 3,
    "trial_deadline_s": 120.0,
    "switched": 1700000050.0,
    "install_s": 42.0,
}
_LAST = {
    "result": "committed",
    "version": "1.0.0",
    "reason": "healthy after 1 start(s)",
    "ts": 1600000000.0,
    "reported": False,
}
SAMPLES: dict[State, dict] = {
    State.IDLE: {"committed_slot": "a", "committed_version": "1.0.0", "update": None, "last_result": _LAST},
    State.INSTALLING: {
        "committed_slot": "a",
        "committed_version": "1.0.0",
        "update": {**_UPDATE, "phase": "installing"},
        "last_result": _LAST,
    },
    State.TRIAL: {
        "committed_slot": "a",
        "committed_version": "1.0.0",
        "update": _TRIAL,
        "last_result": _LAST,
    },
    State.ROLLING_BACK: {
        "committed_slot": "a",
        "committed_version": "1.0.0",
        "update": {**_TRIAL, "phase": "rolling_back", "reason": "not healthy"},
        "last_result": _LAST,
    },
}

# Where `current` points when the caller fires the event (default: a, or b once switched).
LINK_BEFORE = {State.IDLE: "a", State.INSTALLING: "a", State.TRIAL: "b", State.ROLLING_BACK: "b"}
LINK_OVERRIDE = {
    Event.SWITCH_INTERRUPTED: "a",  # the boot check fires it because the link never moved
    Event.ROLLBACK_DONE: "a",  # fired once the link is back on the previous slot
    Event.REVERT: "b",  # fired after the operator's rollback moved the link
}

# Power cut right after the transition: the slot the boot check starts and what the file then says.
# (state after the boot check, last result or None for "unchanged", note in the boot check's message)
RESUME: dict[tuple[State, Event], tuple[str, State, str | None, str]] = {
    (State.IDLE, Event.PREPARE): ("a", State.IDLE, "failed", "install interrupted during installing"),
    (State.INSTALLING, Event.PREPARE): ("a", State.IDLE, "failed", "install interrupted during installing"),
    (State.IDLE, Event.INSTALL_FAILED): ("a", State.IDLE, "failed", "starting slot a"),
    (State.INSTALLING, Event.INSTALL_FAILED): ("a", State.IDLE, "failed", "starting slot a"),
    (State.INSTALLING, Event.INSTALL_INTERRUPTED): ("a", State.IDLE, "failed", "starting slot a"),
    (State.INSTALLING, Event.SWITCH): ("a", State.IDLE, "failed", "switch interrupted"),
    (State.TRIAL, Event.SWITCH_INTERRUPTED): ("a", State.IDLE, "failed", "starting slot a"),
    (State.TRIAL, Event.START): ("b", State.TRIAL, None, "trial start 3/3 of 2.0.0"),
    (State.TRIAL, Event.COMMIT): ("b", State.IDLE, "committed", "starting slot b version 2.0.0"),
    (State.TRIAL, Event.ROLLBACK): ("a", State.IDLE, "rolled_back", "finished rollback: not healthy"),
    (State.ROLLING_BACK, Event.ROLLBACK_DONE): ("a", State.IDLE, "rolled_back", "starting slot a"),
    (State.IDLE, Event.REVERT): ("b", State.IDLE, "rolled_back", "starting slot b version 2.0.0"),
    (State.INSTALLING, Event.REVERT): ("b", State.IDLE, "failed", "install interrupted during installing"),
    (State.IDLE, Event.ADOPT): ("a", State.IDLE, None, "starting slot a version 1.0.0"),
    (State.IDLE, Event.REPORTED): ("a", State.IDLE, None, "starting slot a version 1.0.0"),
    (State.INSTALLING, Event.REPORTED): ("a", State.IDLE, "failed", "install interrupted during installing"),
    (State.TRIAL, Event.REPORTED): ("b", State.TRIAL, None, "trial start 2/3 of 2.0.0"),
    (State.ROLLING_BACK, Event.REPORTED): ("a", State.IDLE, "rolled_back", "finished rollback: not healthy"),
}

ILLEGAL = [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS]


def _device(tmp_path: Path, state: State, link: str) -> Layout:
    layout = Layout(tmp_path / "opt", tmp_path / "state")
    for slot, version in (("a", "1.0.0"), ("b", "2.0.0")):
        path = layout.slot_path(slot)
        (path / "bin").mkdir(parents=True)
        os.symlink(sys.executable, path / "bin" / "python")
        atomic_write_json(path / MARKER, {"version": version})
    layout.point_current(link)
    layout.save_state(json.loads(json.dumps(SAMPLES[state])))
    return layout


def _name(pair: tuple[State, Event]) -> str:
    return f"{pair[0].value}-{pair[1].value}"


def test_the_table_and_the_tests_cover_every_pair() -> None:
    assert set(RESUME) == set(TRANSITIONS)
    assert set(CALLS) == set(Event)
    assert len(TRANSITIONS) + len(ILLEGAL) == len(State) * len(Event)
    assert all(st in State and ev in Event for st, ev in TRANSITIONS)


@pytest.mark.parametrize("pair", sorted(TRANSITIONS), ids=_name)
def test_every_transition_of_the_table(tmp_path: Path, pair: tuple[State, Event]) -> None:
    state, event = pair
    layout = _device(tmp_path, state, LINK_OVERRIDE.get(event, LINK_BEFORE[state]))
    st = layout.load()
    assert st.state is state
    CALLS[event](layout, st)
    assert st.state is TRANSITIONS[pair]
    saved = layout.load_state()
    assert saved == st.to_dict()  # saved before the function returned
    assert (saved["update"] or {}).get("phase", "idle") == TRANSITIONS[
        pair
    ].value  # the phase every release reads
    assert layout.load() == st  # and it loads back as it was


@pytest.mark.parametrize("pair", ILLEGAL, ids=_name)
def test_every_illegal_pair_is_refused_and_changes_nothing(tmp_path: Path, pair: tuple[State, Event]) -> None:
    state, event = pair
    layout = _device(tmp_path, state, LINK_BEFORE[state])
    before = layout.state_path.read_bytes()
    st = layout.load()
    with pytest.raises(IllegalTransition) as err:
        CALLS[event](layout, st)
    assert err.value.code == "illegal_transition" and (err.value.state, err.value.event) == pair
    assert event.value in err.value.message and state.value in err.value.message
    assert layout.state_path.read_bytes() == before and st == OtaState.from_dict(SAMPLES[state])


@pytest.mark.parametrize("pair", sorted(RESUME), ids=_name)
def test_resume_after_a_power_cut_behind_each_transition(tmp_path: Path, pair: tuple[State, Event]) -> None:
    """The file a transition saved is all a power cut leaves: the boot check resumes from it."""
    state, event = pair
    layout = _device(tmp_path, state, LINK_OVERRIDE.get(event, LINK_BEFORE[state]))
    CALLS[event](layout, layout.load())
    before = layout.load()
    slot, message = boot_check(layout)
    want_slot, want_state, want_result, note = RESUME[pair]
    after = layout.load()
    assert (slot, layout.current_slot(), after.state) == (want_slot, want_slot, want_state), message
    assert note in message
    if want_result is None:
        assert after.last_result == before.last_result
    else:
        assert after.last_result is not None and after.last_result.result is Result(want_result)
    assert after.committed_slot == ("b" if event in (Event.COMMIT, Event.REVERT) else "a")
    if after.state is State.IDLE:  # settled: the next start changes nothing
        settled = layout.state_path.read_bytes()
        assert boot_check(layout)[0] == want_slot and layout.state_path.read_bytes() == settled


def test_a_state_written_by_the_previous_release_mid_trial_resumes(tmp_path: Path) -> None:
    """A device that upgrades mid-trial: the file keeps its exact shape and the trial goes on."""
    layout = _device(tmp_path, State.TRIAL, "b")
    raw = layout.load_state()
    assert OtaState.from_dict(raw).to_dict() == raw  # same JSON, key for key
    r = subprocess.run(
        [
            "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable,
            "-I",
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
    assert r.returncode == 0 and "trial start 2/3 of 2.0.0" in r.stdout, r.stdout + r.stderr
    assert layout.load_state() == dict(raw, update=dict(raw["update"], starts=2))


def test_unknown_keys_and_results_are_kept(tmp_path: Path) -> None:
    raw = {
        "committed_slot": "a",
        "committed_version": "1.0.0",
        "future": {"x": 1},
        "update": {**_TRIAL, "new_field": True},
        "last_result": {"result": "paused", "version": "2.0.0"},
        "history": [_LAST],
    }
    st = OtaState.from_dict(raw)
    assert st.state is State.TRIAL and st.last_result is None
    assert st.to_dict() == raw


def test_crash_loop_reason_comes_before_the_start_that_passes_the_limit(tmp_path: Path) -> None:
    layout = _device(tmp_path, State.TRIAL, "b")
    st = layout.load()
    assert sm.crash_loop(st) is None
    assert sm.count_start(layout, st) == (2, 3) and sm.count_start(layout, st) == (3, 3)
    assert sm.crash_loop(st) == "crash loop: 3 starts of 2.0.0 without a commit"
    slot, message = boot_check(layout)
    assert slot == "a" and "rolled back: crash loop: 3 starts of 2.0.0 without a commit" in message


async def test_a_trial_that_ended_meanwhile_is_an_outcome_not_an_error(tmp_path: Path) -> None:
    """An operator's rollback during the trial: commit finds no trial, runs no hook, raises nothing."""
    from ota.installer import InstallOptions
    from ota.trial import Trial, TrialOutcome, commit

    layout = _device(tmp_path, State.TRIAL, "b")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    ran = tmp_path / "ran"
    (hooks / "record").write_text(f"#!/bin/sh\necho $1 >> {ran}\n")
    (hooks / "record").chmod(0o755)
    options = InstallOptions(
        trusted_keys_dir=tmp_path, hardware="x", hooks_dirs=[hooks], trial_deadline_s=5.0
    )
    update = layout.load().update
    assert update is not None
    events: list[dict] = []

    def operator_rolls_back() -> bool:  # what ota.rollback does while the trial watches health
        from ota.layout import finish_rollback

        if layout.load().state is State.TRIAL:
            finish_rollback(layout, layout.load(), "requested by the operator")
        return True

    trial = Trial(
        layout, options, operator_rolls_back, lambda kind, **f: events.append(f), healthy_s=0.05, poll_s=0.01
    )
    assert await trial.run(update) is TrialOutcome.ENDED
    assert not ran.exists()  # neither `trial` nor `commit` hooks ran
    assert [e["phase"] for e in events] == ["trial"]  # no committed or rolled_back claimed by the trial
    st = layout.load()
    assert (
        st.state is State.IDLE and st.last_result is not None and st.last_result.result is Result.ROLLED_BACK
    )
    assert commit(layout, options) is None and layout.current_slot() == "a"


def test_commit_writes_a_standalone_boot_check_from_the_committed_slot(tmp_path: Path) -> None:
    """The committed release's ota/ (state machine included) becomes one stdlib file that the system
    Python runs in isolated mode, with nothing else beside it."""
    from ota.installer import InstallOptions
    from ota.layout import BOOT_CHECK_MODULES
    from ota.trial import commit

    layout = _device(tmp_path, State.TRIAL, "b")
    site = (
        layout.slot_path("b")
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
    )
    (site / "ota").mkdir(parents=True)
    for name in BOOT_CHECK_MODULES:
        module = name.rpartition(".")[2] + ".py"
        (site / "ota" / module).write_bytes((BOOT.parent / module).read_bytes())
    options = InstallOptions(trusted_keys_dir=tmp_path, hardware="x", hooks_dirs=[])
    assert commit(layout, options) is not None
    boot = layout.root / "boot-check.py"
    assert sorted(p.name for p in layout.root.iterdir()) == ["boot-check.py", "current", "slots"]
    # a later trial of b, 3 starts ...
    layout.save_state(dict(SAMPLES[State.TRIAL], update=dict(_TRIAL, starts=3)))
    r = subprocess.run(
        [
            "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable,
            "-I",
            str(boot),
            "--root",
            str(layout.root),
            "--state-dir",
            str(layout.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    # ... and the copy's state machine rolls the crash loop back
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "rolled back: crash loop: 3 starts of 2.0.0 without a commit" in r.stdout
        and layout.current_slot() == "a"
    )


def test_the_documented_state_table_is_the_transition_table() -> None:
    """docs/ota.md's table (``from | event | to | fired by``) lists exactly the pairs of TRANSITIONS."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ota.md").read_text()
    section = doc.split("### The state machine (`ota/state.py`)", 1)[1].split("\n## ", 1)[0]
    documented: dict[tuple[State, Event], State] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`"):
            continue
        sources = list(State) if cells[0] == "any" else [State(s.strip()) for s in cells[0].split(",")]
        event = Event(cells[1].strip("`"))
        for source in sources:
            target = source if cells[2] == "same" else State(cells[2].split()[0])
            documented[(source, event)] = target
    assert documented == TRANSITIONS
