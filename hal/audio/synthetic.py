"""A synthetic microphone: speech-like tone bursts, deterministic from a seed, paced in real time.

The signal imitates the features speech processing relies on, without recorded speech:

- voiced syllables built from harmonics of a fundamental (F0) whose spectrum is shaped by three
  vowel formants (Peterson & Barney averages) over a -6 dB/octave source tilt;
- a pitch contour: a per-speaker F0, declination across each phrase and a rise or fall within
  each syllable (closed-form phase, so it is click-free);
- syllables of 170-300 ms, i.e. energy modulated at ~4 Hz, some opening with a short fricative
  noise burst;
- phrases of 4-11 syllables separated by pauses of 200-500 ms (silence ~15 % of the time).

Like recorded speech, its envelope's modulation spectrum (octave bands) peaks at 4 Hz.

Everything is a function of the seed and the sample index: two sources with the same seed produce
the same samples whatever their period size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hal.audio.convert import to_int16
from hal.audio.paced import PacedSource

# (F1, F2, F3) in Hz, adult averages (Peterson & Barney 1952)
VOWEL_FORMANTS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
FORMANT_BANDWIDTHS = (90.0, 110.0, 170.0)
FORMANT_GAINS = (1.0, 0.6, 0.3)


@dataclass
class _Segment:
    length: int  # samples
    voiced: bool
    pos: int = 0
    f0_start: float = 0.0
    f0_ratio: float = 1.0  # f0_end / f0_start (exponential glide)
    phase0: float = 0.0
    amps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per harmonic
    noise: np.ndarray = field(default_factory=lambda: np.zeros(0))  # onset burst, full length

    def phase(self, idx: np.ndarray, rate: int) -> np.ndarray:
        """Closed-form phase of the fundamental at sample indices ``idx`` of this segment."""
        t = idx / self.length
        if abs(self.f0_ratio - 1.0) < 1e-9:
            return self.phase0 + 2 * np.pi * self.f0_start * idx / rate
        log_r = np.log(self.f0_ratio)
        return self.phase0 + 2 * np.pi * self.f0_start * self.length / (rate * log_r) * (
            np.power(self.f0_ratio, t) - 1.0
        )


class SpeechSynth:
    """Stateful generator of speech-like mono audio (float, int16 units)."""

    def __init__(
        self, rate: int, seed: int = 0, level_dbfs: float = -20.0, f0_hz: float | None = None
    ) -> None:
        self.rate = rate
        self._rng = np.random.default_rng(seed)
        self.f0_hz = float(f0_hz) if f0_hz else float(self._rng.uniform(100.0, 210.0))
        # RMS of a syllable's steady part, in int16 units; the envelope averages ~3 dB lower
        self._target_rms = 32768.0 * 10 ** ((level_dbfs + 3.0) / 20.0)
        self._max_harmonic_hz = min(5000.0, 0.45 * rate)
        self._syllables_left = 0
        self._phrase_len = 1
        self._phrase_f0 = self.f0_hz
        self._phase = 0.0
        self._seg: _Segment | None = None

    def _spectral_envelope(self, freqs: np.ndarray, formants: tuple[float, ...]) -> np.ndarray:
        env = np.full_like(freqs, 0.05)
        for f, bw, g in zip(formants, FORMANT_BANDWIDTHS, FORMANT_GAINS, strict=True):
            env += g / (1.0 + ((freqs - f) / (bw / 2.0)) ** 2)
        return env * (100.0 / np.maximum(freqs, 100.0))  # -6 dB/octave source tilt

    def _next_segment(self) -> _Segment:
        rng = self._rng
        if self._syllables_left <= 0 and self._seg is not None and self._seg.voiced:
            length = int(rng.uniform(0.2, 0.5) * self.rate)
            self._seg = _Segment(length=length, voiced=False)
            return self._seg
        if self._syllables_left <= 0:
            self._phrase_len = int(rng.integers(4, 12))
            self._syllables_left = self._phrase_len
            self._phrase_f0 = self.f0_hz * float(rng.uniform(0.92, 1.12))
        progress = 1.0 - self._syllables_left / self._phrase_len
        self._syllables_left -= 1
        length = int(rng.uniform(0.17, 0.30) * self.rate)
        f0_start = self._phrase_f0 * (1.0 - 0.18 * progress) * float(rng.uniform(0.95, 1.08))
        f0_ratio = float(rng.uniform(0.85, 1.15))
        vowel = VOWEL_FORMANTS[str(rng.choice(list(VOWEL_FORMANTS)))]
        f0_mean = f0_start * np.sqrt(f0_ratio)
        count = max(1, int(self._max_harmonic_hz / (f0_mean * max(1.0, f0_ratio))))
        harmonics = np.arange(1, count + 1, dtype=np.float64)
        amps = self._spectral_envelope(harmonics * f0_mean, vowel)
        amps *= self._target_rms * float(rng.uniform(0.75, 1.0)) / np.sqrt(np.sum(amps**2) / 2)
        noise = np.zeros(length)
        if rng.random() < 0.6:  # fricative-like onset burst
            burst = int(rng.uniform(0.02, 0.05) * self.rate)
            white = rng.standard_normal(burst + 1)
            hp = np.diff(white) / 2.0  # first difference: a gentle high-pass
            decay = np.linspace(1.0, 0.0, burst) ** 2
            noise[:burst] = hp * decay * self._target_rms * 0.35
        seg = _Segment(
            length=length,
            voiced=True,
            f0_start=f0_start,
            f0_ratio=f0_ratio,
            phase0=self._phase,
            amps=amps,
            noise=noise,
        )
        self._phase = float(seg.phase(np.array([length]), self.rate)[0] % (2 * np.pi))
        self._seg = seg
        return seg

    def render(self, frames: int) -> np.ndarray:
        """The next ``frames`` samples as float64 in int16 units (mono)."""
        out = np.zeros(frames)
        i = 0
        while i < frames:
            seg = self._seg
            if seg is None or seg.pos >= seg.length:
                seg = self._next_segment()
            n = min(frames - i, seg.length - seg.pos)
            if seg.voiced:
                idx = np.arange(seg.pos, seg.pos + n, dtype=np.float64)
                env = np.sin(np.pi * (idx + 0.5) / seg.length) ** 0.6
                phase = seg.phase(idx, self.rate)
                k = np.arange(1, seg.amps.size + 1, dtype=np.float64)[:, None]
                voiced = seg.amps @ np.sin(k * phase[None, :])
                out[i : i + n] = voiced * env + seg.noise[seg.pos : seg.pos + n]
            seg.pos += n
            i += n
        return out


class SyntheticSource(PacedSource):
    """Speech-like synthetic microphone for development and tests (see the module docstring)."""

    backend = "synthetic"

    def __init__(
        self,
        rate: int = 16000,
        channels: int = 1,
        period_frames: int = 160,
        *,
        seed: int = 0,
        level_dbfs: float = -20.0,
        f0_hz: float | None = None,
        max_lag_s: float = 0.5,
        delay_s: float = 0.0,
        clock_ppm: float = 0.0,
    ) -> None:
        super().__init__(
            rate, channels, period_frames, max_lag_s=max_lag_s, delay_s=delay_s, clock_ppm=clock_ppm
        )
        self.synth = SpeechSynth(rate, seed=seed, level_dbfs=level_dbfs, f0_hz=f0_hz)

    def _render(self, frames: int) -> np.ndarray:
        mono = to_int16(self.synth.render(frames))
        return np.repeat(mono[:, None], self.channels, axis=1)

    def stats(self) -> dict:
        out = super().stats()
        out["f0_hz"] = round(self.synth.f0_hz, 1)
        return out
