"""System checks: clock (and NTP), disk, temperature, throttling. Each takes its measurements as
arguments (or reads them itself, cheaply) and returns one ``Check``; blocking probes are plain
functions the caller runs in a thread."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path
from typing import Any

from device_agent.checks.result import FAIL, PASS, SKIP, WARN, Check
from device_agent.checks.thresholds import (
    CLOCK_FLOOR,
    CLOCK_SKEW_FAIL_S,
    CLOCK_SKEW_WARN_S,
    DISK_FAIL_FREE,
    DISK_MIN_FREE_BYTES,
    DISK_WARN_FREE,
)

NTP_FIX = "connect the device to a network with NTP, or set the date (timedatectl set-time)"


def ntp_synchronized() -> bool | None:
    """``timedatectl``'s NTPSynchronized (blocking); None where there is no timedatectl or no answer."""
    exe = shutil.which("timedatectl")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"yes": True, "no": False}.get(out.stdout.strip())


def check_clock(
    now: float, ntp: bool | None, fleet_ts: float | None = None, not_before: dt.datetime | None = None
) -> Check:
    """The clock is after ``CLOCK_FLOOR``, after ``not_before`` (the device certificate's start,
    when known), within ``CLOCK_SKEW_*_S`` of ``fleet_ts`` (when the fleet sent its time) and NTP
    synchronised (``ntp`` from :func:`ntp_synchronized`; False warns, None is not known)."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    shown = f"{t:%Y-%m-%d %H:%M} UTC"
    value: dict[str, Any] = {"device_ts": round(now, 3), "ntp_synchronized": ntp}
    if t < CLOCK_FLOOR:
        return Check(
            "clock", FAIL, f"the clock says {shown}, which cannot be right: never synced", value, NTP_FIX
        )
    if not_before is not None and t < not_before:
        return Check(
            "clock",
            FAIL,
            f"the clock ({shown}) is before the certificate was issued",
            value,
            "fix the time (NTP): TLS will fail until then",
        )
    if fleet_ts is not None:
        skew = now - fleet_ts
        value["skew_vs_fleet_s"] = round(skew, 3)  # includes the one-way command latency
        if abs(skew) > CLOCK_SKEW_WARN_S:
            return Check(
                "clock",
                FAIL if abs(skew) > CLOCK_SKEW_FAIL_S else WARN,
                f"{skew:+.1f} s off the fleet's clock",
                value,
                NTP_FIX,
            )
    if ntp is False:
        return Check("clock", WARN, f"{shown}, NTP not synchronised yet", value, NTP_FIX)
    return Check("clock", PASS, shown + (", NTP synchronised" if ntp else ""), value)


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent (the state dir may not exist yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(
    path: Path,
    fail_free: float = DISK_FAIL_FREE,
    warn_free: float = DISK_WARN_FREE,
    min_free_bytes: int = DISK_MIN_FREE_BYTES,
) -> Check:
    """Free space on ``path``'s filesystem: fail under ``min_free_bytes`` or the ``fail_free``
    fraction, warn under ``warn_free``."""
    probe = existing_ancestor(path)
    usage = shutil.disk_usage(probe)
    free = usage.free / usage.total if usage.total else 0.0
    mb = usage.free / 1e6
    value = {
        "path": str(probe),
        "free_bytes": usage.free,
        "total_bytes": usage.total,
        "free_pct": round(100 * free, 1),
    }
    if usage.free < min_free_bytes or free < fail_free:
        return Check(
            "disk",
            FAIL,
            f"only {mb:.0f} MB ({100 * free:.1f} %) free on {probe}",
            value,
            f"free space: remove old recordings or logs (device-agent needs "
            f"{min_free_bytes // (1024 * 1024)} MB and {100 * fail_free:g} % free)",
        )
    if free < warn_free:
        return Check(
            "disk",
            WARN,
            f"{mb:.0f} MB ({100 * free:.1f} %) free on {probe}: getting low",
            value,
            "free space: remove old recordings or logs",
        )
    return Check("disk", PASS, f"{mb:.0f} MB ({100 * free:.1f} %) free on {probe}", value)


def check_temperature(thermal_path: str, warn_c: float, fail_c: float) -> Check:
    """The SoC temperature from a sysfs thermal zone (millidegrees); skip where there is none."""
    try:
        temp_c = int(Path(thermal_path).read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return Check("temperature", SKIP, f"no thermal zone at {thermal_path}")
    status = FAIL if temp_c >= fail_c else WARN if temp_c >= warn_c else PASS
    return Check(
        "temperature",
        status,
        f"SoC at {temp_c:.1f} C",
        {"celsius": temp_c},
        "" if status == PASS else "check the cooling and the enclosure's airflow",
    )


def read_throttled() -> int | None:
    """``vcgencmd get_throttled``'s value (blocking); None off a Raspberry Pi."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "get_throttled"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        return int(out.strip().split("=")[-1], 16)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


_THROTTLE_BITS = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
    16: "since boot: under-voltage",
    17: "since boot: frequency capped",
    18: "since boot: throttled",
    19: "since boot: soft temperature limit",
}


def throttle_flags(value: int) -> list[str]:
    """Human names of the bits set in ``vcgencmd get_throttled``'s value."""
    return [text for bit, text in _THROTTLE_BITS.items() if value & (1 << bit)]


def check_throttling(throttled: int | None) -> Check:
    """Fail while throttled (or under-voltage) now, warn when it happened since boot."""
    if throttled is None:
        return Check("throttling", SKIP, "no vcgencmd (not a Raspberry Pi)")
    flags = throttle_flags(throttled)
    now = [f for f in flags if not f.startswith("since boot")]
    status = FAIL if now else WARN if flags else PASS
    return Check(
        "throttling",
        status,
        ", ".join(flags) or "never throttled",
        {"raw": hex(throttled), "flags": flags},
        "" if status == PASS else "use the official power supply; check the cooling",
    )
