"""Every threshold the checks use, in one place (doctor and self-test share them).

Where ``device-agent doctor`` and ``diag.selftest`` used to disagree, the stricter sensible value
won (docs/diagnostics.md, docs/provisioning.md): disk fails under 200 MB *or* 5 % free for both
(the self-test failed only under 3 %), a uniform camera frame (luma std < 2) fails both (the
doctor failed only under 1, the self-test only warned) and clipping starts at -0.5 dBFS peaks for
both (the doctor noted it only at full scale).
"""

from __future__ import annotations

import datetime as dt

# -- clock -------------------------------------------------------------------------------------
CLOCK_FLOOR = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
"""A clock before this was never set (a Pi has no RTC: it boots in 1970 until NTP). Provisioning
refuses to claim with such a clock too (``provisioning.claim.check_clock_floor``)."""
CLOCK_SKEW_WARN_S = 5.0
"""Warn when the device is this far off the fleet's clock (includes the one-way command latency)."""
CLOCK_SKEW_FAIL_S = 60.0
"""Fail from this far off: TLS validity windows and log timelines break."""

# -- disk --------------------------------------------------------------------------------------
DISK_MIN_FREE_BYTES = 200 * 1024 * 1024
"""Fail below this much free space where the state lives (logs, spool, OTA staging), whatever the
filesystem's size."""
DISK_FAIL_FREE = 0.05
"""Fail below this fraction free (default of ``[diagnostics] disk_fail_free``)."""
DISK_WARN_FREE = 0.10
"""Warn below this fraction free (default of ``[diagnostics] disk_warn_free``)."""

# -- microphone --------------------------------------------------------------------------------
MIC_DEAD_DBFS = -90.0
"""At or below: digital silence, the microphone is dead or muted (the self-test, nobody near)."""
MIC_SPEECH_MIN_DBFS = -60.0
"""At or below while a person speaks near it: silence (the doctor asks someone to speak; a quiet
room alone reads lower than this, so the unattended self-test uses ``MIC_DEAD_DBFS``)."""
MIC_CLIP_DBFS = -0.5
"""Peaks at or above: clipping, the capture gain is too high."""
MIC_NOISE_FLOOR_DBFS = -35.0
"""A noise floor (10th percentile of 10 ms levels) above this is high."""

# -- camera ------------------------------------------------------------------------------------
CAMERA_UNIFORM_STD = 2.0
"""Luma standard deviation below this: a uniform frame, lens covered or sensor dead."""
CAMERA_DARK_LUMA = 12.0
"""Mean luma below this: nearly black (lens covered or the scene too dark)."""
CAMERA_SATURATED_LUMA = 245.0
"""Mean luma above this: saturated."""
CAMERA_STALE_S = 2.0
"""The newest frame older than this: the camera stalled."""
