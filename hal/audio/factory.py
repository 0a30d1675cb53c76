"""Builds the configured audio source and sink from ``AudioSettings`` (the agent's ``[audio]``)."""

from __future__ import annotations

from hal.audio.base import AudioSink, AudioSource
from hal.audio.settings import AudioSettings
from hal.availability import StateCallback


def period_frames(rate: int, period_ms: int) -> int:
    """Frames per period (rounded down for rates like 22050 Hz)."""
    return max(1, rate * period_ms // 1000)


def create_source(section: AudioSettings, on_state: StateCallback | None = None) -> AudioSource:
    """The microphone for ``section.backend``: ``synthetic``, ``wav`` or ``alsa``.

    ``on_state(available, message)`` (ALSA only) runs on the event loop when the device goes
    missing or comes back; the media component turns it into a P1 alert.
    """
    frames = period_frames(section.rate, section.period_ms)
    if section.backend == "synthetic":
        from hal.audio.synthetic import SyntheticSource

        return SyntheticSource(
            section.rate,
            section.channels,
            frames,
            seed=section.synthetic_seed,
            delay_s=section.synthetic_delay_ms / 1000,
            clock_ppm=section.synthetic_clock_ppm,
        )
    if section.backend == "wav":
        from hal.audio.wavfile import WavFileSource

        return WavFileSource(section.wav_path, section.rate, section.channels, frames)
    if section.backend == "alsa":
        from hal.audio.alsa import AlsaCapture

        return AlsaCapture(
            section.device,
            section.rate,
            section.channels,
            frames,
            on_state=on_state,
            reopen_min_s=section.reopen_min_s,
            reopen_max_s=section.reopen_max_s,
        )
    raise ValueError(f"audio.backend: unknown backend {section.backend!r}")


def create_sink(section: AudioSettings, on_state: StateCallback | None = None) -> AudioSink | None:
    """The talkback speaker on ``section.playback_device``; None when that is empty."""
    if not section.playback_device:
        return None
    from hal.audio.alsa import AlsaPlayback

    return AlsaPlayback(
        section.playback_device,
        section.playback_rate,
        section.playback_channels,
        period_frames(section.playback_rate, section.period_ms),
        queue_ms=section.playback_queue_ms,
        on_state=on_state,
        reopen_min_s=section.reopen_min_s,
        reopen_max_s=section.reopen_max_s,
    )
