"""`device-agent doctor` hardware checks through the real HAL: ALSA (file/null plugin PCMs, no
sound card needed), the test-pattern camera, the shipped NS model; run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.support.alsa import AlsaTestConfig
from tests.test_prov_support import ROOT


def doctor(tmp: Path, alsa: AlsaTestConfig, *args: str) -> tuple[int, dict]:
    cfg = tmp / "agent.toml"
    cfg.write_text(f"""
[device]
state_dir = "{tmp / "state"}"

[audio]
backend = "alsa"
device = "mic"
rate = 16000
playback_device = "spk"
playback_rate = 48000

[camera]
backend = "test-pattern"
width = 320
height = 240
fps = 15
""")
    r = subprocess.run(
        [sys.executable, "-m", "device_agent.cli", "doctor", "--config", str(cfg), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **alsa.env},
    )
    return r.returncode, json.loads(r.stdout)


def test_doctor_hardware_checks_and_order(tmp_path: Path) -> None:
    alsa = AlsaTestConfig(tmp_path / "alsa")
    t = np.arange(3 * 16000) / 16000
    alsa.add_capture("mic", (0.1 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))
    out = alsa.add_playback("spk")
    alsa.write()
    rc, report = doctor(tmp_path, alsa)
    names = [c["name"] for c in report["checks"]]
    assert names == [
        "Identity",
        "Clock",
        "Broker",
        "Disk",
        "Noise suppression model",
        "Microphone",
        "Speaker",
        "Camera",
    ]  # hardware last
    by = {c["name"]: c for c in report["checks"]}
    assert rc == 1 and report["ok"] is False  # not provisioned
    assert by["Identity"]["status"] == "fail" and "provision" in by["Identity"]["fix"]
    assert by["Noise suppression model"]["status"] == "pass"
    assert by["Microphone"]["status"] == "pass", by["Microphone"]
    assert "-23 dBFS" in by["Microphone"]["detail"]  # a 0.1 FS sine is -23 dBFS RMS
    assert by["Speaker"]["status"] == "pass", by["Speaker"]
    assert by["Camera"]["status"] == "pass" and "320x240" in by["Camera"]["detail"]
    # the tone really went to the speaker: 1 kHz dominates what the PCM wrote
    played = np.fromfile(out, dtype="<i2").astype(np.float64)
    assert played.size >= 0.9 * 48000
    spectrum = np.abs(np.fft.rfft(played[: 48000 // 2 * 2]))
    peak_hz = np.argmax(spectrum) * 48000 / (played[: 48000 // 2 * 2].size)
    assert abs(peak_hz - 1000) < 5


def test_doctor_silent_microphone_fails_with_the_fix(tmp_path: Path) -> None:
    alsa = AlsaTestConfig(tmp_path / "alsa")
    alsa.add_capture("mic", np.zeros(3 * 16000, np.int16))
    alsa.add_playback("spk")
    alsa.write()
    rc, report = doctor(tmp_path, alsa)
    mic = next(c for c in report["checks"] if c["name"] == "Microphone")
    assert mic["status"] == "fail" and "silence" in mic["detail"] and "microphone" in mic["fix"]
    # no hardware: the three hardware lines are not run at all
    rc, report = doctor(tmp_path, alsa, "--no-hardware")
    assert [c["name"] for c in report["checks"]][-1] == "Noise suppression model"
