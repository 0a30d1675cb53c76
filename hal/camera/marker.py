"""A machine-readable stamp burnt into video frames: frame counter and capture time.

Two rows of 32 luma blocks in the top-left corner (black = 0, white = 1, most significant bit
first): row 0 is the frame index, row 1 the capture wall-clock time in milliseconds modulo 2**32.
Blocks are large enough to survive H.264 at low bitrates, so a receiver that decodes the stream
(a test, a benchmark, ``fleetctl view``) can read which frame it got and when it was captured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = 32
BLACK, WHITE = 16, 235  # video-range luma


def block_size(width: int) -> int:
    """Block edge in pixels for a frame ``width`` pixels wide (16 when there is room, else smaller)."""
    return max(2, min(16, (width // (BITS + 2)) // 2 * 2))


@dataclass(frozen=True)
class Stamp:
    index: int
    capture_ms: int  # wall-clock milliseconds modulo 2**32


def write_stamp(luma: np.ndarray, index: int, capture_ms: int) -> None:
    """Burn ``index`` and ``capture_ms`` into the luma plane (``uint8``, shape ``(h, w)``) in place."""
    size = block_size(luma.shape[1])
    if luma.shape[0] < 2 * size or luma.shape[1] < BITS * size:
        return  # too small to carry a stamp
    for row, value in enumerate((index & 0xFFFFFFFF, capture_ms & 0xFFFFFFFF)):
        bits = (value >> np.arange(BITS - 1, -1, -1)) & 1
        strip = np.repeat(np.where(bits == 1, WHITE, BLACK).astype(np.uint8), size)
        luma[row * size : (row + 1) * size, : BITS * size] = strip[None, :]


def read_stamp(luma: np.ndarray) -> Stamp:
    """Read a stamp back from a decoded luma plane (block centres thresholded at mid-grey)."""
    size = block_size(luma.shape[1])
    centres = np.arange(BITS) * size + size // 2
    values = []
    for row in range(2):
        samples = luma[row * size + size // 2, centres].astype(np.int32)
        bits = (samples > (BLACK + WHITE) // 2).astype(np.int64)
        values.append(int((bits << np.arange(BITS - 1, -1, -1)).sum()))
    return Stamp(index=values[0], capture_ms=values[1])
