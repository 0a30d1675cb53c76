"""Rollout planner: canary first, then batches; halts itself when failures pass a threshold.

A pure state machine (no I/O, time passed in) so it can be tested exhaustively and persisted as
JSON between ``fleetctl`` runs. Modelled on AWS IoT Jobs: abort criteria (failure rate over at
least ``min_executed`` finished devices), constant or exponential batch growth, in-progress
timeouts (a device that never reports is a failure, not a hang of the whole rollout).

Device states: ``pending`` -> ``in_progress`` -> ``succeeded`` | ``failed`` | ``timed_out``;
``skipped`` when the rollout halts before reaching them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

DONE = {"succeeded", "failed", "timed_out"}
FAILED = {"failed", "timed_out"}


@dataclass
class Policy:
    canary: int = 1  # devices updated alone first; any canary failure halts the rollout
    batch_size: int = 10
    growth: float = 1.0  # each batch is this many times the previous one (1.0: constant)
    max_failure_rate: float = 0.1  # halt when failed / finished exceeds this ...
    min_executed: int = 1  # ... once at least this many devices finished
    in_progress_timeout_s: float = 1800.0

    def validate(self) -> None:
        if self.canary < 0 or self.batch_size < 1 or self.growth < 1.0:
            raise ValueError("need canary >= 0, batch_size >= 1 and growth >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError("max_failure_rate must be within 0..1")
        if self.in_progress_timeout_s <= 0:
            raise ValueError("in_progress_timeout_s must be > 0")


@dataclass
class DeviceState:
    state: str = "pending"
    phase: str = ""  # last OTA phase the device reported (download, pip, trial...)
    percent: float | None = None
    reason: str = ""
    wave: int = -1
    started: float | None = None
    finished: float | None = None


@dataclass
class Rollout:
    version: str
    devices: list[str]
    policy: Policy = field(default_factory=Policy)
    status: str = "running"  # running | halted | completed
    reason: str = ""
    waves: int = 0
    per_device: dict[str, DeviceState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policy.validate()
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("duplicate device in the rollout")
        for d in self.devices:
            self.per_device.setdefault(d, DeviceState())

    # -- queries ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("pending", "in_progress", "succeeded", "failed", "timed_out", "skipped")}
        for st in self.per_device.values():
            out[st.state] += 1
        return out

    def in_progress(self) -> list[str]:
        return [d for d in self.devices if self.per_device[d].state == "in_progress"]

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def wave_size(self, wave: int) -> int:
        """Size of wave ``wave`` (0 is the canary when there is one)."""
        if self.policy.canary and wave == 0:
            return self.policy.canary
        k = wave - (1 if self.policy.canary else 0)
        return max(1, math.floor(self.policy.batch_size * self.policy.growth**k))

    # -- transitions -----------------------------------------------------------------------
    def next_wave(self, now: float) -> list[str]:
        """The devices to start now: empty while a wave is in progress or once finished."""
        self.tick(now)
        if self.finished or self.in_progress():
            return []
        pending = [d for d in self.devices if self.per_device[d].state == "pending"]
        if not pending:
            self._finish("completed", "every device finished")
            return []
        wave = pending[: self.wave_size(self.waves)]
        for d in wave:
            st = self.per_device[d]
            st.state, st.started, st.wave, st.phase = "in_progress", now, self.waves, "dispatched"
        self.waves += 1
        return wave

    def report(
        self,
        device: str,
        phase: str,
        now: float,
        version: str | None = None,
        reason: str = "",
        percent: float | None = None,
    ) -> None:
        """An OTA event from ``device`` (``download``, ``pip``, ``committed``, ``rolled_back``...)."""
        st = self.per_device.get(device)
        if st is None or st.state != "in_progress":
            return
        if (
            version is not None
            and version != self.version
            and phase in {"committed", "rolled_back", "failed"}
        ):
            return  # about another update (e.g. the previous one's late report)
        st.phase = phase
        if percent is not None:
            st.percent = percent
        if phase == "committed":
            self._done(device, "succeeded", now, reason)
        elif phase in {"rolled_back", "failed"}:
            self._done(device, "failed", now, reason or phase)

    def dispatch_failed(self, device: str, reason: str, now: float) -> None:
        """The install command was refused or never answered."""
        if self.per_device[device].state == "in_progress":
            self._done(device, "failed", now, reason)

    def tick(self, now: float) -> None:
        """Time out devices that stayed in progress too long."""
        for d in self.in_progress():
            st = self.per_device[d]
            if st.started is not None and now - st.started > self.policy.in_progress_timeout_s:
                self._done(
                    d,
                    "timed_out",
                    now,
                    f"no result within {self.policy.in_progress_timeout_s:g} s "
                    f"(last phase {st.phase or 'none'})",
                )

    def halt(self, reason: str) -> None:
        self._finish("halted", reason)

    def _done(self, device: str, state: str, now: float, reason: str) -> None:
        st = self.per_device[device]
        st.state, st.finished, st.reason = state, now, reason
        self._evaluate()

    def _evaluate(self) -> None:
        if self.finished:
            return
        c = self.counts()
        failed = c["failed"] + c["timed_out"]
        executed = failed + c["succeeded"]
        canaries = [d for d in self.devices if self.per_device[d].wave == 0] if self.policy.canary else []
        bad_canary = [d for d in canaries if self.per_device[d].state in FAILED]
        if bad_canary:
            self.halt(f"canary {bad_canary[0]} failed: {self.per_device[bad_canary[0]].reason}")
        elif executed >= self.policy.min_executed and failed / executed > self.policy.max_failure_rate:
            self.halt(
                f"failure rate {failed}/{executed} = {failed / executed:.0%} is above "
                f"{self.policy.max_failure_rate:.0%}"
            )
        elif not any(st.state in {"pending", "in_progress"} for st in self.per_device.values()):
            self._finish("completed", f"{c['succeeded']} succeeded, {failed} failed")

    def _finish(self, status: str, reason: str) -> None:
        if self.finished:
            return
        self.status, self.reason = status, reason
        if status == "halted":
            for st in self.per_device.values():
                if st.state == "pending":
                    st.state = "skipped"

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "devices": self.devices,
            "policy": asdict(self.policy),
            "status": self.status,
            "reason": self.reason,
            "waves": self.waves,
            "per_device": {d: asdict(s) for d, s in self.per_device.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        r = cls(
            version=data["version"],
            devices=list(data["devices"]),
            policy=Policy(**data["policy"]),
            status=data["status"],
            reason=data.get("reason", ""),
            waves=data.get("waves", 0),
            per_device={d: DeviceState(**s) for d, s in data["per_device"].items()},
        )
        return r
