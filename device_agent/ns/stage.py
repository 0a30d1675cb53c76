"""The noise-suppression AudioStage: watches its own cost, falls back to bypass when behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from device_agent.media.stages import StageAlert, StageAlertFn
from device_agent.ns.model import HOP, MaskModel, ModelError, StreamingDenoiser

AlertFn = Callable[[str, str], None]  # (severity, message): the plain form, for tools and tests


def _report(
    alert: StageAlert, message: str, on_alert: AlertFn | None, on_stage_alert: StageAlertFn | None
) -> None:
    """Send one alert to whichever callbacks were given: typed (the media graph) and/or plain."""
    if on_stage_alert is not None:
        on_stage_alert(alert, message)
    if on_alert is not None:
        on_alert(alert.severity, message)


class NoiseSuppressionStage:
    """int16 mono 16 kHz in/out, always delayed by ``latency`` samples (disabled or bypassing too).

    Over budget, it bypasses and alerts; after ``retry_after_hops`` in bypass (30 s by default) it
    tries again, so a passing load (an OTA install) does not turn suppression off for good. The
    denoiser's state is reset whenever it resumes, so no stale overlap or recurrent state leaks in.
    """

    name = "noise_suppression"
    error: str | None = None  # it loaded; a model that does not load gives a BypassStage instead

    def __init__(
        self,
        model: MaskModel,
        budget_rtf: float = 0.5,
        on_alert: AlertFn | None = None,
        window_hops: int = 100,
        clock: Callable[[], float] = time.perf_counter,
        retry_after_hops: int = 3000,
        on_stage_alert: StageAlertFn | None = None,
    ) -> None:
        self.enabled = True
        self.fell_back = False
        self.fallbacks = 0
        self._retry_after = retry_after_hops
        self._bypassed_hops = 0
        self._running = True  # did the denoiser process the previous call?
        self._den = StreamingDenoiser(model)
        self.latency = self._den.latency
        self._budget = budget_rtf
        self._alert = on_alert
        self._stage_alert = on_stage_alert
        self._window = window_hops
        self._clock = clock
        self._hops = 0
        self._busy = 0.0
        self._last_rtf = 0.0
        self._delay = np.zeros(self.latency, np.int16)  # bypass keeps the same delay: no jumps

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples)
        if samples.ndim != 1 or len(samples) % HOP:
            raise ValueError(
                f"expected mono int16 with a whole number of {HOP}-sample hops, got {samples.shape}"
            )
        if self.fell_back and self.enabled:
            self._bypassed_hops += len(samples) // HOP
            if self._bypassed_hops >= self._retry_after:
                self.fell_back = False  # try again; it falls back (and alerts) again if still behind
        if not self.enabled or self.fell_back:
            self._running = False
            joined = np.concatenate([self._delay, samples.astype(np.int16)])
            self._delay = joined[len(samples) :]
            return joined[: len(samples)]
        if not self._running:  # resuming after disabled/bypass: start from a clean state
            self._den.reset()
            self._hops, self._busy = 0, 0.0
            self._running = True
        t0 = self._clock()
        y = self._den.process(samples.astype(np.float32) / 32768.0)
        self._account(self._clock() - t0, len(samples) // HOP)
        self._delay = (
            samples[-self.latency :].astype(np.int16) if len(samples) >= self.latency else self._delay
        )
        return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)

    def _account(self, seconds: float, hops: int) -> None:
        self._hops += hops
        self._busy += seconds
        if self._hops >= self._window:
            self._last_rtf = self._busy / (self._hops * HOP / 16000)
            self._hops, self._busy = 0, 0.0
            if self._last_rtf > self._budget:
                self.fell_back = True
                self.fallbacks += 1
                self._bypassed_hops = 0
                _report(
                    StageAlert.OVER_BUDGET,
                    f"noise suppression behind budget (RTF {self._last_rtf:.2f} > "
                    f"{self._budget:.2f}); bypassing",
                    self._alert,
                    self._stage_alert,
                )

    def reset_fallback(self) -> None:
        """Try suppression again now (the state is reset on the next call)."""
        self.fell_back = False

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "fell_back": self.fell_back,
            "fallbacks": self.fallbacks,
            "rtf": round(self._last_rtf, 4),
            "latency_ms": self.latency / 16,
            "algorithmic_latency_ms": self._den.algorithmic_latency / 16,
            "frame": self._den.frame,
            "model": str(self._den.model.path),
        }


class BypassStage:
    """Pass-through used when the model cannot load; reports why."""

    name = "noise_suppression"
    latency = 0
    fell_back = False  # it never runs, so it never falls behind

    def __init__(self, error: str) -> None:
        self.enabled = False
        self.error: str | None = error

    def process(self, samples: np.ndarray) -> np.ndarray:
        return np.asarray(samples, dtype=np.int16).copy()

    def reset_fallback(self) -> None:
        """Nothing to retry: the model did not load."""

    def stats(self) -> dict[str, Any]:
        return {"enabled": False, "error": self.error}


def create_stage(
    model_path: str = "",
    threads: int = 1,
    budget_rtf: float = 0.5,
    enabled: bool = True,
    on_alert: AlertFn | None = None,
    on_stage_alert: StageAlertFn | None = None,
) -> tuple[NoiseSuppressionStage | BypassStage, str | None]:
    """Build the stage; on a bad model return a BypassStage plus the error (and alert
    ``StageAlert.UNAVAILABLE``, P2). Alerts go to ``on_stage_alert(alert, message)`` and/or
    ``on_alert(severity, message)``."""
    try:
        stage = NoiseSuppressionStage(
            MaskModel(model_path, threads), budget_rtf, on_alert, on_stage_alert=on_stage_alert
        )
    except ModelError as exc:
        _report(StageAlert.UNAVAILABLE, f"noise suppression off: {exc}", on_alert, on_stage_alert)
        return BypassStage(str(exc)), str(exc)
    stage.enabled = enabled
    return stage, None


def stage_from_config(
    section: Any,
    on_alert: AlertFn | None = None,
    on_stage_alert: StageAlertFn | None = None,
) -> tuple[NoiseSuppressionStage | BypassStage, str | None]:
    """``create_stage`` from a ``NoiseSuppressionSection`` (``[ns]`` in agent.toml)."""
    return create_stage(
        section.model, section.threads, section.budget_rtf, section.enabled, on_alert, on_stage_alert
    )
