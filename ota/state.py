"""The OTA update state machine: states, events, the transition table and the typed state file.

Every change to ``<state_dir>/ota.json`` goes through one of the transition functions below
(the installer, the trial, the OTA component and the boot check call them; none of them edits
the JSON). A transition is checked against ``TRANSITIONS`` (an illegal one raises
``IllegalTransition`` and changes nothing), applied, and saved atomically before the function
returns, so the file after each transition is a resume point for the next boot.

Standard library only (plus ``ota.errors``): the boot check carries this module.

The JSON shape is the one every earlier release wrote and reads (a device upgrading or rolling
back mid-trial runs the other release's code on this file)::

    committed_slot / committed_version   the last known-good slot
    update: null | {phase, version, target_slot, previous_slot, previous_version, bundle, started,
                    [trial:] starts, max_failed_starts, trial_deadline_s, switched, install_s,
                    [rolling_back:] reason}
    last_result: {result, version, reason, ts, reported}
    history: the last 20 results (without ``reported``)

``update.phase`` is the state (no ``update``: ``idle``). Unknown keys are kept as they are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any, Protocol

from ota.errors import OtaError


class State(StrEnum):
    """Where an update is. ``idle``: nothing in flight (the committed slot runs)."""

    IDLE = "idle"
    INSTALLING = "installing"  # the inactive slot may be half written; `current` untouched
    TRIAL = "trial"  # recorded before `current` moves: the link may point at the new slot
    ROLLING_BACK = "rolling_back"  # finish the rollback (idempotent)


class Event(StrEnum):
    """What happens to an update: the closed set of inputs of the state machine."""

    PREPARE = "prepare"  # installer: bundle verified, the inactive slot is about to be wiped
    INSTALL_FAILED = "install_failed"  # installer: a failure before the switch
    INSTALL_INTERRUPTED = "install_interrupted"  # boot check: installing, but the updater is dead
    SWITCH = "switch"  # installer: the slot is sealed; written before `current` moves
    SWITCH_INTERRUPTED = "switch_interrupted"  # boot check: trial, but `current` never moved
    START = "start"  # boot check: one more start of the trial slot
    COMMIT = "commit"  # trial: healthy long enough, `trial` and `commit` hooks passed
    ROLLBACK = "rollback"  # trial deadline, a failing hook, a crash loop or the operator
    ROLLBACK_DONE = "rollback_done"  # `current` is back on the previous slot
    REVERT = "revert"  # operator: nothing in flight, `current` moved to the other (older) slot
    ADOPT = "adopt"  # boot check: nothing committed yet, the running slot becomes the committed one
    REPORTED = "reported"  # the last result reached the fleet


class Result(StrEnum):
    """How an update ended (``last_result.result``)."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


# (state, event) -> next state. Anything not listed is refused with IllegalTransition.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.PREPARE): State.INSTALLING,
    (State.IDLE, Event.INSTALL_FAILED): State.IDLE,  # refused before anything was prepared (a `verify` hook)
    (State.INSTALLING, Event.PREPARE): State.INSTALLING,  # a dead install's record, replaced under the lock
    (State.INSTALLING, Event.INSTALL_FAILED): State.IDLE,
    (State.INSTALLING, Event.INSTALL_INTERRUPTED): State.IDLE,
    (State.INSTALLING, Event.SWITCH): State.TRIAL,
    (State.TRIAL, Event.SWITCH_INTERRUPTED): State.IDLE,
    (State.TRIAL, Event.START): State.TRIAL,
    (State.TRIAL, Event.COMMIT): State.IDLE,
    (State.TRIAL, Event.ROLLBACK): State.ROLLING_BACK,
    (State.ROLLING_BACK, Event.ROLLBACK_DONE): State.IDLE,
    (State.IDLE, Event.REVERT): State.IDLE,
    (State.INSTALLING, Event.REVERT): State.INSTALLING,  # a dead install's record stays for the boot check
    (State.IDLE, Event.ADOPT): State.IDLE,
    **{(s, Event.REPORTED): s for s in State},
}

HISTORY = 20  # results kept in ``history``


