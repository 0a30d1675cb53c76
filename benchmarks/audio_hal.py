"""Audio HAL costs: CPU per second of audio for the synthetic source, ALSA capture and ALSA
playback (through ALSA's file/null plugins, unpaced, so the figures are pure overhead).

Run: .venv/bin/python -m benchmarks.audio_hal
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from hal.audio.alsa import AlsaCapture, AlsaPlayback
from hal.audio.base import AudioChunk
from hal.audio.synthetic import SyntheticSource
from tests.support.alsa import AlsaTestConfig


def _row(name: str, audio_s: float, cpu_s: float, wall_s: float) -> None:
    print(
        f"{name:<42} audio {audio_s:6.1f} s  cpu {cpu_s * 1000:7.1f} ms  "
        f"cpu/audio {cpu_s / audio_s * 100:6.3f} %  (x{audio_s / wall_s:,.0f} real time)"
    )


def bench_synthetic(rate: int, channels: int, seconds: float) -> None:
    period = rate // 100
    src = SyntheticSource(rate, channels, period, seed=1)
    n = int(seconds * 100)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        src._render(period)
    _row(
        f"synthetic render {rate} Hz x{channels}, 10 ms",
        seconds,
        time.process_time() - c0,
        time.perf_counter() - w0,
    )


async def bench_capture(alsa: AlsaTestConfig, rate: int, seconds: float) -> None:
    period = rate // 100
    n = int(seconds * 100)
    alsa.add_capture("bmic", np.zeros(period * n, dtype=np.int16))
    alsa.write()
    mic = AlsaCapture("bmic", rate, 1, period)
    await mic.start()
    await mic.read()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await mic.read()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    await mic.stop()
    _row(f"ALSA capture {rate} Hz mono, 10 ms periods", seconds, cpu, wall)


async def bench_playback(alsa: AlsaTestConfig, rate: int, seconds: float) -> None:
    period = rate // 100
    n = int(seconds * 100)
    alsa.add_playback("bspk")
    alsa.write()
    spk = AlsaPlayback("bspk", rate, 1, period, queue_ms=1000)
    await spk.start()
    chunk = AudioChunk(np.zeros((period * 2, 2), dtype=np.int16), rate, 0.0)  # 20 ms stereo
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n // 2):
        await spk.write(chunk)
        if i % 20 == 19:
            await spk.drain()
    await spk.drain()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    await spk.stop()
    _row(f"ALSA playback {rate} Hz, 20 ms stereo->mono", seconds, cpu, wall)


async def main() -> None:
    bench_synthetic(16000, 1, 60)
    bench_synthetic(48000, 2, 20)
    with tempfile.TemporaryDirectory() as tmp:
        alsa = AlsaTestConfig(Path(tmp))
        os.environ.update(alsa.env)
        await bench_capture(alsa, 16000, 60)
        await bench_capture(alsa, 48000, 60)
        await bench_playback(alsa, 48000, 60)


if __name__ == "__main__":
    asyncio.run(main())
