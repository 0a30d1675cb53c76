"""AlsaCapture / AlsaPlayback against real alsa-lib and pyalsaaudio, through ALSA's ``file`` and
``null`` plugins (tests/support/alsa.py): no sound card needed.

Two faults the null plugin cannot produce (an xrun, a device vanishing while open) are injected by
``FaultyPcm``, a thin wrapper around a real ``alsaaudio.PCM`` that, on one chosen call, returns
what pyalsaaudio 0.11 returns on an xrun (``-EPIPE``) or raises what it raises when a device is
unplugged (``ALSAAudioError``). Everything else, including every reopen, goes through real ALSA.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import alsaaudio
import numpy as np
import pytest

from hal.audio.alsa import AlsaCapture, AlsaPlayback
from hal.audio.base import AudioChunk, AudioSourceError
from tests.support.alsa import AlsaTestConfig

RATE = 16000
PERIOD = 160


@pytest.fixture
def alsa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlsaTestConfig:
    cfg = AlsaTestConfig(tmp_path / "alsa")
    cfg.write()
    cfg.activate(monkeypatch)
    return cfg


def ramp(frames: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Distinctive test audio: random int16 samples, ``(frames, channels)``."""
    rng = np.random.default_rng(seed)
    return rng.integers(-30000, 30000, size=(frames, channels), dtype=np.int16)


def alsa_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("alsa-")]


class FaultyPcm:
    """A real alsaaudio.PCM with one scripted fault (see the module docstring)."""

    def __init__(self, script: dict[str, Any], **kwargs: Any) -> None:
        self._pcm = alsaaudio.PCM(**kwargs)
        self._script = script

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pcm, name)

    def _fault(self, op: str) -> str | None:
        self._script[f"{op}_calls"] = self._script.get(f"{op}_calls", 0) + 1
        at = self._script.get(op)
        if at is not None and self._script[f"{op}_calls"] == at:
            return self._script["fault"]
        if self._script.get("fail_now"):
            self._script["fail_now"] = False
            return "unplug"
        return None

    def read(self) -> tuple[int, bytes]:
        fault = self._fault("read")
        if fault == "xrun":
            return -errno.EPIPE, b""
        if fault == "unplug":
            raise alsaaudio.ALSAAudioError("No such device [scripted unplug]")
        return self._pcm.read()

    def write(self, data: bytes) -> int:
        fault = self._fault("write")
        if fault == "xrun":
            return -errno.EPIPE
        if fault == "unplug":
            raise alsaaudio.ALSAAudioError("No such device [scripted unplug]")
        return self._pcm.write(data)


def faulty_factory(script: dict[str, Any]):
    return lambda **kwargs: FaultyPcm(script, **kwargs)


async def read_n(source: AlsaCapture, n: int) -> list[AudioChunk]:
    return [await asyncio.wait_for(source.read(), 5.0) for _ in range(n)]


async def test_capture_delivers_the_infile_samples_in_order(alsa: AlsaTestConfig) -> None:
    data = ramp(PERIOD * 400, channels=2)
    alsa.add_capture("mic", data)
    alsa.write()
    mic = AlsaCapture("mic", RATE, 2, PERIOD)
    await mic.start()
    try:
        chunks = await read_n(mic, 400)
    finally:
        await mic.stop()
    got = np.concatenate([c.samples for c in chunks])
    assert all(c.samples.shape == (PERIOD, 2) and c.rate == RATE for c in chunks)
    assert np.array_equal(got, data)
    stats = mic.stats()
    assert stats["periods"] >= 400 and stats["frames"] == stats["periods"] * PERIOD
    assert stats["xruns"] == 0 and stats["opens"] == 1 and stats["reopen_attempts"] == 0
    ts = [c.timestamp for c in chunks]
    assert all(t <= time.monotonic() for t in ts)  # stamped at capture, never in the future


async def test_capture_rechunks_when_the_device_period_differs(alsa: AlsaTestConfig) -> None:
    """Periods the pipeline asks for are kept whatever the device delivers (here 441 -> 160)."""
    data = ramp(441 * 100)
    alsa.add_capture("mic", data)
    alsa.write()
    mic = AlsaCapture("mic", 44100, 1, 160, device_period_frames=441)
    await mic.start()
    try:
        chunks = await read_n(mic, 200)
        assert mic.stats()["device_period_frames"] == 441
    finally:
        await mic.stop()
    assert all(c.frames == 160 for c in chunks)
    assert np.array_equal(np.concatenate([c.samples for c in chunks]), data[: 200 * 160])
    gaps = np.diff([c.timestamp for c in chunks])
    read_of = [(160 * (j + 1) - 1) // 441 for j in range(200)]  # device read completing chunk j
    within_read = gaps[[read_of[j] == read_of[j + 1] for j in range(199)]]
    assert within_read.size > 50
    assert np.allclose(within_read, 160 / 44100, atol=1e-6)


async def test_capture_reports_input_level(alsa: AlsaTestConfig) -> None:
    t = np.arange(RATE) / RATE
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)  # -9.03 dBFS rms
    alsa.add_capture("mic", tone)
    alsa.write()
    mic = AlsaCapture("mic", RATE, 1, PERIOD)
    await mic.start()
    try:
        await read_n(mic, 90)
        stats = mic.stats()
    finally:
        await mic.stop()
    assert stats["level_rms_dbfs"] == pytest.approx(-9.03, abs=0.1)
    assert stats["level_peak_dbfs"] == pytest.approx(-6.02, abs=0.1)


