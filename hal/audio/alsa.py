"""ALSA capture and playback on pyalsaaudio 0.11, one I/O thread per device.

Each device runs a dedicated thread that opens the PCM in non-blocking mode and waits in
``poll()`` on the PCM's descriptors plus a wake-up pipe, so ``stop()`` interrupts it at once and
the event loop never blocks on ALSA.

pyalsaaudio 0.11 reports xruns by return value, not by exception: ``PCM.read()`` returns
``(-EPIPE, b"")`` after a capture overrun and ``PCM.write()`` returns ``-EPIPE`` on a playback
underrun; the next call finds the PCM in the XRUN state and re-prepares it. Both are counted in
``stats()["xruns"]``. Any ``ALSAAudioError`` on open, read or write (device unplugged, unknown PCM,
unsupported format) marks the device ``unavailable``: it is reported (state, error, an optional
``on_state(False, message)`` callback run on the event loop) and reopened with exponential backoff
(``reopen_min_s`` doubling up to ``reopen_max_s``) until it returns (``on_state(True, message)``):
the HAL's availability contract, ``hal.availability`` (shared with the cameras).
Meanwhile ``AlsaCapture.read()`` simply keeps waiting and ``AlsaPlayback.write()`` keeps queueing
(and dropping, counted, once its bounded queue is full).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from hal.audio.base import AudioChunk, AudioSink, AudioSource, AudioSourceError
from hal.audio.convert import StreamResampler, convert_channels
from hal.audio.level import LevelMeter
from hal.availability import Availability, Backoff, StateCallback

try:  # pyalsaaudio needs libasound; keep the module importable without it
    import alsaaudio
except ImportError:  # pragma: no cover - exercised only on machines without ALSA
    alsaaudio = None

log = logging.getLogger(__name__)

PcmFactory = Callable[..., Any]

_STOPPED = object()


class _DeviceLost(Exception):
    """The open PCM failed; the device thread closes it and reopens with backoff."""


class _AlsaDevice:
    """Shared mechanics: the device thread, open with backoff, state reporting, wake-up pipe."""

    kind = "device"

    def __init__(
        self,
        device: str,
        rate: int,
        channels: int,
        period_frames: int,
        *,
        periods: int,
        on_state: StateCallback | None,
        reopen_min_s: float,
        reopen_max_s: float,
        stall_timeout_s: float,
        pcm_factory: PcmFactory | None,
        device_period_frames: int | None = None,
    ) -> None:
        if rate <= 0 or channels <= 0 or period_frames <= 0:
            raise ValueError("rate, channels and period_frames must be positive")
        self.device = device
        self.rate = rate
        self.channels = channels
        self.period_frames = period_frames
        self.availability = Availability(
            f"ALSA {self.kind} {device!r}", on_state, backoff=Backoff(reopen_min_s, reopen_max_s)
        )
        self._periods_in_buffer = periods
        self._ask_period = device_period_frames or period_frames
        self._stall_timeout = stall_timeout_s
        self._pcm_factory = pcm_factory
        self._frame_bytes = 2 * channels
        self._opens = 0
        self._reopen_attempts = 0
        self._device_losses = 0
        self._xruns = 0
        self._device_period = 0
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()
        self._first_attempt = threading.Event()
        self._wake_r = -1
        self._wake_w = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def on_state(self) -> StateCallback | None:
        return self.availability.on_state

    @on_state.setter
    def on_state(self, callback: StateCallback | None) -> None:
        self.availability.on_state = callback

    # -- lifecycle -----------------------------------------------------------------------------

    async def _start_thread(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"ALSA {self.kind} {self.device!r} already started")
        if alsaaudio is None and self._pcm_factory is None:
            raise AudioSourceError("pyalsaaudio is not installed (pip install pyalsaaudio)")
        self._loop = asyncio.get_running_loop()
        self.availability.bind(self._loop)
        self._stop_evt.clear()
        self._first_attempt.clear()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.availability.state = "starting"
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"alsa-{self.kind}-{self.device}")
        self._thread.start()
        # report the first open's outcome from start(): a missing device is visible right away
        await asyncio.to_thread(self._first_attempt.wait, 5.0)

    async def _stop_thread(self) -> None:
        self._stop_evt.set()
        self._wake()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
            if thread.is_alive():  # pragma: no cover - would need a wedged driver
                log.error("ALSA %s thread for %r did not stop within 5 s", self.kind, self.device)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self.availability.state = "stopped"

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- the device thread ---------------------------------------------------------------------

    def _open_pcm(self) -> Any:
        factory = self._pcm_factory or alsaaudio.PCM
        pcm_type = alsaaudio.PCM_CAPTURE if self.kind == "capture" else alsaaudio.PCM_PLAYBACK
        pcm = factory(
            type=pcm_type,
            mode=alsaaudio.PCM_NONBLOCK,
            rate=self.rate,
            channels=self.channels,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=self._ask_period,
            periods=self._periods_in_buffer,
            device=self.device,
        )
        try:
            info = pcm.info()
            if int(info["rate"]) != self.rate or int(info["channels"]) != self.channels:
                raise _DeviceLost(
                    f"ALSA {self.kind} device {self.device!r} runs at {info['rate']} Hz with "
                    f"{info['channels']} channel(s), not {self.rate} Hz with {self.channels} "
                    "(use a plug: device)"
                )
            self._device_period = int(info.get("period_size", self.period_frames))
        except BaseException:
            _close_quietly(pcm)
            raise
        return pcm

    def _run(self) -> None:
        backoff = self.availability.backoff
        while not self._stop_evt.is_set():
            if self.availability.unavailable:
                self._reopen_attempts += 1
            try:
                pcm = self._open_pcm()
            except (_DeviceLost, Exception) as exc:  # ALSAAudioError, format mismatch
                self._mark_unavailable(
                    f"cannot open ALSA {self.kind} device {self.device!r}: {_describe(exc)}"
                )
                self._first_attempt.set()
                if self._stop_evt.wait(backoff.next_delay()):
                    break
                continue
            self._opens += 1
            self._mark_available()
            self._first_attempt.set()
            backoff.opened()  # if it runs stably (5 s), the next loss starts the backoff over
            try:
                self._pump(pcm)
            except _DeviceLost as exc:
                self._device_losses += 1
                self._mark_unavailable(str(exc))
            except Exception as exc:  # a bug must not kill the device thread silently
                log.exception("ALSA %s thread for %r failed", self.kind, self.device)
                self._device_losses += 1
                self._mark_unavailable(f"ALSA {self.kind} {self.device!r}: {_describe(exc)}")
            finally:
                _close_quietly(pcm)
            if self._stop_evt.is_set():
                break
            if self._stop_evt.wait(backoff.next_delay()):
                break

    def _pump(self, pcm: Any) -> None:
        raise NotImplementedError

    def _poller(self, pcm: Any) -> select.poll:
        poller = select.poll()
        for fd, events in pcm.polldescriptors():
            poller.register(fd, events)
        poller.register(self._wake_r, select.POLLIN)
        return poller

    def _wait_ready(self, poller: select.poll, timeout_s: float) -> None:
        poller.poll(max(1, int(timeout_s * 1000)))
        self._drain_wake()

    # -- state reporting -----------------------------------------------------------------------

    def _mark_unavailable(self, message: str) -> None:
        self.availability.failed(message)  # reported once per outage

    def _mark_available(self) -> None:
        self.availability.running(f"ALSA {self.kind} device {self.device!r} is available again")

    def _base_stats(self) -> dict[str, Any]:
        availability = self.availability
        return {
            "backend": "alsa",
            "device": self.device,
            "state": availability.state,
            "error": availability.error,
            "last_error": availability.last_error,
            "rate": self.rate,
            "channels": self.channels,
            "period_frames": self.period_frames,
            "device_period_frames": self._device_period,
            "xruns": self._xruns,
            "opens": self._opens,
            "reopen_attempts": self._reopen_attempts,
            "device_losses": self._device_losses,
        }


class AlsaCapture(_AlsaDevice, AudioSource):
    """Microphone on an ALSA PCM: S16_LE, ``rate``, ``channels``, chunks of ``period_frames``.

    Captured periods cross to asyncio through a queue bounded at ``queue_periods``; when the
    pipeline falls that far behind, the thread stops reading, ALSA's own ring buffer overruns and
    the overrun is counted as an xrun (nothing is dropped silently between ALSA and the pipeline).
    A chunk's timestamp is ``time.monotonic()`` of its first sample, derived from the read time
    minus the frames still waiting in the PCM (``avail()``) and the frames just read.
    ``device_period_frames`` asks ALSA for another period size (e.g. larger, for fewer wake-ups);
    chunks are still ``period_frames`` long, and so they are if the device imposes its own size.
    """

    kind = "capture"

    def __init__(
        self,
        device: str = "default",
        rate: int = 16000,
        channels: int = 1,
        period_frames: int = 160,
        *,
        periods: int = 8,
        queue_periods: int = 50,
        on_state: StateCallback | None = None,
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 30.0,
        stall_timeout_s: float = 2.0,
        pcm_factory: PcmFactory | None = None,
        device_period_frames: int | None = None,
    ) -> None:
        super().__init__(
            device,
            rate,
            channels,
            period_frames,
            periods=periods,
            on_state=on_state,
            reopen_min_s=reopen_min_s,
            reopen_max_s=reopen_max_s,
            stall_timeout_s=stall_timeout_s,
            pcm_factory=pcm_factory,
            device_period_frames=device_period_frames,
        )
        self._queue_periods = max(1, queue_periods)
        self._queue: asyncio.Queue[Any] | None = None
        self._slots = threading.Semaphore(self._queue_periods)
        self._pending = np.zeros((0, channels), dtype=np.int16)
        self._pending_ts = 0.0
        self._periods = 0
        self._frames = 0
        self._meter = LevelMeter(max(1, rate // period_frames))

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = threading.Semaphore(self._queue_periods)
        self._pending = np.zeros((0, self.channels), dtype=np.int16)
        await self._start_thread()

    async def read(self) -> AudioChunk:
        """The next period; waits (without raising) while the device is unavailable."""
        queue = self._queue
        if queue is None:
            raise AudioSourceError(f"ALSA capture {self.device!r} is not started")
        item = await queue.get()
        if item is _STOPPED:
            queue.put_nowait(_STOPPED)  # wake any other reader too
            raise AudioSourceError(f"ALSA capture {self.device!r} stopped")
        self._slots.release()
        return item

    async def stop(self) -> None:
        await self._stop_thread()
        if self._queue is not None:
            self._queue.put_nowait(_STOPPED)

    def stats(self) -> dict[str, Any]:
        out = self._base_stats()
        rms, peak = self._meter.levels()
        out.update(
            periods=self._periods,
            frames=self._frames,
            overruns=self._xruns,
            queue_depth=self._queue.qsize() if self._queue is not None else 0,
            level_rms_dbfs=rms,
            level_peak_dbfs=peak,
        )
        return out

    # -- device thread -------------------------------------------------------------------------

    def _pump(self, pcm: Any) -> None:
        poller = self._poller(pcm)
        period_s = self.period_frames / self.rate
        last_data = time.monotonic()
        idle_reads = 0
        self._pending = self._pending[:0]
        while not self._stop_evt.is_set():
            try:
                n, data = pcm.read()
            except alsaaudio.ALSAAudioError as exc:
                raise _DeviceLost(f"ALSA capture device {self.device!r} failed: {_describe(exc)}") from exc
            if n < 0:
                if n == -errno.EPIPE:  # overrun; pyalsaaudio re-prepares on the next read
                    self._xruns += 1
                    self._pending = self._pending[:0]  # do not join audio across the gap
                    last_data = time.monotonic()
                    continue
                raise _DeviceLost(f"ALSA capture device {self.device!r} failed: {os.strerror(-n)}")
            now = time.monotonic()
            if n == 0:
                if now - last_data > self._stall_timeout:
                    raise _DeviceLost(
                        f"ALSA capture device {self.device!r} delivered no audio "
                        f"for {self._stall_timeout:.1f} s"
                    )
                idle_reads += 1
                if idle_reads > 2:  # the descriptors say ready but nothing comes: don't spin
                    self._stop_evt.wait(period_s / 4)
                self._wait_ready(poller, period_s * 2)
                continue
            idle_reads = 0
            last_data = now
            try:
                waiting = max(0, int(pcm.avail()))
            except (alsaaudio.ALSAAudioError, TypeError, ValueError):
                waiting = 0
            samples = np.frombuffer(data, dtype=np.int16)[: n * self.channels]
            self._accept(samples.reshape(n, self.channels), now - (waiting + n) / self.rate)
            last_data = time.monotonic()  # _accept may have waited for the pipeline

    def _accept(self, samples: np.ndarray, first_ts: float) -> None:
        """Re-chunk device periods into ``period_frames`` chunks and hand them to the loop."""
        held = self._pending.shape[0]
        self._pending_ts = first_ts - held / self.rate
        buf = np.concatenate([self._pending, samples]) if held else samples
        start = 0
        while buf.shape[0] - start >= self.period_frames:
            chunk_samples = np.array(buf[start : start + self.period_frames])  # own copy
            ts = self._pending_ts + start / self.rate
            start += self.period_frames
            if not self._deliver(AudioChunk(samples=chunk_samples, rate=self.rate, timestamp=ts)):
                return
        self._pending = np.array(buf[start:])

    def _deliver(self, chunk: AudioChunk) -> bool:
        while not self._slots.acquire(timeout=0.05):
            if self._stop_evt.is_set():
                return False
        self._meter.update(chunk.samples)
        self._periods += 1
        self._frames += chunk.frames
        assert self._loop is not None and self._queue is not None
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
        except RuntimeError:  # loop closed under us
            self._stop_evt.set()
            return False
        return True


class AlsaPlayback(_AlsaDevice, AudioSink):
    """Speaker on an ALSA PCM. ``write()`` converts the chunk to the sink's rate and channels and
    queues it for the device thread; the queue holds at most ``queue_ms`` of audio and chunks
    arriving when it is full are dropped and counted. Underruns count as xruns, except the one
    that ends a talk burst (no audio for longer than ``idle_gap_s``)."""

    kind = "playback"

    def __init__(
        self,
        device: str = "default",
        rate: int = 48000,
        channels: int = 1,
        period_frames: int = 480,
        *,
        periods: int = 4,
        queue_ms: int = 200,
        idle_gap_s: float = 0.25,
        on_state: StateCallback | None = None,
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 30.0,
        stall_timeout_s: float = 2.0,
        pcm_factory: PcmFactory | None = None,
    ) -> None:
        super().__init__(
            device,
            rate,
            channels,
            period_frames,
            periods=periods,
            on_state=on_state,
            reopen_min_s=reopen_min_s,
            reopen_max_s=reopen_max_s,
            stall_timeout_s=stall_timeout_s,
            pcm_factory=pcm_factory,
        )
        self._max_frames = max(period_frames, rate * queue_ms // 1000)
        self._idle_gap = idle_gap_s
        self._cond = threading.Condition()
        self._chunks: deque[np.ndarray] = deque()
        self._queued = 0
        self._in_flight = 0
        self._resamplers: dict[tuple[int, int], StreamResampler] = {}
        self._chunks_in = 0
        self._dropped_chunks = 0
        self._dropped_frames = 0
        self._frames_written = 0
        self._running = False

    async def start(self) -> None:
        with self._cond:
            self._chunks.clear()
            self._queued = 0
        self._running = True
        await self._start_thread()

    async def write(self, chunk: AudioChunk) -> None:
        """Queue ``chunk`` for playback without blocking; dropped (counted) if the queue is full."""
        if not self._running:
            raise RuntimeError(f"ALSA playback {self.device!r} is not started")
        samples = np.asarray(chunk.samples, dtype=np.int16)
        if samples.ndim == 1:
            samples = samples[:, None]
        if chunk.rate != self.rate:
            key = (chunk.rate, samples.shape[1])
            resampler = self._resamplers.get(key)
            if resampler is None:
                resampler = self._resamplers[key] = StreamResampler(chunk.rate, self.rate, samples.shape[1])
            samples = resampler.process(samples)
        samples = np.ascontiguousarray(convert_channels(samples, self.channels))
        n = samples.shape[0]
        with self._cond:
            self._chunks_in += 1
            if self._queued + n > self._max_frames:
                self._dropped_chunks += 1
                self._dropped_frames += n
                return
            self._chunks.append(samples)
            self._queued += n
            self._cond.notify()

    async def drain(self, timeout: float = 2.0) -> bool:
        """Wait until everything queued has been handed to ALSA; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if self._queued == 0 and self._in_flight == 0:
                    return True
            await asyncio.sleep(0.005)
        return False

    async def stop(self) -> None:
        """Stop promptly: audio still queued is discarded."""
        self._running = False
        self._stop_evt.set()
        with self._cond:
            self._cond.notify_all()
        await self._stop_thread()
        with self._cond:
            self._chunks.clear()
            self._queued = 0
            self._in_flight = 0

    def stats(self) -> dict[str, Any]:
        out = self._base_stats()
        with self._cond:
            queued = self._queued
        out.update(
            underruns=self._xruns,
            chunks_in=self._chunks_in,
            frames_written=self._frames_written,
            dropped_chunks=self._dropped_chunks,
            dropped_frames=self._dropped_frames,
            queued_frames=queued,
            queue_max_frames=self._max_frames,
        )
        return out

    # -- device thread -------------------------------------------------------------------------

    def _take(self, frames: int) -> np.ndarray | None:
        with self._cond:
            if not self._chunks:
                self._cond.wait(0.05)
            if not self._chunks or self._stop_evt.is_set():
                return None
            parts = []
            got = 0
            while self._chunks and got < frames:
                head = self._chunks[0]
                take = min(frames - got, head.shape[0])
                parts.append(head[:take])
                if take == head.shape[0]:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
                got += take
            self._queued -= got
            self._in_flight = got
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _pump(self, pcm: Any) -> None:
        poller = self._poller(pcm)
        period_s = self.period_frames / self.rate
        fb = self._frame_bytes
        pending = b""
        last_write = 0.0
        blocked_since = 0.0
        while not self._stop_evt.is_set():
            if not pending:
                with self._cond:
                    self._in_flight = 0
                data = self._take(self.period_frames)
                if data is None:
                    continue
                pending = data.tobytes()
                if time.monotonic() - last_write < self._idle_gap and _in_xrun(pcm):
                    self._xruns += 1  # the device ran dry in the middle of a stream
            try:
                n = pcm.write(pending)
            except alsaaudio.ALSAAudioError as exc:
                if "broken pipe" in str(exc).lower():  # underrun reported as an exception
                    self._xruns += 1
                    continue
                self._dropped_frames += len(pending) // fb  # lost with the device
                raise _DeviceLost(f"ALSA playback device {self.device!r} failed: {_describe(exc)}") from exc
            if n < 0:
                if n == -errno.EPIPE:  # underrun; pyalsaaudio re-prepares on the next write
                    self._xruns += 1
                    continue
                self._dropped_frames += len(pending) // fb
                raise _DeviceLost(f"ALSA playback device {self.device!r} failed: {os.strerror(-n)}")
            now = time.monotonic()
            if n == 0:  # buffer full
                if not blocked_since:
                    blocked_since = now
                elif now - blocked_since > self._stall_timeout:
                    raise _DeviceLost(
                        f"ALSA playback device {self.device!r} accepted no audio "
                        f"for {self._stall_timeout:.1f} s"
                    )
                self._wait_ready(poller, period_s * 2)
                continue
            blocked_since = 0.0
            pending = pending[n * fb :]
            self._frames_written += n
            last_write = now
        with self._cond:
            self._in_flight = 0


def _in_xrun(pcm: Any) -> bool:
    try:
        return pcm.state() == alsaaudio.PCM_STATE_XRUN
    except Exception:
        return False


def _close_quietly(pcm: Any) -> None:
    try:
        pcm.close()
    except Exception:  # closing a vanished device may fail; nothing to recover
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text
