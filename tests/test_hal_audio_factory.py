"""create_source / create_sink from the [audio] config section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device_agent.config import ConfigError, config_from_dict
from hal.audio.alsa import AlsaCapture, AlsaPlayback
from hal.audio.factory import create_sink, create_source
from hal.audio.synthetic import SyntheticSource
from hal.audio.wavfile import WavFileSource
from tests.support.alsa import AlsaTestConfig


def test_default_is_the_synthetic_microphone_without_a_speaker() -> None:
    audio = config_from_dict({}).audio
    src = create_source(audio)
    assert isinstance(src, SyntheticSource)
    assert (src.rate, src.channels, src.period_frames) == (16000, 1, 160)
    assert create_sink(audio) is None


def test_synthetic_seed_and_period_follow_config() -> None:
    audio = config_from_dict(
        {"audio": {"rate": 48000, "channels": 2, "period_ms": 20, "synthetic_seed": 7}}
    ).audio
    a, b = create_source(audio), create_source(audio)
    assert a.period_frames == 960 and a.channels == 2
    assert np.array_equal(a._render(960), b._render(960))


async def test_wav_backend(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(1600, dtype=np.int16), 8000)
    audio = config_from_dict({"audio": {"backend": "wav", "wav_path": str(path)}}).audio
    src = create_source(audio)
    assert isinstance(src, WavFileSource)
    await src.start()
    chunk = await src.read()
    await src.stop()
    assert chunk.samples.shape == (160, 1) and chunk.rate == 16000


async def test_alsa_backend_and_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alsa = AlsaTestConfig(tmp_path / "alsa")
    alsa.add_capture("mic", np.arange(441 * 10, dtype=np.int16))
    out = alsa.add_playback("spk")
    alsa.write()
    alsa.activate(monkeypatch)
    states = []
    audio = config_from_dict(
        {
            "audio": {
                "backend": "alsa",
                "device": "mic",
                "rate": 44100,
                "playback_device": "spk",
                "playback_rate": 16000,
                "playback_channels": 2,
                "reopen_min_s": 0.1,
                "reopen_max_s": 1.0,
            }
        }
    ).audio
    src = create_source(audio, on_state=lambda a, m: states.append(a))
    sink = create_sink(audio)
    assert isinstance(src, AlsaCapture) and isinstance(sink, AlsaPlayback)
    assert src.period_frames == 441 and sink.period_frames == 160 and sink.channels == 2
    await src.start()
    await sink.start()
    try:
        chunk = await src.read()
        await sink.write(chunk)  # 44.1 kHz mono in, 16 kHz stereo out
        assert await sink.drain()
    finally:
        await src.stop()
        await sink.stop()
    assert np.array_equal(chunk.samples[:, 0], np.arange(441))
    assert np.fromfile(out, dtype="<i2").size == 2 * 160
    assert states == []  # the device was there all along: nothing to report


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        ({"playback_channels": 0}, "audio.playback_channels: must be 1..8"),
        ({"playback_rate": 12345}, "audio.playback_rate: unsupported rate 12345"),
        ({"reopen_min_s": 5.0, "reopen_max_s": 1.0}, "audio.reopen_min_s"),
        ({"playback_queue_ms": 5}, "audio.playback_queue_ms: must be 20..5000"),
        ({"synthetic_seed": "x"}, "audio.synthetic_seed: expected an integer"),
    ],
)
def test_new_keys_are_validated(audio: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"audio": audio})
