"""A moving test pattern with a burnt-in frame counter and capture timestamp (no hardware needed).

Two patterns: ``bars`` (colour bars, a bouncing box: cheap to encode, a few hundred kbit/s at
720p) and ``busy`` (scrolling 4x4-pixel detail, fresh grain every frame, moving inverted blocks,
chroma detail: several Mbit/s at 720p, so rate control has something to do). Both are a pure
function of the frame index (fixed seeds), drawn with numpy from tables built once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import av
import numpy as np

from hal.camera.base import Camera, CapturedFrame
from hal.camera.marker import BITS, block_size, write_stamp
from hal.camera.pacing import FrameClock

# (Y, U, V) of 75 % colour bars: white, yellow, cyan, green, magenta, red, blue, black
_BARS = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
    (16, 128, 128),
]

# 3x5 digit glyphs, one string of 15 bits per digit (row-major)
PATTERNS = ("bars", "busy")
BUSY_GRAIN = 8  # per-frame grain amplitude (luma steps, 0..BUSY_GRAIN-1 added)
_BUSY_TILE = 64  # grain table margin: each frame takes its own window of it

_GLYPHS = [
    "111101101101111",
    "010110010010111",
    "111001111100111",
    "111001111001111",
    "101101111001001",
    "111100111001111",
    "111100111101111",
    "111001001001001",
    "111101111101111",
    "111101111001111",
]


class TestPatternCamera(Camera):
    """Colour bars scrolling sideways, a bouncing box, the frame number in digits and the stamp.

    Frames are produced on a fixed schedule from the monotonic clock. A reader that falls behind
    skips the frames it missed (counted in ``stats()['skipped']``) rather than building up latency.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self, width: int = 1280, height: int = 720, fps: int = 30, rotation: int = 0, pattern: str = "bars"
    ) -> None:
        if pattern not in PATTERNS:
            raise ValueError(f"unknown test pattern {pattern!r} ({', '.join(PATTERNS)})")
        self.width, self.height = (height, width) if rotation in (90, 270) else (width, height)
        self.fps = fps
        self.pattern = pattern
        self._clock = FrameClock(fps)
        self._running = False
        self._bars = self._make_bars()
        self._busy = self._make_busy() if pattern == "busy" else None

    def _make_busy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Tables for ``busy``: luma detail and chroma blocks twice the frame (scrolling is a slice),
        and a grain table one tile larger than the frame (each frame adds its own window of it)."""
        w, h = self.width, self.height
        rng = np.random.default_rng(5)
        cells = rng.integers(16, 236 - BUSY_GRAIN, (-(-h // 4), -(-w // 4)), dtype=np.uint8)
        texture = np.tile(np.kron(cells, np.ones((4, 4), np.uint8))[:h, :w], (2, 2))
        grain = rng.integers(0, BUSY_GRAIN, (h + _BUSY_TILE, w + _BUSY_TILE), dtype=np.uint8)
        ch, cw = h // 2, w // 2
        blocks = [
            np.tile(
                np.kron(
                    rng.integers(100, 156, (-(-ch // 16), -(-cw // 16)), dtype=np.uint8),
                    np.ones((16, 16), np.uint8),
                )[:ch, :cw],
                (2, 2),
            )
            for _ in range(2)
        ]
        return texture, grain, blocks[0], blocks[1]

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
        chroma = yuv[h:].reshape(2, ch, cw)  # planar U then V
        if self._busy is not None:
            self._draw_busy(luma, chroma, index)
        else:
            y, u, v = self._bars
            luma[:] = y[shift : shift + w][None, :]
            chroma[0] = u[shift // 2 : shift // 2 + cw][None, :]
            chroma[1] = v[shift // 2 : shift // 2 + cw][None, :]
        self._draw_box(luma, chroma, index)
        self._draw_digits(luma, index)
        size = block_size(w)
        chroma[:, :size, : BITS * size // 2] = 128  # neutral colour under the stamp: black stays black in RGB
        timestamp = time.monotonic()
        write_stamp(luma, index, int(time.time() * 1000))
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        return CapturedFrame(frame=frame, index=index, timestamp=timestamp)

    def _draw_busy(self, luma: np.ndarray, chroma: np.ndarray, index: int) -> None:
        """Detail and chroma scrolling together, this frame's grain window, four moving inverted blocks."""
        assert self._busy is not None
        texture, grain, u, v = self._busy
        w, h = self.width, self.height
        ch, cw = h // 2, w // 2
        dx, dy = (index * 4) % w // 2 * 2, (index * 2) % h // 2 * 2  # even: chroma moves with luma
        gx, gy = (index * 37) % _BUSY_TILE, (index * 23 + index // _BUSY_TILE) % _BUSY_TILE
        np.add(texture[dy : dy + h, dx : dx + w], grain[gy : gy + h, gx : gx + w], out=luma)
        bw, bh = max(2, w // 8), max(2, h // 6)
        for k in range(4):
            bx = int((np.sin(index / 15 + k) + 1) / 2 * (w - bw))
            by = int((np.cos(index / 11 + 2 * k) + 1) / 2 * (h - bh))
            block = luma[by : by + bh, bx : bx + bw]
            np.subtract(251, block, out=block)
        chroma[0] = u[dy // 2 : dy // 2 + ch, dx // 2 : dx // 2 + cw]
        chroma[1] = v[dy // 2 : dy // 2 + ch, dx // 2 : dx // 2 + cw]

    def _draw_box(self, luma: np.ndarray, chroma: np.ndarray, index: int) -> None:
        w, h = self.width, self.height
        side = max(2, min(w, h) // 6 // 2 * 2)
        span_x, span_y = max(1, w - side), max(1, h - side)
        x = abs((index * 6) % (2 * span_x) - span_x) // 2 * 2
        y = abs((index * 4) % (2 * span_y) - span_y) // 2 * 2
        luma[y : y + side, x : x + side] = 235
        chroma[:, y // 2 : (y + side) // 2, x // 2 : (x + side) // 2] = 128

    def _draw_digits(self, luma: np.ndarray, index: int) -> None:
        scale = max(1, self.height // 60)
        text = str(index)
        gw, gh = 3 * scale, 5 * scale
        x0 = self.width - (len(text) * (gw + scale)) - 2 * scale
        y0 = self.height - gh - 2 * scale
        if x0 < 0 or y0 < 0:
            return
        luma[y0 - scale : y0 + gh + scale, x0 - scale : self.width - scale] = 16
        for i, ch in enumerate(text):
            glyph = np.array([int(b) for b in _GLYPHS[int(ch)]], np.uint8).reshape(5, 3)
            block = np.kron(glyph, np.ones((scale, scale), np.uint8)) * 219 + 16
            x = x0 + i * (gw + scale)
            luma[y0 : y0 + gh, x : x + gw] = block

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "test-pattern",
            "pattern": self.pattern,
            "frames": self._clock.index,
            "skipped": self._clock.skipped,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
        }
