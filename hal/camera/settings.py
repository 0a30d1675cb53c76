"""What the camera factory needs to build a camera (plain values, no agent types).

``device_agent.config.CameraSection`` extends this dataclass with the ``[camera]`` validation, so a
config section is passed to ``hal.camera.factory`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CameraSettings:
    backend: str = "test-pattern"  # test-pattern | file | v4l2 | picamera2
    device: str = "/dev/video0"
    path: str = ""
    width: int = 1280
    height: int = 720
    fps: int = 30
    rotation: int = 0
    pattern: str = "bars"  # test-pattern only: bars (cheap to encode) | busy (needs several Mbit/s)
