"""Sample format helpers: channel mapping and rate conversion for int16 audio."""

from __future__ import annotations

from math import gcd

import numpy as np


def to_int16(x: np.ndarray) -> np.ndarray:
    """Round and clip float samples in int16 units to int16."""
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def convert_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """Map ``(frames, c)`` samples to ``channels``: mono is duplicated, more to fewer is averaged.

    Going from c to n channels with 1 < n < c keeps the first n channels.
    """
    have = samples.shape[1]
    if have == channels:
        return samples
    if have == 1:
        return np.repeat(samples, channels, axis=1)
    if channels == 1:
        mixed = samples.astype(np.int32).sum(axis=1, keepdims=True)
        return np.round(mixed / have).astype(np.int16)
    if channels < have:
        return np.ascontiguousarray(samples[:, :channels])
    # 1 < have < channels: repeat the channels cyclically
    idx = np.arange(channels) % have
    return np.ascontiguousarray(samples[:, idx])


def resample_whole(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample a whole int16 ``(frames, channels)`` signal with a polyphase filter (scipy)."""
    if rate_in == rate_out:
        return samples
    from scipy.signal import resample_poly  # imported lazily: only WAV sources need it

    g = gcd(rate_in, rate_out)
    out = resample_poly(samples.astype(np.float64), rate_out // g, rate_in // g, axis=0)
    return to_int16(out)


class StreamResampler:
    """Streaming rate converter for int16 chunks: anti-alias low-pass (when going down) and
    linear interpolation, with state carried across chunks so there are no seams.

    Meant for talkback audio, where the source rate rarely differs from the sink's; speech-grade.
    """

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self.channels = channels
        self._step = rate_in / rate_out  # input samples per output sample
        self._pos = 0.0  # position of the next output sample, relative to self._prev
        self._prev: np.ndarray | None = None  # last input frame of the previous chunk
        self._sos = None
        self._zi = None
        if rate_out < rate_in:
            from scipy.signal import butter, sosfilt_zi

            self._sos = butter(8, 0.45 * rate_out, fs=rate_in, output="sos")
            zi = sosfilt_zi(self._sos)  # (sections, 2)
            self._zi = np.repeat(zi[:, :, None], channels, axis=2) * 0.0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Convert one ``(frames, channels)`` int16 chunk; output length varies by at most one."""
        if self.rate_in == self.rate_out:
            return samples
        x = samples.astype(np.float64)
        if self._sos is not None:
            from scipy.signal import sosfilt

            x, self._zi = sosfilt(self._sos, x, axis=0, zi=self._zi)
        if self._prev is None:
            buf = x
        else:
            buf = np.concatenate([self._prev, x], axis=0)
        n_in = buf.shape[0]
        # output positions (in buf coordinates) strictly before the last input frame
        count = max(0, int(np.ceil((n_in - 1 - self._pos) / self._step)))
        positions = self._pos + self._step * np.arange(count)
        i0 = np.floor(positions).astype(np.int64)
        frac = (positions - i0)[:, None]
        out = buf[i0] * (1.0 - frac) + buf[np.minimum(i0 + 1, n_in - 1)] * frac
        next_pos = self._pos + self._step * count
        self._prev = buf[-1:]
        self._pos = next_pos - (n_in - 1)
        return to_int16(out)