async def test_capture_counts_overruns_and_keeps_going(alsa: AlsaTestConfig) -> None:
    data = ramp(PERIOD * 60)
    alsa.add_capture("mic", data)
    alsa.write()
    script: dict[str, Any] = {"read": 5, "fault": "xrun"}
    mic = AlsaCapture("mic", RATE, 1, PERIOD, pcm_factory=faulty_factory(script))
    await mic.start()
    try:
        chunks = await read_n(mic, 60)
    finally:
        await mic.stop()
    assert mic.stats()["xruns"] == 1 and mic.stats()["overruns"] == 1
    assert mic.stats()["device_losses"] == 0
    assert np.array_equal(np.concatenate([c.samples for c in chunks]), data)


async def test_missing_device_is_reported_retried_and_capture_resumes(alsa: AlsaTestConfig) -> None:
    states: list[tuple[bool, str]] = []
    mic = AlsaCapture(
        "late",
        RATE,
        1,
        PERIOD,
        on_state=lambda a, m: states.append((a, m)),
        reopen_min_s=0.02,
        reopen_max_s=0.1,
    )
    await mic.start()
    reader = asyncio.create_task(mic.read())
    try:
        stats = mic.stats()
        assert stats["state"] == "unavailable" and "late" in stats["error"]
        await asyncio.sleep(0.4)
        assert not reader.done()  # read() waits; it does not raise for a missing device
        stats = mic.stats()
        assert stats["reopen_attempts"] >= 3
        assert states == [(False, stats["error"])]
        data = ramp(PERIOD * 20, seed=3)
        alsa.add_capture("late", data)  # the device appears
        alsa.write()
        first = await asyncio.wait_for(reader, 5.0)
        rest = await read_n(mic, 19)
    finally:
        reader.cancel()
        await mic.stop()
    assert np.array_equal(np.concatenate([first.samples] + [c.samples for c in rest]), data)
    assert mic.stats()["opens"] == 1
    assert [a for a, _ in states] == [False, True]


async def test_device_lost_while_running_is_retried_with_backoff(alsa: AlsaTestConfig) -> None:
    data = ramp(PERIOD * 300, seed=5)
    alsa.add_capture("mic", data)
    alsa.write()
    script: dict[str, Any] = {}
    states: list[tuple[bool, str]] = []
    mic = AlsaCapture(
        "mic",
        RATE,
        1,
        PERIOD,
        queue_periods=4,
        on_state=lambda a, m: states.append((a, m)),
        reopen_min_s=0.02,
        reopen_max_s=0.08,
        pcm_factory=faulty_factory(script),
    )
    await mic.start()
    try:
        before = await read_n(mic, 10)
        alsa.remove("mic")  # unplugged: reopening will fail for real...
        alsa.write()
        script["fail_now"] = True  # ...and the open PCM fails on its next read
        deadline = time.monotonic() + 5
        pending: asyncio.Task[Any] | None = None  # a read that may be waiting when the loss is seen
        while mic.stats()["state"] != "unavailable" and time.monotonic() < deadline:
            pending = pending or asyncio.ensure_future(mic.read())  # the thread is paced by us
            done, _ = await asyncio.wait({pending}, timeout=0.1)
            if done:
                before.append(pending.result())
                pending = None
        while mic.stats()["reopen_attempts"] < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stats = mic.stats()
        assert stats["state"] == "unavailable" and stats["device_losses"] == 1
        assert stats["reopen_attempts"] >= 3 and "cannot open" in stats["error"]
        assert len(states) == 1 and "scripted unplug" in states[0][1]  # reported once, with why
        alsa.add_capture("mic", data)  # plugged back in
        alsa.write()
        after = [await asyncio.wait_for(pending, 5.0)] if pending else []  # no chunk is dropped
        after += await read_n(mic, 30 - len(after))
        final = mic.stats()
    finally:
        await mic.stop()
    stream = np.concatenate([c.samples[:, 0] for c in before + after])
    # what was captured before the loss is delivered in order, then the restarted device's audio
    restart = next(
        i
        for i in range(PERIOD, stream.size, PERIOD)
        if np.array_equal(stream[i : i + PERIOD], data[:PERIOD, 0])
    )
    assert np.array_equal(stream[:restart], data[:restart, 0])
    assert np.array_equal(stream[restart:], data[: stream.size - restart, 0])
    assert [a for a, _ in states] == [False, True]
    assert final["opens"] == 2 and final["state"] == "running" and final["device_losses"] == 1


