"""Microphone and camera judgements: the caller measures (the doctor opens the device itself,
the self-test reads the running media pipeline), these decide pass / warn / fail."""

from __future__ import annotations

from typing import Any

from device_agent.checks.result import FAIL, PASS, WARN, Check
from device_agent.checks.thresholds import (
    CAMERA_DARK_LUMA,
    CAMERA_SATURATED_LUMA,
    CAMERA_STALE_S,
    CAMERA_UNIFORM_STD,
    MIC_CLIP_DBFS,
    MIC_DEAD_DBFS,
    MIC_NOISE_FLOOR_DBFS,
)

MIC_FIX = "speak near the microphone and retry; check its cable and the capture gain (alsamixer)"


def check_mic_level(
    level_dbfs: float,
    peak_dbfs: float,
    noise_floor_dbfs: float | None = None,
    *,
    min_level_dbfs: float = MIC_DEAD_DBFS,
    backend: str | None = None,
) -> Check:
    """Fail at or below ``min_level_dbfs`` (silence), warn on clipping (peaks >= ``MIC_CLIP_DBFS``)
    and on a high noise floor (> ``MIC_NOISE_FLOOR_DBFS``, when measured)."""
    value: dict[str, Any] = {"level_dbfs": round(level_dbfs, 1), "peak_dbfs": round(peak_dbfs, 1)}
    if noise_floor_dbfs is not None:
        value["noise_floor_dbfs"] = round(noise_floor_dbfs, 1)
    if backend is not None:
        value["backend"] = backend
    if level_dbfs <= min_level_dbfs:
        return Check(
            "mic", FAIL, f"level {level_dbfs:.0f} dBFS: silence, microphone dead or muted", value, MIC_FIX
        )
    if peak_dbfs >= MIC_CLIP_DBFS:
        return Check(
            "mic",
            WARN,
            f"level {level_dbfs:.0f} dBFS, peaks at {peak_dbfs:.1f} dBFS: clipping, gain too high",
            value,
            "lower the capture gain (alsamixer)",
        )
    floor = f", noise floor {noise_floor_dbfs:.0f} dBFS" if noise_floor_dbfs is not None else ""
    if noise_floor_dbfs is not None and noise_floor_dbfs > MIC_NOISE_FLOOR_DBFS:
        return Check(
            "mic",
            WARN,
            f"level {level_dbfs:.0f} dBFS{floor}: the noise floor is high",
            value,
            "move the device away from fans or machinery; lower the capture gain",
        )
    return Check(
        "mic", PASS, f"level {level_dbfs:.0f} dBFS{floor}" + (f" ({backend})" if backend else ""), value
    )


def check_camera_frame(stats: dict[str, Any], age_s: float | None = None) -> Check:
    """Judge one frame from ``device_agent.diag.frames.frame_stats`` (width, height, brightness =
    mean luma, contrast = luma std) and, when known, its age: fail when stale or uniform, warn when
    nearly black or saturated."""
    value = dict(stats)
    if age_s is not None:
        value["age_ms"] = round(age_s * 1000, 1)
        if age_s > CAMERA_STALE_S:
            return Check(
                "camera",
                FAIL,
                f"latest frame is {age_s:.1f} s old: camera stalled",
                value,
                "check the camera cable; media.restart reopens it",
            )
    size = f"{stats['width']}x{stats['height']}"
    if stats["contrast"] < CAMERA_UNIFORM_STD:
        return Check(
            "camera",
            FAIL,
            f"frame {size} is uniform (luma std {stats['contrast']}, mean "
            f"{stats['brightness']:.0f}): lens covered or sensor dead",
            value,
            "remove the lens cover; check the camera cable",
        )
    if stats["brightness"] < CAMERA_DARK_LUMA:
        return Check(
            "camera",
            WARN,
            f"frame nearly black (mean luma {stats['brightness']}): lens covered or too dark",
            value,
            "remove the lens cover or light the scene",
        )
    if stats["brightness"] > CAMERA_SATURATED_LUMA:
        return Check(
            "camera",
            WARN,
            f"frame saturated (mean luma {stats['brightness']})",
            value,
            "reduce the light on the lens or the exposure",
        )
    return Check("camera", PASS, f"{size}, brightness {stats['brightness']}", value)
