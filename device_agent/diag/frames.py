"""Camera frame helpers for diagnostics: brightness/contrast and JPEG encoding (PyAV mjpeg)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def frame_stats(frame: av.VideoFrame) -> dict[str, float]:
    """Brightness (mean luma 0..255) and contrast (luma standard deviation) of a frame."""
    luma = frame.to_ndarray(format="gray").astype(np.float32)
    return {
        "brightness": round(float(luma.mean()), 1),
        "contrast": round(float(luma.std()), 1),
        "width": frame.width,
        "height": frame.height,
    }


def encode_jpeg(frame: av.VideoFrame, width: int, height: int, qscale: int = 5) -> bytes:
    """JPEG bytes of ``frame`` scaled to ``width`` x ``height`` (blocking: call it in a thread)."""
    scaled = frame.reformat(width=width, height=height, format="yuvj420p")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.qmin = codec.qmax = qscale
    scaled.pts = 0
    packets = codec.encode(scaled) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)
