"""SyntheticSource: speech-like properties (offline, deterministic) and real-time pacing."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from hal.audio.base import AudioSourceError
from hal.audio.synthetic import SpeechSynth, SyntheticSource

RATE = 16000


def envelope(x: np.ndarray, hop: int) -> np.ndarray:
    frames = x[: x.size // hop * hop].reshape(-1, hop)
    return np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))


def modulation_octaves(env: np.ndarray, frame_rate: float) -> dict[float, float]:
    """Energy of the envelope's fluctuations per octave band (centre frequency -> energy)."""
    e = env - env.mean()
    power = np.abs(np.fft.rfft(e)) ** 2
    f = np.fft.rfftfreq(e.size, 1.0 / frame_rate)
    return {
        c: float(power[(f >= c / np.sqrt(2)) & (f < c * np.sqrt(2))].sum())
        for c in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    }


def pitch_track(x: np.ndarray, rate: int, frame: int = 640) -> np.ndarray:
    """F0 (autocorrelation peak, 70..400 Hz) of every frame louder than -35 dBFS."""
    f0 = []
    for i in range(0, x.size - frame, frame):
        seg = x[i : i + frame].astype(np.float64)
        if np.sqrt(np.mean(seg**2)) / 32768 < 10 ** (-35 / 20):
            continue
        seg -= seg.mean()
        ac = np.correlate(seg, seg, "full")[frame - 1 :]
        lo, hi = rate // 400, rate // 70
        f0.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return np.array(f0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_signal_is_speech_like(seed: int) -> None:
    x = SpeechSynth(RATE, seed=seed).render(RATE * 30)
    env = envelope(x, RATE // 100)
    bands = modulation_octaves(env, 100.0)
    assert max(bands, key=bands.get) == 4.0, bands  # energy modulated at the syllable rate
    silent = np.mean(20 * np.log10(env / 32768 + 1e-12) < -60)
    assert 0.05 < silent < 0.4  # pauses between phrases
    f0 = pitch_track(x, RATE)
    assert f0.size > 300
    assert 85 <= np.median(f0) <= 260  # voice range
    p10, p90 = np.percentile(f0, [10, 90])
    assert p90 / p10 > 1.15  # a pitch contour, not a monotone
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    assert spectrum[(f >= 80) & (f <= 4000)].sum() / spectrum.sum() > 0.95  # speech band
    active = env[env > 0]
    level = 20 * np.log10(np.sqrt(np.mean(active**2)) / 32768)
    assert -26 < level < -16 and np.abs(x).max() < 32767  # -20 dBFS-ish, never clipped


def test_deterministic_from_seed_whatever_the_period() -> None:
    src_a = SyntheticSource(RATE, 1, 160, seed=9)
    src_b = SyntheticSource(RATE, 1, 441, seed=9)
    a = np.concatenate([src_a._render(160) for _ in range(441)])
    b = np.concatenate([src_b._render(441) for _ in range(160)])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # identical up to float rounding
    c = np.concatenate([SyntheticSource(RATE, 1, 160, seed=10)._render(160) for _ in range(441)])
    assert not np.array_equal(a, c)


def test_channels_carry_the_same_signal() -> None:
    src = SyntheticSource(48000, 2, 480, seed=1)
    chunk = src._render(4800)
    assert chunk.shape == (4800, 2) and chunk.dtype == np.int16
    assert np.array_equal(chunk[:, 0], chunk[:, 1])


async def test_paced_in_real_time_by_the_monotonic_clock() -> None:
    period = 320  # 20 ms
    src = SyntheticSource(RATE, 1, period, seed=2)
    await src.start()
    chunks, delivered = [], []
    try:
        for _ in range(40):
            chunks.append(await src.read())
            delivered.append(time.monotonic())
    finally:
        await src.stop()
    p = period / RATE
    ts = np.array([c.timestamp for c in chunks])
    # timestamps come from the period index: exactly p apart, no accumulated error
    assert np.allclose(ts - ts[0], np.arange(40) * p, rtol=0, atol=1e-9)
    late = np.array(delivered) - (ts + p)  # delivery time after the chunk's last sample
    assert late.min() >= -0.002  # never handed out before it was "captured"
    assert np.median(late) < 0.05  # generous: a loaded CI box may wake late
    assert delivered[-1] - delivered[0] >= 39 * p - 0.002
    stats = src.stats()
    assert stats["periods"] == 40 and stats["overruns"] == 0
    assert -45 < stats["level_rms_dbfs"] < stats["level_peak_dbfs"] < 0


def test_no_drift_after_a_day() -> None:
    src = SyntheticSource(44100, 1, 441)
    src._t0 = 1000.0
    day = 24 * 3600 * 100  # periods of 10 ms in a day
    assert src._period_start(day) == pytest.approx(1000.0 + 24 * 3600, abs=1e-6)


async def test_stalled_reader_resumes_at_the_present() -> None:
    src = SyntheticSource(RATE, 1, 160, max_lag_s=0.2)
    await src.start()
    try:
        await src.read()
        await asyncio.sleep(0.35)
        chunk = await src.read()
        assert src.stats()["overruns"] == 1
        assert time.monotonic() - chunk.timestamp < 0.25
    finally:
        await src.stop()


async def test_stop_wakes_a_pending_read() -> None:
    src = SyntheticSource(RATE, 1, RATE)  # 1 s periods
    await src.start()
    pending = asyncio.create_task(src.read())
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await src.stop()
    with pytest.raises(AudioSourceError):
        await asyncio.wait_for(pending, 1.0)
    assert time.monotonic() - t0 < 0.5  # not the 1 s period
    with pytest.raises(AudioSourceError):
        await src.read()
