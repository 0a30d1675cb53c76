"""Sample format helpers: channel mapping, whole-file and streaming rate conversion, levels."""

from __future__ import annotations

import numpy as np
import pytest

from hal.audio.convert import StreamResampler, convert_channels, resample_whole
from hal.audio.level import LevelMeter


def test_channel_mapping() -> None:
    mono = np.array([[1], [2], [-3]], dtype=np.int16)
    assert np.array_equal(convert_channels(mono, 2), [[1, 1], [2, 2], [-3, -3]])
    stereo = np.array([[100, 200], [-32768, -32768], [32767, 32767]], dtype=np.int16)
    assert np.array_equal(convert_channels(stereo, 1)[:, 0], [150, -32768, 32767])
    quad = np.arange(8, dtype=np.int16).reshape(2, 4)
    assert np.array_equal(convert_channels(quad, 2), [[0, 1], [4, 5]])
    assert np.array_equal(convert_channels(stereo, 3), stereo[:, [0, 1, 0]])


def tone(rate: int, hz: float, seconds: float, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.int16)[:, None]


def peak_hz(x: np.ndarray, rate: int) -> float:
    x = x[:, 0].astype(np.float64)
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(x.size))))) * rate / x.size


@pytest.mark.parametrize(
    ("rate_in", "rate_out"), [(48000, 16000), (16000, 48000), (44100, 48000), (48000, 22050)]
)
def test_streaming_resampler_is_seamless(rate_in: int, rate_out: int) -> None:
    x = tone(rate_in, 440, 1.0)
    whole = StreamResampler(rate_in, rate_out, 1).process(x)
    chunked_rs = StreamResampler(rate_in, rate_out, 1)
    sizes = np.random.default_rng(0).integers(1, 2000, 200)
    parts, pos = [], 0
    for n in sizes:
        parts.append(chunked_rs.process(x[pos : pos + n]))
        pos += n
        if pos >= x.shape[0]:
            break
    chunked = np.concatenate(parts)
    # chunk boundaries change nothing: the state carries across them
    assert np.abs(chunked.astype(int) - whole.astype(int)).max() <= 1
    assert 0 <= rate_out - whole.shape[0] <= rate_out // rate_in + 1  # the last step is held
    assert abs(peak_hz(whole[2000:], rate_out) - 440) < 2
    rms = np.sqrt(np.mean(whole[2000:].astype(np.float64) ** 2))
    assert rms == pytest.approx(8000 / np.sqrt(2), rel=0.03)


def test_downsampling_removes_what_cannot_be_represented() -> None:
    x = tone(48000, 12000, 1.0)  # above the 8 kHz Nyquist of 16 kHz: must not alias to 4 kHz
    y = StreamResampler(48000, 16000, 1).process(x)
    assert np.sqrt(np.mean(y[1000:].astype(np.float64) ** 2)) < 8000 / np.sqrt(2) * 0.03


def test_resample_whole() -> None:
    y = resample_whole(tone(44100, 1000, 0.5), 44100, 16000)
    assert y.shape == (8000, 1) and abs(peak_hz(y, 16000) - 1000) < 3


def test_level_meter_window() -> None:
    meter = LevelMeter(window_periods=2)
    assert meter.levels() == (-120.0, -120.0)
    meter.update(np.full((160, 1), 32767, dtype=np.int16))
    assert meter.levels() == pytest.approx((0.0, 0.0), abs=0.01)
    meter.update(np.zeros((160, 1), dtype=np.int16))
    meter.update(np.zeros((160, 1), dtype=np.int16))  # the loud period left the window
    assert meter.levels() == (-120.0, -120.0)
