"""Alert rules: hold time, hysteresis, no flood from a flapping value; system metrics provider."""

from __future__ import annotations

import os
from pathlib import Path

from device_agent.config import AlertRule
from device_agent.fleetlink.rules import RuleEngine, lookup
from device_agent.health.system import SystemMetrics
from device_agent.registry import AlertBus


def _engine(**kw) -> tuple[RuleEngine, list]:
    bus = AlertBus()
    seen: list = []
    bus.subscribe(lambda a: seen.append((a.code, a.active)))
    rule = AlertRule(code="hot", metric="system.temperature_c", op=">", threshold=80.0, **kw)
    return RuleEngine([rule], bus), seen


def test_hold_time_and_hysteresis() -> None:
    eng, seen = _engine(clear_threshold=70.0, hold_s=10.0, severity="P2")
    s = lambda v: {"system": {"temperature_c": v}}  # noqa: E731
    eng.evaluate(s(85), 0)
    eng.evaluate(s(85), 5)
    assert seen == []  # not held long enough
    eng.evaluate(s(85), 10)
    assert seen == [("hot", True)]
    eng.evaluate(s(75), 20)  # under threshold, above clear threshold
    eng.evaluate(s(75), 40)
    assert seen == [("hot", True)]
    eng.evaluate(s(65), 50)
    eng.evaluate(s(65), 60)
    assert seen == [("hot", True), ("hot", False)]


def test_flapping_value_does_not_flood() -> None:
    eng, seen = _engine(clear_threshold=70.0, hold_s=5.0)
    for t in range(0, 200):
        eng.evaluate({"system": {"temperature_c": 85 if t % 2 else 79}}, float(t))
    assert seen == []
    eng2, seen2 = _engine(clear_threshold=70.0, hold_s=0.0)
    for t in range(0, 200):
        eng2.evaluate({"system": {"temperature_c": 81 if t % 2 else 75}}, float(t))
    assert seen2 == [("hot", True)]  # hysteresis band holds it raised


def test_missing_metric_keeps_state_and_replace_clears_removed() -> None:
    eng, seen = _engine()
    eng.evaluate({"system": {"temperature_c": 90}}, 0)
    eng.evaluate({}, 1)
    eng.evaluate({"system": {"temperature_c": "n/a"}}, 2)
    assert seen == [("hot", True)]
    eng.replace([])
    assert seen == [("hot", True), ("hot", False)]
    assert lookup({"a": {"b": [1, {"c": 2}]}}, "a.b.1.c") == 2 and lookup({}, "x.y") is None


def test_system_metrics_from_a_fake_tree(tmp_path: Path) -> None:
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (proc / "net").mkdir(parents=True)
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    (proc / "loadavg").write_text("0.50 0.40 0.30 1/100 123\n")
    (proc / "meminfo").write_text("MemTotal: 4000000 kB\nMemFree: 100 kB\nMemAvailable: 1000000 kB\n")
    (proc / "uptime").write_text("12345.6 100.0\n")
    (proc / "net/wireless").write_text(
        "Inter-| sta-|   Quality\n face | tus | link level noise\n"
        " wlan0: 0000   54.  -56.  -256        0      0      0\n"
    )
    (sys_ / "class/thermal/thermal_zone0").mkdir(parents=True)
    (sys_ / "class/thermal/thermal_zone0/temp").write_text("61234\n")
    (sys_ / "devices/platform/soc/soc:firmware").mkdir(parents=True)
    (sys_ / "devices/platform/soc/soc:firmware/get_throttled").write_text("50005\n")
    m = SystemMetrics(disk_path=str(tmp_path), proc=str(proc), sys=str(sys_), version="1.2.3", slot="b")
    m()
    (proc / "stat").write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")
    s = m()
    assert s["cpu_pct"] == 50.0 and s["load"] == [0.5, 0.4, 0.3]
    assert s["mem_used_pct"] == 75.0 and s["temperature_c"] == 61.2 and s["uptime_s"] == 12346
    assert s["throttled"] == 0x50005
    assert s["throttle_flags"] == [
        "under_voltage",
        "throttled",
        "under_voltage_occurred",
        "throttled_occurred",
    ]
    assert s["wifi_rssi_dbm"] == -56 and s["wifi_iface"] == "wlan0"
    assert s["disk_free_mb"] > 0 and s["version"] == "1.2.3" and s["slot"] == "b"
    empty = SystemMetrics(proc=str(tmp_path / "none"), sys=str(tmp_path / "none"))()
    assert "temperature_c" not in empty and "wifi_rssi_dbm" not in empty and "uptime_s" in empty
    assert os.path.exists("/proc/stat")
