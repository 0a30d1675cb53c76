"""The HAL's availability contract: a device that goes missing is reported and reopened with backoff.

Every backend that can lose its device follows it: the ALSA capture and playback devices
(``hal.audio.alsa``), every camera behind ``hal.camera.reopening.ReopeningCamera`` and the
picamera2 H.264 source (``hal.encoder.picamera2``). Two pieces, used by all of them:

- ``Backoff``: the wait before the next open attempt, ``reopen_min_s`` doubling up to
  ``reopen_max_s``; it starts over from ``reopen_min_s`` once the device had worked for
  ``stable_s`` before it was lost (a device that flaps keeps backing off).
- ``Availability``: the device's ``state`` (``stopped``, ``starting``, ``running``,
  ``unavailable``), ``error`` (why it is unavailable now), ``last_error`` and ``failures``, and
  the report: ``on_state(False, message)`` when the device goes missing (at start or while
  running), ``on_state(True, message)`` when it is back. The callback runs on the event loop,
  whichever thread reports (ALSA reports from its device thread), and may return a coroutine.
  With ``repeat_failures`` every later failed attempt is reported too, each with its reason
  (cameras); without, one report per outage (ALSA). Either way ``on_state(True, ...)`` comes once,
  when the device is back.

Backends never raise for a missing device under this contract: reads wait until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

StateCallback = Callable[[bool, str], Any]  # (available, message)


class Backoff:
    """Delays between open attempts: ``min_s``, doubling up to ``max_s``; reset after a stable run."""

    def __init__(self, min_s: float = 0.5, max_s: float = 30.0, stable_s: float = 5.0) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("need 0 < reopen_min_s <= reopen_max_s")
        self.min_s, self.max_s, self.stable_s = min_s, max_s, stable_s
        self._delay = min_s
        self._opened_at: float | None = None

    def opened(self) -> None:
        """The device opened: if it then works for ``stable_s``, the next delay starts over."""
        self._opened_at = time.monotonic()

    def next_delay(self) -> float:
        """The wait before the next attempt (call once per failure)."""
        if self._opened_at is not None and time.monotonic() - self._opened_at > self.stable_s:
            self._delay = self.min_s
        self._opened_at = None
        delay = self._delay
        self._delay = min(self._delay * 2.0, self.max_s)
        return delay


class Availability:
    """State and reporting of one device (see the module docstring for the contract)."""

    def __init__(
        self,
        what: str,
        on_state: StateCallback | None = None,
        *,
        repeat_failures: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        self.what = what  # for log lines: "ALSA capture 'hw:1'", "camera"
        self.on_state = on_state
        self.repeat_failures = repeat_failures
        self.backoff = backoff or Backoff()
        self.state = "stopped"
        self.error = ""
        self.last_error = ""
        self.failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Deliver reports on ``loop`` (default: the running loop); call from ``start()``."""
        self._loop = loop or asyncio.get_running_loop()

    @property
    def unavailable(self) -> bool:
        return self.state == "unavailable"

    def failed(self, message: str) -> None:
        """An open attempt failed or the device was lost: ``state`` becomes ``unavailable``."""
        self.failures += 1
        self.error = self.last_error = message
        first = self.state != "unavailable"
        self.state = "unavailable"
        if first:
            log.warning(
                "%s; reopening with backoff (%.2g..%.2g s)", message, self.backoff.min_s, self.backoff.max_s
            )
        else:
            log.log(
                logging.INFO if self.repeat_failures else logging.DEBUG, "%s (still unavailable)", message
            )
        if first or self.repeat_failures:
            self._notify(False, message)

    def running(self, back_message: str) -> None:
        """The device works; reported with ``back_message`` if it was unavailable."""
        was_unavailable = self.state == "unavailable"
        self.state = "running"
        self.error = ""
        if was_unavailable:
            log.info("%s", back_message)
            self._notify(True, back_message)

    def _notify(self, available: bool, message: str) -> None:
        if self.on_state is None:
            return
        loop = self._loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:  # a device thread
            on_loop = False
        if loop is None or on_loop:  # not bound (no loop to hop to), or already on it
            self._call(available, message)
            return
        try:
            loop.call_soon_threadsafe(self._call, available, message)
        except RuntimeError:  # the loop has closed
            pass

    def _call(self, available: bool, message: str) -> None:
        try:
            assert self.on_state is not None
            result = self.on_state(available, message)
            if asyncio.iscoroutine(result):
                asyncio.ensure_future(result)
        except Exception:
            log.exception("on_state callback for %s failed", self.what)
