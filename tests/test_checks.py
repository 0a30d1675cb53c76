"""The checks library shared by `device-agent doctor` and `diag.selftest` (device_agent/checks):
one Check type, one function per check, one set of thresholds (the stricter where they differed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from device_agent import checks
from device_agent.checks import FAIL, PASS, SKIP, WARN
from device_agent.checks import thresholds as th
from device_agent.config import AgentConfig, DiagnosticsSection, config_from_dict
from device_agent.diag import results
from provisioning import claim, doctor


def test_one_check_type_and_one_clock_floor() -> None:
    assert doctor.Check is results.Check is checks.Check
    assert claim.CLOCK_FLOOR is th.CLOCK_FLOOR
    c = checks.Check("x", FAIL, "broken", {"n": 1}, fix="mend it")
    assert c.to_dict() == {
        "name": "x",
        "status": FAIL,
        "detail": "broken",
        "value": {"n": 1},
    }  # self-test shape
    assert doctor.as_json([c])["checks"] == [
        {"name": "x", "status": FAIL, "detail": "broken", "fix": "mend it"}
    ]


def test_disk_thresholds_are_shared_and_the_stricter_ones() -> None:
    d = DiagnosticsSection()
    assert (d.disk_fail_free, d.disk_warn_free) == (th.DISK_FAIL_FREE, th.DISK_WARN_FREE) == (0.05, 0.10)
    assert th.DISK_MIN_FREE_BYTES == 200 * 1024 * 1024
    here = checks.check_disk(Path(__file__).parent)
    assert here.status in (PASS, WARN, FAIL) and here.value["free_bytes"] > 0
    # nearest parent
    assert checks.check_disk(Path("/no/such/dir/below"), min_free_bytes=1 << 62).status == FAIL
    assert checks.check_disk(Path("/"), fail_free=0.0, warn_free=0.99999, min_free_bytes=0).status == WARN
    full = checks.check_disk(Path("/"), fail_free=0.9999)
    assert full.status == FAIL and "needs 200 MB and 99.99 % free" in full.fix


async def test_doctor_and_selftest_judge_the_disk_alike(tmp_path: Path) -> None:
    from device_agent.diag.selftest import SelfTest

    cfg = config_from_dict(
        {
            "device": {"state_dir": str(tmp_path / "state")},
            "diagnostics": {"disk_warn_free": 0.99999, "disk_fail_free": 0.0},
        }
    )
    (mine,) = await SelfTest(cfg, None, None).disk()
    line = await doctor.check_disk(cfg)
    assert mine.status == WARN and line.status == PASS  # the doctor shows a warning as a passing line
    assert line.name == "Disk" and line.detail == mine.detail


def test_clock() -> None:
    now = time.time()
    assert checks.check_clock(86400.0, True).status == FAIL  # 1970: never synced
    assert "cannot be right" in checks.check_clock(86400.0, None).detail
    assert checks.check_clock(now, None).status == PASS
    assert checks.check_clock(now, False).status == WARN
    assert checks.check_clock(now, True, fleet_ts=now - 10).status == WARN
    assert checks.check_clock(now, True, fleet_ts=now - 120).status == FAIL
    late = checks.check_clock(now, True, not_before=th.CLOCK_FLOOR.replace(year=2999))
    assert late.status == FAIL and "before the certificate" in late.detail


async def test_doctor_clock_line_passes_when_ntp_is_not_synchronised_yet(tmp_path: Path) -> None:
    cfg = AgentConfig()
    cfg.device.state_dir = str(tmp_path)
    line = await doctor.check_clock(cfg)
    assert line.name == "Clock" and line.status == PASS
    old = await doctor.check_clock(cfg, now=86400.0)
    assert old.status == FAIL and old.fix


def test_microphone() -> None:
    assert checks.check_mic_level(-95, -80, -100).status == FAIL  # digital silence
    assert checks.check_mic_level(-40, -20, -60).status == PASS
    # clipping from -0.5 dBFS (doctor: was 0 dBFS)
    assert checks.check_mic_level(-40, -0.3, -60).status == WARN
    assert checks.check_mic_level(-40, -20, -30).status == WARN  # noisy floor
    # the doctor, with a person speaking, fails from -60 dBFS; an unattended quiet room is not dead
    assert checks.check_mic_level(-65, -50, min_level_dbfs=th.MIC_SPEECH_MIN_DBFS).status == FAIL
    assert checks.check_mic_level(-65, -50).status == PASS


def test_camera_uniform_frame_fails_for_both() -> None:
    frame = {"width": 320, "height": 240, "brightness": 100.0, "contrast": 1.5}
    # was a pass for the doctor (std >= 1) and a warning for the self-test (std < 2)
    assert checks.check_camera_frame(frame).status == FAIL
    assert checks.check_camera_frame({**frame, "contrast": 0.0, "brightness": 3.0}).status == FAIL  # lens cap
    assert checks.check_camera_frame({**frame, "contrast": 5.0, "brightness": 5.0}).status == WARN
    assert checks.check_camera_frame({**frame, "contrast": 40.0}, age_s=3.0).status == FAIL
    ok = checks.check_camera_frame({**frame, "contrast": 40.0}, age_s=0.1)
    assert ok.status == PASS and "320x240" in ok.detail and ok.value["age_ms"] == 100.0


def test_temperature_and_throttling(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    assert checks.check_temperature(str(zone), 75, 82).status == SKIP
    zone.write_text("76000\n")
    assert checks.check_temperature(str(zone), 75, 82).status == WARN
    assert checks.check_throttling(None).status == SKIP
    assert checks.check_throttling(0).status == PASS
    assert checks.check_throttling(1 << 16).status == WARN and checks.check_throttling(0b101).status == FAIL
    assert checks.throttle_flags(0b101) == ["under-voltage", "throttled"]


def test_ntp_probe_answers_or_says_unknown() -> None:
    assert asyncio.run(asyncio.to_thread(checks.ntp_synchronized)) in (True, False, None)