async def test_stop_is_prompt_and_leaves_no_thread(alsa: AlsaTestConfig) -> None:
    alsa.add_capture("mic", ramp(PERIOD * 10))
    alsa.write()
    running = AlsaCapture("mic", RATE, 1, PERIOD, queue_periods=2)
    missing = AlsaCapture("absent", RATE, 1, PERIOD, reopen_min_s=30.0, reopen_max_s=60.0)
    await running.start()
    await missing.start()
    await asyncio.sleep(0.2)  # `running` is blocked on its full queue, `missing` in backoff
    waiting = asyncio.create_task(missing.read())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    await running.stop()
    await missing.stop()
    assert time.monotonic() - t0 < 1.0  # generous for a loaded box; the backoff is 30 s
    with pytest.raises(AudioSourceError):
        await asyncio.wait_for(waiting, 1.0)
    assert alsa_threads() == []
    assert missing.stats()["state"] == "stopped"


async def test_playback_writes_exactly_the_samples_given(alsa: AlsaTestConfig) -> None:
    out = alsa.add_playback("spk")
    alsa.write()
    spk = AlsaPlayback("spk", RATE, 2, PERIOD)
    await spk.start()
    data = ramp(PERIOD * 300, channels=2, seed=7)
    try:
        for i in range(0, data.shape[0], 250):  # chunk sizes unrelated to the period
            await spk.write(AudioChunk(data[i : i + 250], RATE, 0.0))
            if spk.stats()["queued_frames"] > 1000:
                assert await spk.drain()
        assert await spk.drain()
        stats = spk.stats()
    finally:
        await spk.stop()
    written = np.fromfile(out, dtype="<i2").reshape(-1, 2)
    assert np.array_equal(written, data)
    assert stats["frames_written"] == data.shape[0]
    assert stats["dropped_chunks"] == 0 and stats["xruns"] == 0


async def test_playback_underrun_is_counted_and_the_audio_rewritten(alsa: AlsaTestConfig) -> None:
    out = alsa.add_playback("spk")
    alsa.write()
    script: dict[str, Any] = {"write": 3, "fault": "xrun"}
    spk = AlsaPlayback("spk", RATE, 1, PERIOD, pcm_factory=faulty_factory(script))
    await spk.start()
    data = ramp(PERIOD * 10, seed=8)
    try:
        await spk.write(AudioChunk(data, RATE, 0.0))
        assert await spk.drain()
    finally:
        await spk.stop()
    assert spk.stats()["xruns"] == 1 and spk.stats()["underruns"] == 1
    assert np.array_equal(np.fromfile(out, dtype="<i2"), data[:, 0])


async def test_playback_drops_when_full_and_recovers_a_late_device(alsa: AlsaTestConfig) -> None:
    states: list[bool] = []
    spk = AlsaPlayback(
        "spk",
        RATE,
        1,
        PERIOD,
        queue_ms=100,
        on_state=lambda a, m: states.append(a),
        reopen_min_s=0.02,
        reopen_max_s=0.05,
    )
    await spk.start()
    try:
        assert spk.stats()["state"] == "unavailable"
        chunks = [np.full((PERIOD, 1), i, dtype=np.int16) for i in range(30)]
        for c in chunks:  # 100 ms of queue holds 10 periods; the rest is dropped, counted
            await spk.write(AudioChunk(c, RATE, 0.0))
        stats = spk.stats()
        assert stats["queued_frames"] == 10 * PERIOD
        assert stats["dropped_chunks"] == 20 and stats["dropped_frames"] == 20 * PERIOD
        out = alsa.add_playback("spk")  # the speaker appears
        alsa.write()
        assert await spk.drain(5.0)
    finally:
        await spk.stop()
    written = np.fromfile(out, dtype="<i2")
    assert np.array_equal(written, np.repeat(np.arange(10, dtype=np.int16), PERIOD))
    assert states == [False, True]
    assert alsa_threads() == []


