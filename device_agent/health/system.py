"""System metrics for the health sample: CPU, load, memory, temperature, throttling, disk, Wi-Fi.

Reads Linux files directly (``/proc``, ``/sys``); every root is overridable so tests can point it
at a fake tree. A file that does not exist leaves its field out rather than failing the sample.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

# Raspberry Pi firmware throttling bits (vcgencmd get_throttled / sysfs get_throttled)
THROTTLE_BITS = {
    0: "under_voltage",
    1: "freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


class SystemMetrics:
    """Callable health provider named ``system``; each call returns one compact sample."""

    def __init__(
        self, disk_path: str = "/", proc: str = "/proc", sys: str = "/sys", version: str = "", slot: str = ""
    ) -> None:
        self.proc = Path(proc)
        self.sys = Path(sys)
        self.disk_path = disk_path
        self.version = version
        self.slot = slot
        self._last_cpu: tuple[int, int] | None = None

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "slot": self.slot}
        cpu = self._cpu_percent()
        if cpu is not None:
            out["cpu_pct"] = cpu
        out.update(self._load())
        out.update(self._memory())
        out.update(self._temperature())
        out.update(self._throttled())
        out.update(self._disk())
        out.update(self._uptime())
        out.update(self._wifi())
        return out

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    def _cpu_percent(self) -> float | None:
        text = self._read(self.proc / "stat")
        if not text:
            return None
        fields = [int(x) for x in text.splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields[:8])
        last, self._last_cpu = self._last_cpu, (total, idle)
        if last is None or total == last[0]:
            return None if last is None else 0.0
        return round(100.0 * (1 - (idle - last[1]) / (total - last[0])), 1)

    def _load(self) -> dict[str, Any]:
        text = self._read(self.proc / "loadavg")
        if not text:
            return {}
        parts = text.split()
        return {"load": [float(parts[0]), float(parts[1]), float(parts[2])]}

    def _memory(self) -> dict[str, Any]:
        text = self._read(self.proc / "meminfo")
        if not text:
            return {}
        info = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if rest.strip():
                info[key] = int(rest.split()[0])
        total = info.get("MemTotal")
        avail = info.get("MemAvailable", info.get("MemFree"))
        if not total or avail is None:
            return {}
        return {
            "mem_total_mb": round(total / 1024),
            "mem_avail_mb": round(avail / 1024),
            "mem_used_pct": round(100.0 * (1 - avail / total), 1),
        }

    def _temperature(self) -> dict[str, Any]:
        text = self._read(self.sys / "class/thermal/thermal_zone0/temp")
        if not text or not text.strip().lstrip("-").isdigit():
            return {}
        return {"temperature_c": round(int(text.strip()) / 1000.0, 1)}

    def _throttled(self) -> dict[str, Any]:
        text = self._read(self.sys / "devices/platform/soc/soc:firmware/get_throttled")
        if not text or not text.strip():
            return {}
        try:
            value = int(text.strip(), 16)
        except ValueError:
            return {}
        return {"throttled": value, "throttle_flags": [n for b, n in THROTTLE_BITS.items() if value >> b & 1]}

    def _disk(self) -> dict[str, Any]:
        try:
            st = os.statvfs(self.disk_path)
        except OSError:
            return {}
        free = st.f_bavail * st.f_frsize
        total = st.f_blocks * st.f_frsize
        return {
            "disk_free_mb": round(free / 2**20),
            "disk_free_pct": round(100.0 * free / total, 1) if total else 0.0,
        }

    def _uptime(self) -> dict[str, Any]:
        text = self._read(self.proc / "uptime")
        if not text:
            return {"uptime_s": round(time.monotonic())}
        return {"uptime_s": round(float(text.split()[0]))}

    def _wifi(self) -> dict[str, Any]:
        text = self._read(self.proc / "net/wireless")
        if not text:
            return {}
        for line in text.splitlines()[2:]:
            parts = line.split()
            if len(parts) >= 4:
                try:
                    return {
                        "wifi_iface": parts[0].rstrip(":"),
                        "wifi_rssi_dbm": int(float(parts[3].rstrip("."))),
                    }
                except ValueError:
                    continue
        return {}
