"""Any camera backend under the HAL's availability contract (``hal.availability``).

The backends themselves stay simple: ``start()`` and ``read()`` raise ``CameraError`` when the
device is missing or goes away. ``ReopeningCamera`` wraps one and never raises for that: it
reports ``on_state(False, "camera unavailable: <why>")`` (at start, on loss and on every failed
reopen, so the callback sees each reason), closes the backend, reopens it with backoff
(``reopen_min_s`` doubling to ``reopen_max_s``, starting over after a stable run) while ``read()``
waits, and reports ``on_state(True, "camera is back")`` with the first frame after the outage.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hal.availability import Availability, Backoff, StateCallback
from hal.camera.base import Camera, CameraError, CapturedFrame

log = logging.getLogger(__name__)


class ReopeningCamera(Camera):
    """``camera`` that reports loss and return through ``on_state`` and reopens itself."""

    def __init__(
        self,
        camera: Camera,
        on_state: StateCallback | None = None,
        *,
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 30.0,
        stable_s: float = 5.0,
    ) -> None:
        self.camera = camera
        self.availability = Availability(
            "camera", on_state, repeat_failures=True, backoff=Backoff(reopen_min_s, reopen_max_s, stable_s)
        )
        self.opens = 0  # successful starts of the backend; a change means a new picture
        self._open = False
        self._confirm = False  # opened, first frame not yet delivered

    @property
    def width(self) -> int:  # type: ignore[override]
        return self.camera.width

    @property
    def height(self) -> int:  # type: ignore[override]
        return self.camera.height

    @property
    def fps(self) -> int:  # type: ignore[override]
        return self.camera.fps

    async def start(self) -> None:
        """Open the backend; a missing camera is reported, not raised (``read()`` waits for it)."""
        self.availability.bind()
        self.availability.state = "starting"
        await self._try_open()

    async def read(self) -> CapturedFrame:
        """The next frame; waits (reopening with backoff) while the camera is unavailable."""
        while True:
            if not self._open:
                await asyncio.sleep(self.availability.backoff.next_delay())
                await self._try_open()
                continue
            try:
                frame = await self.camera.read()
            except CameraError as exc:
                self._open = False
                await self._lost(exc)
                continue
            if self._confirm:
                self._confirm = False
                self.availability.running("camera is back")
            return frame

    async def stop(self) -> None:
        self._open = self._confirm = False
        self.availability.state = "stopped"
        await self.camera.stop()

    async def _try_open(self) -> None:
        try:
            await self.camera.start()
        except CameraError as exc:
            await self._lost(exc)
            return
        self._open = self._confirm = True
        self.opens += 1
        self.availability.backoff.opened()

    async def _lost(self, exc: CameraError) -> None:
        self.availability.failed(f"camera unavailable: {exc}")
        try:
            await self.camera.stop()
        except Exception:  # the device may already be gone
            log.debug("camera stop after failure", exc_info=True)

    def stats(self) -> dict[str, Any]:
        return {**self.camera.stats(), "state": self.availability.state}