class IllegalTransition(OtaError):
    """``event`` is not allowed in ``state`` (a race or a bug); nothing was changed."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(
            "illegal_transition", f"{event.value} is not allowed while the update is {state.value}"
        )
        self.state = state
        self.event = event


class StateStore(Protocol):
    """Where the state lives: ``ota.layout.Layout`` (raw JSON, written atomically)."""

    def load_state(self) -> dict[str, Any]: ...

    def save_state(self, state: dict[str, Any]) -> None: ...


def _known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


@dataclass
class Update:
    """The update in flight (``update`` in the file); ``phase`` is never ``idle``."""

    phase: State
    version: str | None = None
    target_slot: str | None = None
    previous_slot: str | None = None
    previous_version: str | None = None
    bundle: str | None = None
    started: float | None = None
    starts: int | None = None  # trial: starts counted by the boot check
    max_failed_starts: int | None = None
    trial_deadline_s: float | None = None
    switched: float | None = None
    install_s: float | None = None
    reason: str | None = None  # rolling_back: why
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Update:
        known, extra = _known(cls, data)
        phase = known.get("phase")
        # Only a hand edit writes another phase; like every release so far, treat it as an install.
        known["phase"] = (
            State(phase) if phase in (State.TRIAL.value, State.ROLLING_BACK.value) else State.INSTALLING
        )
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (
                value is None and f.name not in ("version", "target_slot", "previous_slot")
            ):
                continue
            out[f.name] = value.value if isinstance(value, Enum) else value
        return out


@dataclass
class Outcome:
    """How the last update ended (``last_result``)."""

    result: Result
    version: str | None
    reason: str
    ts: float
    reported: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        known, extra = _known(cls, data)
        return cls(
            result=Result(known["result"]),
            version=known.get("version"),
            reason=str(known.get("reason") or ""),
            ts=float(known.get("ts") or 0.0),
            reported=bool(known.get("reported", False)),
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "result": self.result.value,
            "version": self.version,
            "reason": self.reason,
            "ts": self.ts,
            "reported": self.reported,
        }


@dataclass
class OtaState:
    """The whole state file. Read it with ``load``; change it only with the transitions below."""

    committed_slot: str | None = None
    committed_version: str | None = None
    update: Update | None = None
    last_result: Outcome | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> State:
        return self.update.phase if self.update is not None else State.IDLE

    def in_flight(self) -> bool:
        """A trial or a rollback is under way (a new install must wait)."""
        return self.state in (State.TRIAL, State.ROLLING_BACK)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OtaState:
        known, extra = _known(cls, data)
        update = known.get("update")
        last = known.get("last_result")
        if isinstance(last, dict) and last.get("result") not in {r.value for r in Result}:
            extra["last_result"], last = last, None  # not ours to interpret: kept as it is
        return cls(
            committed_slot=known.get("committed_slot"),
            committed_version=known.get("committed_version"),
            update=Update.from_dict(update) if isinstance(update, dict) and update else None,
            last_result=Outcome.from_dict(last) if isinstance(last, dict) and last.get("result") else None,
            history=list(known.get("history") or []),
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "committed_slot": self.committed_slot,
            "committed_version": self.committed_version,
            "update": self.update.to_dict() if self.update else None,
        }
        if self.last_result is not None:
            out["last_result"] = self.last_result.to_dict()
        if self.history:
            out["history"] = list(self.history)
        return out

    def __getitem__(self, key: str) -> Any:
        """Read one top-level field in its on-disk (JSON) shape, e.g. ``state["committed_slot"]``."""
        return self.to_dict()[key]

    @classmethod
    def load(cls, store: StateStore) -> OtaState:
        return cls.from_dict(store.load_state())

    def save(self, store: StateStore) -> None:
        store.save_state(self.to_dict())


# -- transitions: the only functions that change an OtaState -----------------------------------


def _fire(st: OtaState, event: Event) -> State:
    """Check ``event`` against the table; returns the next state (the caller applies, then ``_save``)."""
    nxt = TRANSITIONS.get((st.state, event))
    if nxt is None:
        raise IllegalTransition(st.state, event)
    return nxt


def _save(store: StateStore, st: OtaState, nxt: State) -> None:
    assert st.state is nxt, (st.state, nxt)  # the effect matches the table
    st.save(store)


def _record(st: OtaState, result: Result, version: str | None, reason: str) -> None:
    st.last_result = Outcome(result, version, reason, round(time.time(), 3))
    st.history.append({k: v for k, v in st.last_result.to_dict().items() if k != "reported"})
    del st.history[:-HISTORY]


def _update(st: OtaState) -> Update:
    assert st.update is not None  # guaranteed by the table: only idle has no update
    return st.update


def prepare(
    store: StateStore,
    st: OtaState,
    version: str,
    target_slot: str,
    previous_slot: str | None,
    previous_version: str | None,
    bundle: str,
) -> Update:
    """``installing``: from here the inactive slot may be half written."""
    nxt = _fire(st, Event.PREPARE)
    st.update = Update(
        State.INSTALLING,
        version,
        target_slot,
        previous_slot,
        previous_version,
        bundle,
        started=round(time.time(), 3),
    )
    _save(store, st, nxt)
    return st.update


def install_failed(store: StateStore, st: OtaState, reason: str, version: str | None = None) -> None:
    """A failure before the switch: ``failed`` recorded, nothing in flight."""
    nxt = _fire(st, Event.INSTALL_FAILED)
    _record(
        st, Result.FAILED, version if version is not None or st.update is None else st.update.version, reason
    )
    st.update = None
    _save(store, st, nxt)


def install_interrupted(store: StateStore, st: OtaState) -> None:
    """The boot check found an install whose updater died (power cut, SIGKILL)."""
    nxt = _fire(st, Event.INSTALL_INTERRUPTED)
    update = _update(st)
    _record(st, Result.FAILED, update.version, f"interrupted during {update.phase.value}")
    st.update = None
    _save(store, st, nxt)


def switch(
    store: StateStore, st: OtaState, max_failed_starts: int, trial_deadline_s: float, install_s: float
) -> Update:
    """``trial``, saved *before* ``current`` moves (the boot check tells the two apart)."""
    nxt = _fire(st, Event.SWITCH)
    update = _update(st)
    update.phase, update.starts, update.max_failed_starts = State.TRIAL, 0, max_failed_starts
    update.trial_deadline_s, update.switched, update.install_s = (
        trial_deadline_s,
        round(time.time(), 3),
        install_s,
    )
    _save(store, st, nxt)
    return update


def switch_interrupted(store: StateStore, st: OtaState) -> None:
    """Killed between recording the switch and swapping the link: nothing switched."""
    nxt = _fire(st, Event.SWITCH_INTERRUPTED)
    _record(st, Result.FAILED, _update(st).version, "interrupted before the switch completed")
    st.update = None
    _save(store, st, nxt)


def count_start(store: StateStore, st: OtaState) -> tuple[int, int]:
    """One more start of the trial slot; returns ``(starts, max_failed_starts)``. The caller rolls
    back (``begin_rollback``) instead when the start would pass the limit: see ``crash_loop``."""
    nxt = _fire(st, Event.START)
    update = _update(st)
    update.starts = int(update.starts or 0) + 1
    _save(store, st, nxt)
    return update.starts, start_limit(update)


def start_limit(update: Update) -> int:
    return int(update.max_failed_starts if update.max_failed_starts is not None else 3)


def crash_loop(st: OtaState) -> str | None:
    """The rollback reason when one more start of the trial would pass ``max_failed_starts``."""
    update = st.update
    if update is None or update.phase is not State.TRIAL:
        return None
    starts = int(update.starts or 0)
    if starts + 1 <= start_limit(update):
        return None
    return f"crash loop: {starts} starts of {update.version} without a commit"


def commit(store: StateStore, st: OtaState) -> None:
    """The trial slot becomes the committed one."""
    nxt = _fire(st, Event.COMMIT)
    update = _update(st)
    st.committed_slot, st.committed_version = update.target_slot, update.version
    _record(st, Result.COMMITTED, update.version, f"healthy after {update.starts or 1} start(s)")
    st.update = None
    _save(store, st, nxt)


def begin_rollback(store: StateStore, st: OtaState, reason: str) -> None:
    """``rolling_back`` with the reason, saved before ``current`` moves back."""
    nxt = _fire(st, Event.ROLLBACK)
    update = _update(st)
    update.phase, update.reason = State.ROLLING_BACK, reason
    _save(store, st, nxt)


def rollback_done(store: StateStore, st: OtaState, reason: str) -> None:
    """``current`` is back on the previous slot: ``rolled_back`` recorded with the saved reason
    (``reason`` when the file has none)."""
    nxt = _fire(st, Event.ROLLBACK_DONE)
    update = _update(st)
    _record(st, Result.ROLLED_BACK, update.version, update.reason or reason)
    st.update = None
    _save(store, st, nxt)


def revert(store: StateStore, st: OtaState, slot: str, version: str | None, reason: str) -> None:
    """Nothing in flight and ``current`` moved to the other slot: it becomes the committed one."""
    nxt = _fire(st, Event.REVERT)
    st.committed_slot, st.committed_version = slot, version
    _record(st, Result.ROLLED_BACK, version, reason)
    _save(store, st, nxt)


def adopt(store: StateStore, st: OtaState, slot: str, version: str | None) -> None:
    """First start without a committed slot: the running slot is the known-good one."""
    nxt = _fire(st, Event.ADOPT)
    st.committed_slot, st.committed_version = slot, version
    _save(store, st, nxt)


def mark_reported(store: StateStore, st: OtaState) -> bool:
    """The last result reached the fleet; False when there was nothing to mark."""
    nxt = _fire(st, Event.REPORTED)
    if st.last_result is None or st.last_result.reported:
        return False
    st.last_result.reported = True
    _save(store, st, nxt)
    return True
