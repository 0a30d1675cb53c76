"""WavFileSource: exact looping, format conversion, real-time pacing, clear errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hal.audio.base import AudioSourceError
from hal.audio.wavfile import WavFileSource


async def test_loops_the_file_exactly(tmp_path: Path) -> None:
    path = tmp_path / "ramp.wav"
    data = np.arange(-1000, 1000, dtype=np.int16)  # 2000 frames, not a multiple of the period
    sf.write(path, data, 16000, subtype="PCM_16")
    src = WavFileSource(path, 16000, 1, 160)
    await src.start()
    try:
        chunks = [await src.read() for _ in range(30)]  # 4800 frames: 2.4 loops
    finally:
        await src.stop()
    got = np.concatenate([c.samples[:, 0] for c in chunks])
    assert np.array_equal(got, np.tile(data, 3)[:4800])
    stats = src.stats()
    assert stats["loops"] == 2 and stats["file_rate"] == 16000 and stats["file_channels"] == 1


async def test_converts_rate_and_channels(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    t = np.arange(48000) / 48000
    left = 0.25 * np.sin(2 * np.pi * 1000 * t)
    sf.write(path, np.stack([left, left], axis=1), 48000, subtype="PCM_24")
    src = WavFileSource(path, 16000, 1, 1600)
    await src.start()
    try:
        chunk = await src.read()
    finally:
        await src.stop()
    assert chunk.samples.shape == (1600, 1) and chunk.rate == 16000
    x = chunk.samples[200:1400, 0].astype(np.float64)
    peak_hz = np.argmax(np.abs(np.fft.rfft(x * np.hanning(x.size)))) * 16000 / x.size
    assert abs(peak_hz - 1000) < 15
    assert np.sqrt(np.mean(x**2)) == pytest.approx(0.25 * 32767 / np.sqrt(2), rel=0.03)
    assert src.stats()["file_rate"] == 48000 and src.stats()["file_channels"] == 2


async def test_mono_file_to_stereo_and_pacing(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    rng = np.random.default_rng(1)
    sf.write(path, rng.integers(-2000, 2000, 8000, dtype=np.int16), 16000)
    src = WavFileSource(path, 16000, 2, 320)
    await src.start()
    ts, delivered = [], []
    try:
        for _ in range(25):
            c = await src.read()
            ts.append(c.timestamp)
            delivered.append(time.monotonic())
            assert np.array_equal(c.samples[:, 0], c.samples[:, 1])
    finally:
        await src.stop()
    ts_a = np.array(ts)
    assert np.allclose(np.diff(ts_a), 0.02, rtol=0, atol=1e-9)
    assert (np.array(delivered) - (ts_a + 0.02)).min() >= -0.002  # never early
    assert delivered[-1] - delivered[0] >= 24 * 0.02 - 0.002


@pytest.mark.parametrize("content", [None, b"not a wav file at all", b""])
async def test_bad_file_is_a_clear_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    src = WavFileSource(path, 16000, 1, 160)
    with pytest.raises(AudioSourceError, match="bad.wav"):
        await src.start()
