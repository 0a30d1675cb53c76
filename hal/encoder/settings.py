"""What the encoder probe and the encoders need (plain values, no agent types).

``device_agent.config.EncoderSection`` extends this dataclass with the ``[encoder]`` validation and
the fan-out's own keys (``min_bitrate``, ``idr_min_interval_ms``), so a config section is passed to
``hal.encoder`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EncoderSettings:
    backend: str = "auto"  # auto | picamera2 | v4l2m2m | libx264
    bitrate: int = 2_000_000
    max_bitrate: int = 6_000_000
    keyframe_interval_s: float = 2.0
