"""`device-agent ns denoise` on WAVs at several rates, and `ns bench`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from device_agent.cli import main

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_denoise_any_rate(tmp_path: Path, rate: int) -> None:
    x, _ = sf.read(DATA / "ns_noisy_5db.wav", dtype="float32")
    x = resample_poly(x, rate, 16000) if rate != 16000 else x
    stereo = np.stack([x, np.zeros_like(x)], axis=1)  # first channel is used
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, stereo, rate)
    assert main(["ns", "denoise", str(src), str(dst)]) == 0
    y, r = sf.read(dst, dtype="float32")
    assert r == rate and y.ndim == 1 and len(y) == len(x)
    # time-aligned to the input (latency compensated) and not silent
    assert np.corrcoef(x, y)[0, 1] > 0.5


def test_denoise_bad_input_is_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage")
    assert main(["ns", "denoise", str(bad), str(tmp_path / "o.wav")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_bench_prints_rtf(capsys) -> None:
    assert main(["ns", "bench", "--seconds", "1"]) == 0
    assert "RTF" in capsys.readouterr().out
