"""The microphone path: capture -> 16 kHz mono -> processing stage (noise suppression) -> Opus, once.

Capture arrives at the device's rate and channel count; the first channel is resampled to the
pipeline's 16 kHz, processed in 10 ms hops by the stage (on a worker thread: TFLite blocks), then
encoded to Opus once (48 kHz, 20 ms) and the packets are shared by every viewer, like video.

``capture_time(pts)`` dates a packet by the capture of its first sample: the latest chunk's
timestamp and sample index, the stage's latency (its output sample k is input sample k - latency)
and ``offset_s`` (``audio.offset_ms``, a calibration for latency no timestamp shows); the viewers'
sender reports are dated by it (``capture_clock.py``). libopus's packets are already shifted back
by its look-ahead (the first one's pts is -312 at 48 kHz).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import logging
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from device_agent.media.fanout import Subscriber
from device_agent.media.stages import HOP_FRAMES, PIPELINE_RATE, AudioStage
from device_agent.tasks import cancel_and_wait
from hal.audio.base import AudioChunk, AudioSource
from hal.audio.level import FULL_SCALE, dbfs

log = logging.getLogger(__name__)

OPUS_RATE = 48000
OPUS_FRAME = 960  # 20 ms
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
AUDIO_QUEUE_LIMIT = 25  # 0.5 s of packets per viewer
# Opus in-band FEC: each packet also carries a low-bitrate copy of the previous one (LBRR), so a
# receiver that loses one packet decodes it from the next. libopus adds it only when told to
# expect loss; the encoder is shared by every viewer and opened once, so the figure is fixed.
OPUS_FEC_LOSS_PCT = 10


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dBFS (the HAL's floor for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))) if samples.size else 0.0
    return round(dbfs(rms / FULL_SCALE), 1)


class OpusPacketizer:
    """16 kHz int16 mono in, Opus packets (48 kHz clock) out; one encoder for every viewer."""

    def __init__(self, bitrate: int = 32000, fec_loss_pct: int = OPUS_FEC_LOSS_PCT) -> None:
        """``fec_loss_pct``: the loss libopus is told to expect (in-band FEC on); 0 turns FEC off."""
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = bitrate
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = OPUS_RATE
        self.codec.time_base = OPUS_TIME_BASE
        self.codec.options = {
            "application": "voip",
            "frame_duration": "20",
            "fec": "1" if fec_loss_pct > 0 else "0",
            "packet_loss": str(fec_loss_pct),
        }
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE, frame_size=OPUS_FRAME)
        self._pts = 0

    def encode(self, samples: np.ndarray) -> list[av.Packet]:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = PIPELINE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, PIPELINE_RATE)
        self._pts += samples.size
        packets: list[av.Packet] = []
        for resampled in self.resampler.resample(frame):
            packets.extend(self.codec.encode(resampled))
        for packet in packets:
            packet.time_base = OPUS_TIME_BASE
        return packets


class AudioPipeline:
    """Runs the capture loop and broadcasts encoded audio; the stage can be swapped or bypassed."""

    def __init__(
        self,
        source: AudioSource,
        stage: AudioStage | None = None,
        on_level: Callable[[float], None] | None = None,
        offset_s: float = 0.0,
    ) -> None:
        self.source = source
        self.offset_s = offset_s
        self._received = 0  # pipeline-rate samples taken from the source (the stage's input index)
        self._anchor: tuple[int, float] | None = None  # (sample index, capture time) of the latest chunk
        self.stage = stage
        self.on_level = on_level
        self._resampler: av.AudioResampler | None = None
        self._pending = np.zeros(0, np.int16)
        self._opus = OpusPacketizer()
        self._subs: dict[int, Subscriber[av.Packet]] = {}
        self._next_id = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audio-stage")
        self._task: asyncio.Task[None] | None = None
        self.chunks = 0
        self.packets = 0
        self.level = -120.0
        self.last_chunk_at: float | None = None
        self.latest_capture_ts: float | None = None
        self.stage_errors = 0

    async def start(self) -> None:
        await self.source.start()
        self._task = asyncio.create_task(self._run(), name="audio-pipeline")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.source.stop()
        self._executor.shutdown(wait=True)
        for sub in list(self._subs.values()):
            self.unsubscribe(sub)

    async def restart_source(self) -> None:
        """Reopen the capture device; viewers stay subscribed."""
        await cancel_and_wait(self._task)
        await self.source.stop()
        self._received -= len(self._pending)  # dropped: the next chunk's samples follow the last used one
        self._pending = np.zeros(0, np.int16)
        await self.source.start()
        self._task = asyncio.create_task(self._run(), name="audio-pipeline")

    def subscribe(self, name: str = "") -> Subscriber[av.Packet]:
        self._next_id += 1
        sub: Subscriber[av.Packet] = Subscriber(id=self._next_id, name=name, need_keyframe=False)
        self._subs[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscriber[av.Packet]) -> None:
        sub.closed = True
        sub.wakeup.set()
        self._subs.pop(sub.id, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await self.source.read()
            self.chunks += 1
            self.last_chunk_at = time.monotonic()
            mono16k = self._to_pipeline_rate(chunk)
            self._anchor = (self._received, chunk.timestamp)
            self._received += len(mono16k)
            self._pending = np.concatenate([self._pending, mono16k])
            usable = len(self._pending) // HOP_FRAMES * HOP_FRAMES
            if not usable:
                continue
            hops, self._pending = self._pending[:usable], self._pending[usable:]
            self.level = level_dbfs(hops)
            if self.on_level is not None:
                self.on_level(self.level)
            packets = await loop.run_in_executor(self._executor, self._process, hops)
            self.latest_capture_ts = chunk.timestamp
            for packet in packets:
                self._publish(packet)

    def capture_time(self, pts: int | None) -> float | None:
        """``time.monotonic()`` capture time of the first sample of the Opus packet at ``pts`` (48 kHz)."""
        if pts is None or self._anchor is None:
            return None
        index, at = self._anchor
        latency = self.stage.latency if self.stage is not None else 0
        sample = pts * PIPELINE_RATE / OPUS_RATE - latency
        return at + (sample - index) / PIPELINE_RATE + self.offset_s

    def _process(self, hops: np.ndarray) -> list[av.Packet]:
        """Stage and Opus, on the worker thread. A failing stage is bypassed, never fatal."""
        out = hops
        if self.stage is not None:  # disabled or not, the stage keeps its delay: no jump when toggled
            try:
                out = self.stage.process(hops)
            except Exception:
                self.stage_errors += 1
                log.exception("audio stage %s failed; passing audio through", self.stage.name)
        return self._opus.encode(out)

    def _to_pipeline_rate(self, chunk: AudioChunk) -> np.ndarray:
        first = np.ascontiguousarray(chunk.samples[:, 0], dtype=np.int16)
        if chunk.rate == PIPELINE_RATE:
            return first
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=PIPELINE_RATE)
        frame = av.AudioFrame.from_ndarray(first.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = chunk.rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)

    def _publish(self, packet: av.Packet) -> None:
        self.packets += 1
        for sub in self._subs.values():
            if len(sub.queue) >= AUDIO_QUEUE_LIMIT:
                sub.queue.popleft()
                sub.resyncs += 1
            sub.queue.append(packet)
            sub.wakeup.set()

    def healthy(self) -> bool:
        """Alive, and audio flows or the source reports its device missing (and retries it)."""
        if self._task is None or self._task.done():
            return False
        if self.source.stats().get("state") == "unavailable":
            return True  # reported as a P1 alert; restarting the agent would not bring the microphone back
        return self.last_chunk_at is not None and time.monotonic() - self.last_chunk_at < 5.0

    def stats(self) -> dict[str, Any]:
        return {
            "source": self.source.stats(),
            "level_dbfs": self.level,
            "chunks": self.chunks,
            "packets": self.packets,
            "viewers": len(self._subs),
            "stage_errors": self.stage_errors,
            "stage": self.stage.stats() if self.stage is not None else None,
        }


class BroadcastAudioTrack(MediaStreamTrack):
    """A viewer's audio: the shared Opus packets (aiortc packs them)."""

    kind = "audio"

    def __init__(self, pipeline: AudioPipeline, name: str = "") -> None:
        super().__init__()
        self.pipeline = pipeline
        self.name = name
        self.subscriber: Subscriber[av.Packet] | None = None
        self.last_capture_ts: float | None = None  # of the packet handed out last (capture_clock.py)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.subscriber is None:
            self.subscriber = self.pipeline.subscribe(self.name)
        try:
            packet = await self.subscriber.get()
        except ConnectionError:
            raise MediaStreamError from None
        self.last_capture_ts = self.pipeline.capture_time(packet.pts)
        return packet

    def stop(self) -> None:
        if self.subscriber is not None:
            self.pipeline.unsubscribe(self.subscriber)
        super().stop()


