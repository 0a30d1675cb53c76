"""A/V skew at the source (device_agent/media/capture_clock.py): each stream's RTP clock against its
capture clock, per session, from the packets as they are sent; and a microphone whose sample clock
runs fast (``audio.synthetic_clock_ppm``) read back through a real agent and a real aiortc viewer."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp
import pytest

from device_agent.media.capture_clock import DRIFT_WINDOW, CaptureClock, source_sync
from hal.audio.synthetic import SyntheticSource
from tests.support.media import Viewer, media_config, running_agent


def _feed(
    clock: CaptureClock, packets: int, rtp0: int, rtp_step: int, wall0: float, wall_step: float
) -> None:
    for i in range(packets):
        clock.observe((rtp0 + i * rtp_step) & 0xFFFFFFFF, wall0 + i * wall_step)


def test_drift_follows_a_fast_sample_clock_across_the_rtp_wrap() -> None:
    clock = CaptureClock(48000)
    assert clock.drift_ms() is None
    # 20 ms Opus packets (960 samples) whose samples come 1 % faster than the wall clock says:
    # each packet's capture is 19.8 ms after the previous one; the timestamps wrap at 2**32 on the way
    _feed(clock, 1000, 2**32 - 960 * 300, 960, 1_700_000_000.0, 0.0198)
    drift = clock.drift_ms()
    assert drift is not None
    expected = (1000 - DRIFT_WINDOW) * 0.2  # medians of the first and last windows, 0.2 ms a packet
    assert abs(drift - expected) < 0.5, (drift, expected)
    assert clock.rebased == 0


def test_steady_clocks_read_no_drift_and_jitter_is_not_drift() -> None:
    clock = CaptureClock(90000)
    for i in range(600):  # 30 fps, capture times jittering +-4 ms around the frame clock
        clock.observe(1234 + i * 3000, 1000.0 + i / 30 + (0.004 if i % 3 == 0 else -0.002))
    drift = clock.drift_ms()
    assert drift is not None and abs(drift) < 0.01


def test_a_jump_of_the_timeline_is_rebased_not_drift() -> None:
    clock = CaptureClock(90000)
    _feed(clock, 200, 0, 3000, 50.0, 1 / 30)
    _feed(clock, 200, 90000 * 40, 3000, 50.0 + 200 / 30, 1 / 30)  # a new encoder's timeline, 40 s on
    drift = clock.drift_ms()
    assert clock.rebased == 1 and drift is not None and abs(drift) < 0.01


def test_source_sync_sign_and_missing_streams() -> None:
    assert source_sync({}) == dict.fromkeys(
        ("av_skew_ms", "video_drift_ms", "audio_drift_ms", "video_sr_shift_ms", "audio_sr_shift_ms")
    )
    video, audio = CaptureClock(90000), CaptureClock(48000)
    _feed(video, 300, 0, 3000, 0.0, 1 / 30)
    _feed(audio, 300, 0, 960, 0.0, 0.0199)  # audio's RTP clock runs ahead: mapped late, heard late
    out = source_sync({"video": video, "audio": audio})
    assert out["video_drift_ms"] == 0.0
    assert out["audio_drift_ms"] is not None and out["audio_drift_ms"] > 20
    assert out["av_skew_ms"] == -out["audio_drift_ms"]  # + = audio early
    only_video = source_sync({"video": video})
    assert only_video["av_skew_ms"] is None and only_video["video_drift_ms"] == 0.0


async def test_paced_source_sample_clock_runs_fast_by_its_ppm() -> None:
    source = SyntheticSource(16000, 1, 160, clock_ppm=50_000, max_lag_s=10.0)  # 5 % fast
    await source.start()
    try:
        chunks = [await source.read() for _ in range(40)]
    finally:
        await source.stop()
    # 39 periods of 10 ms nominal took 39 * 10 / 1.05 ms of the monotonic clock
    span = chunks[-1].timestamp - chunks[0].timestamp
    assert abs(span - 0.39 / 1.05) < 1e-9, span
    assert time.monotonic() >= chunks[-1].timestamp + 0.01 / 1.05 - 1e-6  # delivered by the real clock


@pytest.mark.parametrize("ppm", [10_000])
async def test_a_fast_microphone_clock_shows_as_audio_drift_and_av_skew(tmp_path: Path, ppm: int) -> None:
    """Microphone sample clock 1 % fast: its RTP clock runs 10 ms a second ahead of capture; video's not."""
    config = media_config(
        tmp_path, camera={"width": 160, "height": 120, "fps": 15}, audio={"synthetic_clock_ppm": ppm}
    )
    async with running_agent(config) as agent, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{agent.get('media').web.port}"
        viewer = Viewer(base)
        await viewer.connect(http)
        await viewer.wait_frames(10, timeout=20)
        # readings every 0.5 s for 8 s; the drift rate is the median of the per-interval rates: an
        # overrun of the source (a stall of this loaded machine) loses samples, which moves the audio
        # RTP timeline by the gap at once, in one interval only
        readings: list[tuple[float, dict]] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (not readings or readings[-1][0] - readings[0][0] < 8.0):
            await asyncio.sleep(0.5)
            async with http.get(f"{base}/api/stats") as resp:
                sync = (await resp.json())["viewers"]["sessions"][0]["source_sync"]
            if sync["audio_drift_ms"] is not None and sync["video_drift_ms"] is not None:
                readings.append((time.monotonic(), sync))
        await viewer.close(http)
    assert len(readings) >= 10, readings

    def rate(kind: str) -> float:  # ms per second
        pairs = zip(readings, readings[1:], strict=False)
        return statistics.median(
            (b[f"{kind}_drift_ms"] - a[f"{kind}_drift_ms"]) / (tb - ta) for (ta, a), (tb, b) in pairs
        )

    assert abs(rate("audio") - ppm / 1000) < 3.0, readings
    assert abs(rate("video")) < 2.0, readings
    last = readings[-1][1]
    assert last["av_skew_ms"] == pytest.approx(last["video_drift_ms"] - last["audio_drift_ms"], abs=0.11)
