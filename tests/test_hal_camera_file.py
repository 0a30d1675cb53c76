"""FileCamera against real video files written with PyAV (libx264 in MP4)."""

from __future__ import annotations

import asyncio
import fractions
import time
import wave

import av
import pytest

from hal.camera.base import CameraError
from hal.camera.file import FileCamera
from hal.camera.frames import rotate_frame
from hal.camera.marker import read_stamp
from hal.camera.test_pattern import TestPatternCamera


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """12 frames of the stamped test pattern, 320x240, H.264 in MP4."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    pattern = TestPatternCamera(320, 240, 30)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "10"}
        for i in range(12):
            frame = pattern.render(i).frame
            frame.pts, frame.time_base = i, fractions.Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def index_of(frame: av.VideoFrame) -> int:
    return read_stamp(frame.to_ndarray(format="gray")).index


async def test_loops_the_file_paced_at_fps(clip):
    cam = FileCamera(clip, 320, 240, fps=30)
    await cam.start()
    started = time.monotonic()
    try:
        frames = [await cam.read() for _ in range(20)]
    finally:
        await cam.stop()
    elapsed = time.monotonic() - started
    assert 19 / 30 - 0.05 < elapsed < 19 / 30 + 0.5
    assert [index_of(f.frame) for f in frames] == [i % 12 for i in range(20)]
    assert [f.index for f in frames] == list(range(20))
    assert all(b.timestamp > a.timestamp for a, b in zip(frames, frames[1:], strict=False))
    assert cam.stats()["loops"] >= 1


async def test_scales_and_rotates(clip):
    cam = FileCamera(clip, 640, 480, fps=30, rotation=90)
    await cam.start()
    try:
        frame = (await cam.read()).frame
    finally:
        await cam.stop()
    assert (cam.width, cam.height) == (480, 640)
    assert (frame.width, frame.height, frame.format.name) == (480, 640, "yuv420p")
    assert index_of(rotate_frame(frame, 270)) == 0


async def test_late_reader_skips_instead_of_queueing(clip):
    cam = FileCamera(clip, 320, 240, fps=30)
    await cam.start()
    try:
        await cam.read()
        await asyncio.sleep(0.3)
        late = await cam.read()
        assert late.index >= 8 and cam.stats()["skipped"] >= 7
        assert time.monotonic() - late.timestamp < 0.1  # delivered now, not from a backlog
    finally:
        await cam.stop()


async def test_missing_and_undecodable_files_raise_camera_error(tmp_path):
    with pytest.raises(CameraError, match="does not exist"):
        await FileCamera(tmp_path / "nope.mp4", 320, 240, 30).start()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(CameraError, match="cannot open video file"):
        await FileCamera(junk, 320, 240, 30).start()
    audio_only = tmp_path / "tone.wav"
    with wave.open(str(audio_only), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x01" * 8000)
    with pytest.raises(CameraError, match="no video stream"):
        await FileCamera(audio_only, 320, 240, 30).start()
