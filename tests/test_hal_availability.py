"""The HAL's availability contract: the shared backoff, and cameras that report and reopen themselves."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hal.availability import Backoff
from hal.camera.factory import create_camera, create_reopening_camera
from hal.camera.file import FileCamera
from hal.camera.reopening import ReopeningCamera
from hal.camera.settings import CameraSettings
from tests.support.clips import write_clip


def test_backoff_doubles_to_the_cap_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(0.1, 0.5, stable_s=0.05)
    assert [backoff.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.opened()
    assert backoff.next_delay() == 0.5  # lost at once: a flapping device keeps backing off
    backoff.opened()
    time.sleep(0.06)
    assert backoff.next_delay() == 0.1  # it had worked for stable_s: start over
    with pytest.raises(ValueError, match="reopen_min_s <= reopen_max_s"):
        Backoff(1.0, 0.5)


async def test_a_missing_camera_is_reported_reopened_with_backoff_and_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "camera.mp4"
    states: list[tuple[bool, str]] = []
    cam = ReopeningCamera(
        FileCamera(path, 160, 120, fps=30),
        lambda ok, msg: states.append((ok, msg)),
        reopen_min_s=0.02,
        reopen_max_s=0.08,
    )
    await cam.start()  # does not raise: the camera is reported missing instead
    reader = asyncio.create_task(cam.read())
    try:
        deadline = time.monotonic() + 5
        while cam.availability.failures < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert cam.stats()["state"] == "unavailable" and not reader.done()  # read() waits
        # every failed attempt is reported, with its reason
        assert [ok for ok, _ in states] == [False] * cam.availability.failures
        assert states[0] == (False, f"camera unavailable: video file {path} does not exist")
        write_clip(path)
        frame = await asyncio.wait_for(reader, 5.0)
        assert (frame.frame.width, frame.frame.height) == (160, 120)
        assert states[-1] == (True, "camera is back")
        assert cam.stats()["state"] == "running" and cam.availability.error == "" and cam.opens == 1
        assert (await cam.read()).index == frame.index + 1
    finally:
        reader.cancel()
        await cam.stop()
    assert cam.stats()["state"] == "stopped"


async def test_the_factory_gives_bare_backends_and_reopening_ones(tmp_path: Path) -> None:
    settings = CameraSettings(backend="file", path=str(tmp_path / "none.mp4"), width=160, height=120)
    bare = create_camera(settings)
    assert isinstance(bare, FileCamera)
    states: list[bool] = []
    cam = create_reopening_camera(settings, on_state=lambda ok, msg: states.append(ok))
    assert isinstance(cam, ReopeningCamera) and (cam.width, cam.height, cam.fps) == (160, 120, 30)
    await cam.start()
    await cam.stop()
    assert states == [False]
