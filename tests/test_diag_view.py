"""``fleetctl view``: WebRTC over MQTT signaling (dev/{id}/rtc/{session}) against the real agent's fan-out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import av

from fleet.live_view import live_view
from hal.camera.marker import read_stamp
from tests.support.diag import diag_rig


async def test_live_view_over_mqtt_receives_frames_and_records_mp4(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto) as rig:
        stamps: list[int] = []

        def on_frame(frame: av.VideoFrame) -> None:
            stamps.append(read_stamp(frame.to_ndarray(format="gray")).index)

        mp4 = tmp_path / "ticket.mp4"
        view = asyncio.create_task(
            live_view(rig.client, rig.device, seconds=3.0, record=mp4, on_frame=on_frame)
        )
        await asyncio.sleep(2.0)
        stats = await rig.client.send_command(rig.device, "diag.stats", {}, timeout=10)
        viewers = [c for c in stats["checks"] if c["name"].startswith("viewer.")]
        assert len(viewers) == 1 and viewers[0]["value"]["kind"] == "mqtt"  # the WHEP fan-out's session
        res = await view
        assert res.frames >= 30 and (res.width, res.height) == (640, 360)
        assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 30  # the burnt-in counter advances
        assert res.stats.get("packetsReceived", 0) > 0
        # the MP4 holds the device's own H.264 (no re-encode) and decodes to the same counter
        assert res.record_path == mp4 and res.recorded_frames >= 30
        with av.open(str(mp4)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (640, 360)
            decoded = [read_stamp(f.to_ndarray(format="gray")).index for f in container.decode(video=0)]
        assert len(decoded) == res.recorded_frames
        assert decoded == sorted(decoded) and len(set(decoded) - set(stamps)) <= 3  # the frames we watched
        # the device closed the session after the fleet's bye
        for _ in range(50):
            media = rig.agent.health.sample()["media"]
            if not media["viewers"]["sessions"]:
                break
            await asyncio.sleep(0.1)
        assert not media["viewers"]["sessions"]


async def test_bad_signaling_is_refused_with_a_structured_error(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto, diagnostics={"view_max_sessions": 1}) as rig:
        got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        topic = f"dev/{rig.device}/rtc/s1"

        def on_msg(msg: Any) -> None:
            body = json.loads(msg.payload)
            if body.get("from") == "device":
                got.put_nowait(body)

        await rig.client.conn.subscribe_wait(topic, on_msg)
        for payload, code in (
            (b"not json", "bad_json"),
            (json.dumps({"type": "offer", "sdp": "v=0\r\n", "from": "fleet"}).encode(), "bad_request"),
            (json.dumps({"type": "exec", "from": "fleet"}).encode(), "bad_request"),
        ):
            await rig.client.publish(topic, payload)
            msg = await asyncio.wait_for(got.get(), 10)
            assert msg["type"] == "error" and msg["code"] == code, msg
        # the limit: one remote view at a time
        first = asyncio.create_task(live_view(rig.client, rig.device, seconds=2.0))
        await asyncio.sleep(1.0)
        from fleet.live_view import ViewError

        try:
            await live_view(rig.client, rig.device, seconds=1.0)
        except ViewError as exc:
            assert exc.code == "busy"
        else:
            raise AssertionError("a second view over the limit was not refused")
        assert (await first).frames > 0
