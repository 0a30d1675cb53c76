"""What the audio factory needs to build a microphone and a speaker (plain values, no agent types).

``device_agent.config.AudioSection`` extends this dataclass with the ``[audio]`` validation, so a
config section is passed to ``hal.audio.factory`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AudioSettings:
    backend: str = "synthetic"  # synthetic | wav | alsa
    device: str = "default"  # ALSA capture PCM name
    wav_path: str = ""
    rate: int = 16000  # device rate; the pipeline resamples to 16 kHz
    channels: int = 1
    period_ms: int = 10
    playback_device: str = ""  # ALSA PCM for talkback; empty disables playback
    playback_rate: int = 48000
    playback_channels: int = 1
    playback_queue_ms: int = 200  # talkback queued beyond this is dropped (counted)
    reopen_min_s: float = 0.5  # ALSA device missing/lost: first retry after this...
    reopen_max_s: float = 30.0  # ...doubling up to this
    synthetic_seed: int = 0  # the synthetic microphone's signal is a function of this seed
    synthetic_delay_ms: int = (
        0  # the synthetic microphone delivers each period this much late (dated at capture)
    )
    synthetic_clock_ppm: float = 0.0  # the synthetic microphone's sample clock this much fast (- slow)
    offset_ms: float = 0.0  # added to the microphone's capture times (A/V calibration; + = audio later)