class Talkback:
    """Plays viewers' microphones on the device's speaker, one talker at a time.

    The first viewer whose audio arrives holds the floor until it has been quiet (no frames) for
    ``release_s``; frames from others meanwhile are dropped and counted.
    """

    def __init__(self, sink: Any, release_s: float = 0.5) -> None:
        self.sink = sink
        self.release_s = release_s
        self._owner: str | None = None
        self._owner_last = 0.0
        self._resampler: av.AudioResampler | None = None
        self.frames_played = 0
        self.frames_dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, viewer: str, track: MediaStreamTrack) -> None:
        task = asyncio.create_task(self._pump(viewer, track), name=f"talkback-{viewer}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, viewer: str, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):  # recv() is typed Frame | Packet
                continue
            now = time.monotonic()
            if self._owner not in (None, viewer) and now - self._owner_last < self.release_s:
                self.frames_dropped += 1
                continue
            self._owner, self._owner_last = viewer, now
            await self.sink.write(self._convert(frame, now))
            self.frames_played += 1

    def _convert(self, frame: av.AudioFrame, now: float) -> AudioChunk:
        if self._resampler is None:
            layout = "mono" if self.sink.channels == 1 else "stereo"
            self._resampler = av.AudioResampler(format="s16", layout=layout, rate=self.sink.rate)
        out = [f.to_ndarray().reshape(-1, self.sink.channels) for f in self._resampler.resample(frame)]
        samples = np.concatenate(out) if out else np.zeros((0, self.sink.channels), np.int16)
        return AudioChunk(samples=samples.astype(np.int16), rate=self.sink.rate, timestamp=now)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {
            "frames_played": self.frames_played,
            "frames_dropped": self.frames_dropped,
            "talker": self._owner,
        }
