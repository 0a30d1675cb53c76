"""A moving test pattern with a burnt-in frame counter and capture timestamp (no hardware needed)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import av
import numpy as np

from hal.camera.pacing import FrameClock
from hal.camera.base import Camera, CapturedFrame
from hal.camera.marker import BITS, block_size, write_stamp

# (Y, U, V) of 75 % colour bars: white, yellow, cyan, green, magenta, red, blue, black
_BARS = [(180, 128, 128), (162, 44, 142), (131, 156, 44), (112, 72, 58),
         (84, 184, 198), (65, 100, 212), (35, 212, 114), (16, 128, 128)]

# 3x5 digit glyphs, one string of 15 bits per digit (row-major)
_GLYPHS = ["111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
           "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111"]


class TestPatternCamera(Camera):
    """Colour bars scrolling sideways, a bouncing box, the frame number in digits and the stamp.

    Frames are produced on a fixed schedule from the monotonic clock. A reader that falls behind
    skips the frames it missed (counted in ``stats()['skipped']``) rather than building up latency.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, width: int = 1280, height: int = 720, fps: int = 30, rotation: int = 0) -> None:
        self.width, self.height = (height, width) if rotation in (90, 270) else (width, height)
        self.fps = fps
        self._clock = FrameClock(fps)
        self._running = False
        self._bars = self._make_bars()

    def _make_bars(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bars twice the frame width, so any horizontal offset is a plain slice."""
        w, cw = self.width, self.width // 2
        cols = np.arange(2 * w) * len(_BARS) // w % len(_BARS)
        y = np.array([_BARS[c][0] for c in cols], np.uint8)
        u = np.array([_BARS[c][1] for c in cols[::2]], np.uint8)[: 2 * cw]
        v = np.array([_BARS[c][2] for c in cols[::2]], np.uint8)[: 2 * cw]
        return y, u, v

    async def start(self) -> None:
        self._clock.restart()
        self._running = True

    async def stop(self) -> None:
        self._running = False

    async def read(self) -> CapturedFrame:
        if not self._running:
            raise RuntimeError("camera not started")
        index = await self._clock.next_slot()
        return await asyncio.to_thread(self.render, index)

    def render(self, index: int) -> CapturedFrame:
        """Draw frame ``index`` now; its timestamp is the moment it was drawn."""
        w, h = self.width, self.height
        ch, cw = h // 2, w // 2
        shift = (index * 4) % w
        yuv = np.empty((h * 3 // 2, w), np.uint8)
        luma = yuv[:h]
        y, u, v = self._bars
        luma[:] = y[shift:shift + w][None, :]
        chroma = yuv[h:].reshape(2, ch, cw)  # planar U then V
        chroma[0] = u[shift // 2:shift // 2 + cw][None, :]
        chroma[1] = v[shift // 2:shift // 2 + cw][None, :]
        self._draw_box(luma, chroma, index)
        self._draw_digits(luma, index)
        size = block_size(w)
        chroma[:, :size, :BITS * size // 2] = 128  # neutral colour under the stamp: black stays black in RGB
        timestamp = time.monotonic()
        write_stamp(luma, index, int(time.time() * 1000))
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        return CapturedFrame(frame=frame, index=index, timestamp=timestamp)

    def _draw_box(self, luma: np.ndarray, chroma: np.ndarray, index: int) -> None:
        w, h = self.width, self.height
        side = max(2, min(w, h) // 6 // 2 * 2)
        span_x, span_y = max(1, w - side), max(1, h - side)
        x = abs((index * 6) % (2 * span_x) - span_x) // 2 * 2
        y = abs((index * 4) % (2 * span_y) - span_y) // 2 * 2
        luma[y:y + side, x:x + side] = 235
        chroma[:, y // 2:(y + side) // 2, x // 2:(x + side) // 2] = 128

    def _draw_digits(self, luma: np.ndarray, index: int) -> None:
        scale = max(1, self.height // 60)
        text = str(index)
        gw, gh = 3 * scale, 5 * scale
        x0 = self.width - (len(text) * (gw + scale)) - 2 * scale
        y0 = self.height - gh - 2 * scale
        if x0 < 0 or y0 < 0:
            return
        luma[y0 - scale:y0 + gh + scale, x0 - scale:self.width - scale] = 16
        for i, ch in enumerate(text):
            glyph = np.array([int(b) for b in _GLYPHS[int(ch)]], np.uint8).reshape(5, 3)
            block = np.kron(glyph, np.ones((scale, scale), np.uint8)) * 219 + 16
            x = x0 + i * (gw + scale)
            luma[y0:y0 + gh, x:x + gw] = block

    def stats(self) -> dict[str, Any]:
        return {"backend": "test-pattern", "frames": self._clock.index, "skipped": self._clock.skipped,
                "width": self.width, "height": self.height, "fps": self.fps}