async def test_playback_converts_rate_and_channels(alsa: AlsaTestConfig) -> None:
    out = alsa.add_playback("spk")
    alsa.write()
    spk = AlsaPlayback("spk", RATE, 1, PERIOD)
    await spk.start()
    t = np.arange(48000) / 48000
    tone = (10000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    stereo = np.stack([tone, tone], axis=1)
    try:
        for i in range(0, 48000, 960):  # 20 ms chunks of 48 kHz stereo, as aiortc delivers
            await spk.write(AudioChunk(stereo[i : i + 960], 48000, 0.0))
            assert await spk.drain()
    finally:
        await spk.stop()
    written = np.fromfile(out, dtype="<i2").astype(np.float64)
    assert abs(written.size - RATE) <= 50
    spectrum = np.abs(np.fft.rfft(written[1000:15000] * np.hanning(14000)))
    peak_hz = np.argmax(spectrum) * RATE / 14000
    assert abs(peak_hz - 440) < 3
    rms = np.sqrt(np.mean(written[1000:15000] ** 2))
    assert rms == pytest.approx(10000 / np.sqrt(2), rel=0.05)  # no seams, no level loss


async def test_playback_write_before_start_is_an_error() -> None:
    spk = AlsaPlayback("spk", RATE, 1, PERIOD)
    with pytest.raises(RuntimeError, match="not started"):
        await spk.write(AudioChunk(np.zeros((PERIOD, 1), np.int16), RATE, 0.0))


def test_alsa_lib_honours_the_test_config(alsa: AlsaTestConfig) -> None:
    """The in-process approach works: alsa-lib follows ALSA_CONFIG_PATH and file rewrites."""
    alsa.add_capture("probe", ramp(PERIOD))
    alsa.write()
    pcm = alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, device="probe", rate=RATE, channels=1, periodsize=PERIOD)
    pcm.close()
    alsa.remove("probe")
    alsa.write()
    with pytest.raises(alsaaudio.ALSAAudioError):
        alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, device="probe", rate=RATE, channels=1, periodsize=PERIOD)


LOOPBACK = """
import asyncio, sys
from device_agent.config import load_config
from hal.audio.factory import create_sink, create_source

async def main() -> None:
    audio = load_config(sys.argv[1]).audio
    mic, speaker = create_source(audio), create_sink(audio)
    await mic.start()
    await speaker.start()
    for _ in range(int(sys.argv[2])):
        await speaker.write(await mic.read())
        assert await speaker.drain()
    print(mic.stats()["periods"] >= int(sys.argv[2]), speaker.stats()["frames_written"])
    await mic.stop()
    await speaker.stop()

asyncio.run(main())
"""


def test_fresh_agent_process_loops_mic_to_speaker(alsa: AlsaTestConfig, tmp_path: Path) -> None:
    """ALSA_CONFIG_PATH set before alsa-lib first loads, as for a real agent process."""
    data = ramp(PERIOD * 50, seed=11)
    alsa.add_capture("mic", data)
    out = alsa.add_playback("spk")
    alsa.write()
    toml = tmp_path / "agent.toml"
    toml.write_text(
        '[audio]\nbackend = "alsa"\ndevice = "mic"\nplayback_device = "spk"\nplayback_rate = 16000\n'
    )
    env = {**os.environ, **alsa.env}
    proc = subprocess.run(
        [sys.executable, "-c", LOOPBACK, str(toml), "50"],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", str(PERIOD * 50)]
    assert np.array_equal(np.fromfile(out, dtype="<i2"), data[:, 0])


async def test_playback_device_lost_while_running_comes_back(alsa: AlsaTestConfig) -> None:
    out = alsa.add_playback("spk")
    alsa.write()
    script: dict[str, Any] = {"write": 3, "fault": "unplug"}
    states: list[bool] = []
    spk = AlsaPlayback(
        "spk",
        RATE,
        1,
        PERIOD,
        on_state=lambda a, m: states.append(a),
        reopen_min_s=0.02,
        reopen_max_s=0.05,
        pcm_factory=faulty_factory(script),
    )
    await spk.start()
    data = ramp(PERIOD * 8, seed=12)
    try:
        await spk.write(AudioChunk(data, RATE, 0.0))
        assert await spk.drain(5.0)
        stats = spk.stats()
    finally:
        await spk.stop()
    assert stats["device_losses"] == 1 and stats["opens"] == 2 and stats["state"] == "running"
    assert stats["dropped_frames"] == PERIOD  # the period in flight when the device vanished
    assert states == [False, True]
    # the file plugin truncates its output when the PCM is reopened: what follows the loss is there
    assert np.array_equal(np.fromfile(out, dtype="<i2"), data[3 * PERIOD :, 0])


async def test_capture_can_be_restarted(alsa: AlsaTestConfig) -> None:
    """media.restart stops and starts the same source object."""
    data = ramp(PERIOD * 5, seed=13)
    alsa.add_capture("mic", data)
    alsa.write()
    mic = AlsaCapture("mic", RATE, 1, PERIOD)
    for _ in range(2):
        await mic.start()
        try:
            first = await asyncio.wait_for(mic.read(), 5.0)
        finally:
            await mic.stop()
        assert np.array_equal(first.samples, data[:PERIOD])
    assert mic.stats()["opens"] == 2 and alsa_threads() == []
