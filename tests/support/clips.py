"""Small real video files for camera tests (the stamped test pattern, H.264 in MP4, written with PyAV)."""

from __future__ import annotations

import fractions
from pathlib import Path

import av

from hal.camera.test_pattern import TestPatternCamera


def write_clip(path: Path, frames: int = 6) -> None:
    """``frames`` 160x120 frames at ``path``, which appears complete at once (renamed into place)."""
    pattern = TestPatternCamera(160, 120, 30)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = pattern.render(i).frame
            frame.pts, frame.time_base = i, fractions.Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    tmp.rename(path)  # appears complete, as a camera that is plugged in
