"""Build the configured camera backend (``CameraSettings.backend``, the agent's ``[camera] backend``)."""

from __future__ import annotations

from hal.availability import StateCallback
from hal.camera.base import Camera
from hal.camera.reopening import ReopeningCamera
from hal.camera.settings import CameraSettings


def create_camera(section: CameraSettings) -> Camera:
    """The bare backend for ``section.backend``: ``start()``/``read()`` raise ``CameraError`` when the
    camera is missing or lost (one-shot users such as the doctor). The Pi and V4L2 backends import
    their libraries lazily."""
    if section.backend == "test-pattern":
        from hal.camera.test_pattern import TestPatternCamera

        return TestPatternCamera(
            section.width, section.height, section.fps, section.rotation, section.pattern
        )
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


def create_reopening_camera(
    section: CameraSettings,
    on_state: StateCallback | None = None,
    *,
    reopen_min_s: float = 0.5,
    reopen_max_s: float = 30.0,
) -> ReopeningCamera:
    """The backend under the availability contract: loss and return go to ``on_state(available,
    message)``, the camera is reopened with backoff and ``read()`` waits meanwhile (the media
    pipeline's camera, like ``hal.audio.factory.create_source`` for the microphone)."""
    return ReopeningCamera(
        create_camera(section), on_state, reopen_min_s=reopen_min_s, reopen_max_s=reopen_max_s
    )
