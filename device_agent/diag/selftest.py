"""``diag.selftest``: mic, loopback, camera, encoder, noise suppression, disk, temperature, clock, broker.

Audio and video checks read the running media component (its microphone level, its camera's
latest frame, its encoder choice and the noise-suppression stage's real-time factor): the
self-test never opens a second camera or capture device. Each check is time-boxed; one failing
or crashing check never hides the others. Thresholds and paths come from ``[diagnostics]`` and the
checks library shared with ``device-agent doctor`` (``device_agent.checks``, its ``thresholds``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.checks import (
    check_camera_frame,
    check_clock,
    check_disk,
    check_mic_level,
    check_temperature,
    check_throttling,
    ntp_synchronized,
    read_throttled,
)
from device_agent.config import AgentConfig
from device_agent.diag.frames import frame_stats
from device_agent.diag.ping import Pinger
from device_agent.diag.results import FAIL, PASS, SKIP, WARN, Check, report
from device_agent.media.component import MediaComponent
from hal.audio.base import AudioChunk

LEVEL_WINDOW_S = 1.0  # microphone level sampled over this long
TONE_HZ = 1000.0


class SelfTest:
    """Runs the self-test checks against one agent's configuration, media component and link."""

    def __init__(self, config: AgentConfig, media: MediaComponent | None, pinger: Pinger | None) -> None:
        self.cfg = config
        self.media = media
        self.pinger = pinger

    async def run(self, fleet_ts: float | None = None, timeout_s: float = 20.0) -> dict[str, Any]:
        checks: list[Check] = []
        steps: list[tuple[str, Callable[[], Awaitable[list[Check]]]]] = [
            ("mic", self.mic),
            ("camera", self.camera),
            ("encoder", self.encoder),
            ("ns", self.ns),
            ("disk", self.disk),
            ("temperature", self.temperature),
            ("clock", lambda: self.clock(fleet_ts)),
            ("broker", self.broker),
        ]
        for name, step in steps:
            try:
                checks += await asyncio.wait_for(step(), timeout_s)
            except TimeoutError:
                checks.append(Check(name, FAIL, f"check timed out after {timeout_s:.0f} s"))
            except Exception as exc:  # a crashing check is a failed check, not a failed self-test
                checks.append(Check(name, FAIL, f"check crashed: {type(exc).__name__}: {exc}"))
        return report("selftest", checks)

    # -- audio ---------------------------------------------------------------------------------
    async def _levels(self, seconds: float) -> list[float]:
        """The pipeline's 10 ms-hop input level (dBFS), polled every 20 ms for ``seconds``."""
        assert self.media is not None and self.media.audio is not None
        out: list[float] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            out.append(float(self.media.audio.level))
            await asyncio.sleep(0.02)
        return out

    async def mic(self) -> list[Check]:
        if self.media is None or self.media.audio is None:
            return [Check("mic", FAIL, "no audio pipeline running"), Check("loopback", SKIP, "no microphone")]
        audio = self.media.audio
        if not audio.healthy():
            return [
                Check("mic", FAIL, "microphone delivers no audio", audio.stats()["source"]),
                Check("loopback", SKIP, "no microphone"),
            ]
        levels = await self._levels(LEVEL_WINDOW_S)
        level = float(np.median(levels))
        mic = check_mic_level(
            level, max(levels), float(np.percentile(levels, 10)), backend=self.cfg.audio.backend
        )
        return [mic, await self.loopback(level)]

    async def loopback(self, baseline_dbfs: float) -> Check:
        """Play a 1 kHz tone on the talkback speaker; pass when the mic's median level rises >= 10 dB
        over its median level just before (speech or noise in the room does not count as the tone)."""
        talkback = self.media.talkback if self.media is not None else None
        if talkback is None:
            return Check("loopback", SKIP, "no speaker configured (audio.playback_device)")
        sink = talkback.sink
        seconds = 0.6
        t = np.arange(int(sink.rate * seconds)) / sink.rate
        tone = (0.25 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)
        samples = np.repeat(tone[:, None], sink.channels, axis=1)
        hop = sink.rate // 50  # 20 ms pieces, paced: the sink queues only audio.playback_queue_ms

        async def play() -> None:
            start = time.monotonic()
            for i in range(0, len(samples), hop):
                await sink.write(
                    AudioChunk(samples=samples[i : i + hop], rate=sink.rate, timestamp=time.monotonic())
                )
                await asyncio.sleep(max(0.0, start + (i + hop) / sink.rate - time.monotonic()))

        _, during = await asyncio.gather(play(), self._levels(seconds + 0.2))  # + output/input buffering
        heard = float(np.median(during))  # the tone fills most of the window; a click does not
        rise = heard - baseline_dbfs
        value = {
            "baseline_dbfs": round(baseline_dbfs, 1),
            "level_during_tone_dbfs": round(heard, 1),
            "rise_db": round(rise, 1),
        }
        if rise >= 10:
            return Check("loopback", PASS, f"test tone heard: +{rise:.0f} dB at the microphone", value)
        return Check(
            "loopback", FAIL, f"test tone not heard (+{rise:.0f} dB): speaker or mic path broken", value
        )

    # -- video ---------------------------------------------------------------------------------
    async def camera(self) -> list[Check]:
        captured = await self.media.capture_frame() if self.media is not None else None
        if captured is None:
            return [Check("camera", FAIL, "no camera frame from the media pipeline")]
        st: dict[str, Any] = await asyncio.to_thread(frame_stats, captured.frame)
        st["index"] = captured.index
        return [check_camera_frame(st, age_s=time.monotonic() - captured.timestamp)]

    async def encoder(self) -> list[Check]:
        choice = self.media.choice if self.media is not None else None
        if choice is None or self.media is None or self.media.video is None:
            return [Check("encoder", FAIL, "no H.264 encoder running")]
        video = self.media.video.stats()
        value = {
            "backend": choice.backend,
            "reason": choice.reason,
            "fps": video.get("fps"),
            "encode_ms": video.get("encode_ms"),
        }
        want = self.cfg.camera.fps
        fps = float(video.get("fps") or 0.0)
        if fps <= 0:
            return [Check("encoder", FAIL, f"{choice.backend}: no frames encoded", value)]
        if fps < 0.8 * want:
            return [Check("encoder", WARN, f"{choice.backend} at {fps:.1f} fps (camera.fps {want})", value)]
        soft = " (software)" if choice.backend == "libx264" else ""
        return [Check("encoder", PASS, f"{choice.backend}{soft} at {fps:.1f} fps", value)]

    async def ns(self) -> list[Check]:
        if not self.cfg.ns.enabled:
            return [Check("ns", SKIP, "noise suppression disabled (ns.enabled)")]
        stage = self.media.audio.stage if self.media is not None and self.media.audio is not None else None
        if stage is None:
            return [Check("ns", FAIL, "no audio pipeline")]
        st = stage.stats()
        if st.get("error"):
            return [Check("ns", FAIL, f"model not loaded: {st['error']}", st)]
        budget = self.cfg.ns.budget_rtf
        rtf = float(st.get("rtf") or 0.0)
        value = {**st, "budget_rtf": budget}
        if st.get("fell_back"):
            return [Check("ns", WARN, f"bypassed: RTF {rtf:.3f} over budget {budget}", value)]
        if not st.get("enabled"):
            return [Check("ns", WARN, "model loaded but switched off (media.ns)", value)]
        status = PASS if rtf <= budget else WARN
        return [
            Check(
                "ns", status, f"{Path(str(st.get('model', ''))).name} RTF {rtf:.3f} (budget {budget})", value
            )
        ]

    # -- system --------------------------------------------------------------------------------
    async def disk(self) -> list[Check]:
        d = self.cfg.diagnostics
        return [
            await asyncio.to_thread(
                check_disk, Path(self.cfg.device.state_dir), d.disk_fail_free, d.disk_warn_free
            )
        ]

    async def temperature(self) -> list[Check]:
        d = self.cfg.diagnostics
        return [
            check_temperature(d.thermal_path, d.temp_warn_c, d.temp_fail_c),
            check_throttling(await asyncio.to_thread(read_throttled)),
        ]

    async def clock(self, fleet_ts: float | None) -> list[Check]:
        synced = await asyncio.to_thread(ntp_synchronized)
        return [check_clock(time.time(), synced, fleet_ts)]

    async def broker(self) -> list[Check]:
        if self.pinger is None:
            return [Check("broker", SKIP, "no fleet link (mqtt.url)")]
        rtts = [await self.pinger.ping(timeout=3.0) for _ in range(3)]
        got = [r * 1000 for r in rtts if r is not None]
        if not got:
            return [Check("broker", FAIL, "no MQTT round trip within 3 s")]
        value = {"rtt_ms": round(min(got), 2), "samples": len(got)}
        status = WARN if min(got) > 500 or len(got) < 3 else PASS
        return [Check("broker", status, f"MQTT round trip {min(got):.1f} ms", value)]
