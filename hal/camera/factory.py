"""Build the configured camera backend (``[camera] backend``)."""

from __future__ import annotations

from device_agent.config import CameraSection
from hal.camera.base import Camera


def create_camera(section: CameraSection) -> Camera:
    """A raw-frame camera for ``section.backend``; the Pi and V4L2 backends import their libraries lazily."""
    if section.backend == "test-pattern":
        from hal.camera.test_pattern import TestPatternCamera

        return TestPatternCamera(section.width, section.height, section.fps, section.rotation)
    if section.backend == "file":
        from hal.camera.file import FileCamera

        return FileCamera(section.path, section.width, section.height, section.fps, section.rotation)
    if section.backend == "v4l2":
        from hal.camera.v4l2 import V4L2Camera

        return V4L2Camera(section.device, section.width, section.height, section.fps, section.rotation)
    if section.backend == "picamera2":
        from hal.camera.picamera2 import Picamera2Camera

        return Picamera2Camera(section.width, section.height, section.fps, section.rotation)
    raise ValueError(f"unknown camera backend {section.backend!r}")
