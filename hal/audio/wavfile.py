"""A microphone that loops a WAV file, converted to the configured rate and channels, paced in
real time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hal.audio.base import AudioSourceError
from hal.audio.convert import convert_channels, resample_whole
from hal.audio.paced import PacedSource


def load_wav(path: str | Path, rate: int, channels: int) -> tuple[np.ndarray, int, int]:
    """Read a WAV (any rate, channels, PCM/float format) as int16 ``(frames, channels)`` at
    ``rate``; returns the samples and the file's own rate and channel count."""
    import soundfile as sf

    try:
        data, file_rate = sf.read(str(path), dtype="int16", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise AudioSourceError(f"cannot read WAV file {path}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioSourceError(f"WAV file {path} holds no audio")
    file_channels = int(data.shape[1])
    data = convert_channels(np.ascontiguousarray(data), channels)
    data = resample_whole(data, int(file_rate), rate)
    return np.ascontiguousarray(data), int(file_rate), file_channels


class WavFileSource(PacedSource):
    """Loops ``path`` forever. The file is decoded once at ``start()``; a file at another rate or
    channel count is converted (polyphase resampling; mono duplicated, channels averaged down)."""

    backend = "wav"

    def __init__(
        self,
        path: str | Path,
        rate: int = 16000,
        channels: int = 1,
        period_frames: int = 160,
        *,
        max_lag_s: float = 0.5,
    ) -> None:
        super().__init__(rate, channels, period_frames, max_lag_s=max_lag_s)
        self.path = Path(path)
        self._data: np.ndarray | None = None
        self._pos = 0
        self._loops = 0
        self.file_rate = 0
        self.file_channels = 0

    async def start(self) -> None:
        import asyncio

        self._data, self.file_rate, self.file_channels = await asyncio.to_thread(
            load_wav, self.path, self.rate, self.channels
        )
        self._pos = 0
        self._loops = 0
        await super().start()

    def _render(self, frames: int) -> np.ndarray:
        assert self._data is not None
        data = self._data
        out = np.empty((frames, self.channels), dtype=np.int16)
        filled = 0
        while filled < frames:
            n = min(frames - filled, data.shape[0] - self._pos)
            out[filled : filled + n] = data[self._pos : self._pos + n]
            filled += n
            self._pos += n
            if self._pos >= data.shape[0]:
                self._pos = 0
                self._loops += 1
        return out

    def stats(self) -> dict:
        out = super().stats()
        out.update(
            path=str(self.path), loops=self._loops, file_rate=self.file_rate, file_channels=self.file_channels
        )
        return out
