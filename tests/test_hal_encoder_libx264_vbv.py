"""libx264's VBV buffer follows the start target: the first IDR fits a thin link (720p, busy pattern)."""

from __future__ import annotations

from hal.camera.test_pattern import TestPatternCamera
from hal.encoder.pyav import Libx264Encoder

START_BPS = 400_000  # device_agent.media.rate_control.START_BPS: a new viewer's estimate


def test_first_idr_at_a_low_start_rate_is_bounded() -> None:
    cam = TestPatternCamera(1280, 720, 30, pattern="busy")
    enc = Libx264Encoder(1280, 720, 30, bitrate=START_BPS, max_bitrate=6_000_000)
    sizes = [len(p.data) for i in range(30) for p in enc.encode(cam.render(i))]
    enc.close()
    assert len(sizes) == 30
    # at most 0.6 s of the start rate (it was 52 KB = 1.05 s with a max_bitrate / 2 buffer)
    assert sizes[0] <= 0.6 * START_BPS / 8, sizes[0]
    # and the first second as a whole stays near the target (it was ~2.5x over)
    assert sum(sizes) * 8 <= 1.5 * START_BPS, sum(sizes)
