"""A missing camera in the running agent: a P1 alert from the camera's on_state, cleared when it comes
back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support.clips import write_clip
from tests.support.media import media_config, running_agent


async def test_a_missing_camera_is_alerted_not_restarted_and_cleared_when_back(tmp_path: Path) -> None:
    path = tmp_path / "camera.mp4"
    config = media_config(
        tmp_path, camera={"backend": "file", "path": str(path), "width": 160, "height": 120}
    )
    async with running_agent(config) as agent:
        media = agent.get("media")
        await asyncio.sleep(0.3)
        alerts = {a.code: a for a in agent.alerts.active()}
        assert alerts["camera_unavailable"].severity == "P1"
        assert str(path) in alerts["camera_unavailable"].message
        video = media.health()["video"]
        assert video["camera"]["state"] == "unavailable" and video["camera_errors"] >= 1
        assert "does not exist" in video["last_error"]
        assert media.healthy() and agent.healthy()  # retried and alerted, not a watchdog restart
        write_clip(path)  # the camera is plugged in
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            any(a.code == "camera_unavailable" for a in agent.alerts.active())
            or media.health()["video"]["fps"] == 0.0
        ):
            await asyncio.sleep(0.1)
        assert not any(a.code == "camera_unavailable" for a in agent.alerts.active())
        video = media.health()["video"]
        assert video["camera"]["state"] == "running" and video["last_error"] is None and video["fps"] > 0
