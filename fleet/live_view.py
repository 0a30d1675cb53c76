"""``fleetctl view``: a WebRTC look at a device behind NAT, signaled over MQTT (``dev/{id}/rtc/{session}``).

The fleet side makes the offer (receive-only video, ICE gathered up front: no trickle), the
device answers with a session from its media fan-out (the WHEP viewers' shared encoder). Received
frames are decoded by aiortc (counted, handed to ``on_frame``); with ``record`` the *encoded* H.264
access units are tapped before aiortc's decoder and muxed into an MP4 with PyAV: no re-encode, so
the file shows exactly what the device sent.

The tap replaces ``RTCRtpReceiver``'s private decoder queue (aiortc is pinned; guarded by
tests/test_diag_view.py): everything put on it still reaches the decoder unchanged.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import paho.mqtt.client as mqtt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from device_agent import protocol
from device_agent.media.qoe_client import QoeProbe
from fleet.client import FleetClient

DECODER_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"  # aiortc 1.x private attribute


class ViewError(Exception):
    """The device refused the view or never answered (``code`` machine-readable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _TapQueue(queue.Queue[Any]):
    """The receiver's decoder queue, also handing each encoded H.264 access unit to ``sink``."""

    def __init__(self, sink: Callable[[bytes, int], None]) -> None:
        super().__init__()
        self.sink = sink

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            if codec.name == "H264":
                self.sink(bytes(frame.data), int(frame.timestamp))
        super().put(item, block, timeout)


def tap_encoded(receiver: RTCRtpReceiver, sink: Callable[[bytes, int], None]) -> None:
    """Call ``sink(annexb_access_unit, rtp_timestamp_90khz)`` for every H.264 frame ``receiver`` decodes."""
    if not isinstance(getattr(receiver, DECODER_QUEUE_ATTR, None), queue.Queue):
        raise RuntimeError(
            "aiortc's RTCRtpReceiver changed: no decoder queue to tap (see fleet/live_view.py)"
        )
    setattr(receiver, DECODER_QUEUE_ATTR, _TapQueue(sink))


def nal_types(access_unit: bytes) -> list[int]:
    """NAL unit types in an Annex-B access unit."""
    out = []
    i = access_unit.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(access_unit):
        out.append(access_unit[i + 3] & 0x1F)
        i = access_unit.find(b"\x00\x00\x01", i + 3)
    return out


def parameter_sets(access_unit: bytes) -> bytes:
    """The SPS and PPS NAL units (Annex-B, with start codes) of a keyframe access unit."""
    parts = access_unit.split(b"\x00\x00\x01")
    keep = [p.rstrip(b"\x00") for p in parts[1:] if p and (p[0] & 0x1F) in (7, 8)]
    return b"".join(b"\x00\x00\x00\x01" + p for p in keep)


class Mp4Recorder:
    """Collects encoded access units from the first keyframe on and muxes them into an MP4 (no re-encode)."""

    def __init__(self, path: Path, max_seconds: float) -> None:
        self.path = path
        self.max_ts = int(max_seconds * 90000)
        self.units: list[tuple[bytes, int, bool]] = []
        self._t0: int | None = None

    def add(self, data: bytes, ts: int) -> None:
        key = 5 in nal_types(data)
        if self._t0 is None:
            if not key:
                return
            self._t0 = ts
        rel = ts - self._t0
        if rel <= self.max_ts:
            self.units.append((data, rel, key))

    @property
    def seconds(self) -> float:
        return self.units[-1][1] / 90000 if self.units else 0.0

    def write(self, width: int, height: int) -> int:
        """Mux what was collected; returns the number of frames written (blocking: run in a thread)."""
        if not self.units:
            raise ViewError("no_keyframe", "no H.264 keyframe received: nothing to record")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.part")
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("h264", rate=30)
            stream.width, stream.height = width, height
            stream.time_base = Fraction(1, 90000)
            stream.codec_context.extradata = parameter_sets(self.units[0][0])
            last = -1
            for data, rel, key in self.units:
                pts = max(rel, last + 1)
                last = pts
                packet = av.Packet(data)
                packet.stream = stream
                packet.time_base = Fraction(1, 90000)
                packet.pts = packet.dts = pts
                packet.is_keyframe = key
                container.mux(packet)
        tmp.replace(self.path)
        return len(self.units)


@dataclass
class ViewResult:
    session: str
    answer_s: float  # offer sent -> answer received
    first_frame_s: float | None  # offer sent -> first decoded frame
    frames: int
    width: int
    height: int
    fps: float
    seconds: float
    record_path: Path | None = None
    recorded_frames: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # inbound-rtp figures
    ended_by_device: str = ""

    def summary(self) -> str:
        text = (
            f"view {self.session}: answer in {self.answer_s * 1000:.0f} ms, {self.frames} frames "
            f"{self.width}x{self.height} at {self.fps:.1f} fps over {self.seconds:.1f} s"
        )
        if self.first_frame_s is not None:
            text += f", first frame after {self.first_frame_s * 1000:.0f} ms"
        for key in ("packetsReceived", "packetsLost", "jitter", "bytesReceived"):
            if key in self.stats:
                text += f", {key} {self.stats[key]}"
        if self.record_path:
            text += f"; saved {self.recorded_frames} frames to {self.record_path}"
        if self.ended_by_device:
            text += f"; device ended the view: {self.ended_by_device}"
        return text


async def live_view(
    client: FleetClient,
    device: str,
    seconds: float = 10.0,
    record: Path | None = None,
    answer_timeout: float = 20.0,
    on_frame: Callable[[av.VideoFrame], None] | None = None,
    on_stats: Callable[[dict[str, Any]], None] | None = None,
    stats_interval: float = 2.0,
) -> ViewResult:
    """Open a remote view for ``seconds``; optionally record it; returns frame counts and RTP stats."""
    sid = uuid.uuid4().hex[:12]
    topic = protocol.rtc(device, sid)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_signal(msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(body, dict) and body.get("from") == "device":
            inbox.put_nowait(body)

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    probe = QoeProbe(pc, client="fleetctl")  # receiver reports: the device sees what this view sees
    recorder = Mp4Recorder(record, seconds) if record else None
    if recorder is not None:
        tap_encoded(transceiver.receiver, recorder.add)
    track_ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def _on_track(track: Any) -> None:
        if track.kind == "video" and not track_ready.done():
            track_ready.set_result(track)

    await client.conn.subscribe_wait(topic, on_signal)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        probe.attach()
        started = time.monotonic()
        await client.publish(topic, {"type": "offer", "sdp": pc.localDescription.sdp, "from": "fleet"})
        try:
            msg = await asyncio.wait_for(inbox.get(), answer_timeout)
        except TimeoutError:
            raise ViewError(
                "timeout", f"{device} did not answer the view offer within {answer_timeout:g} s"
            ) from None
        if msg.get("type") == "error":
            raise ViewError(str(msg.get("code")), str(msg.get("message")))
        if msg.get("type") != "answer" or not isinstance(msg.get("sdp"), str):
            raise ViewError("bad_answer", f"expected an answer, got {msg.get('type')!r}")
        answer_s = time.monotonic() - started
        await pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="answer"))
        probe.start()
        track = await asyncio.wait_for(track_ready, answer_timeout)
        frames, first_frame, width, height, ended = 0, None, 0, 0, ""
        view_start = time.monotonic()
        deadline = view_start + seconds
        next_stats = view_start + stats_interval
        while time.monotonic() < deadline and not ended:
            try:
                frame = await asyncio.wait_for(track.recv(), max(0.05, deadline - time.monotonic()))
            except (TimeoutError, MediaStreamError):
                break
            if first_frame is None:
                first_frame = time.monotonic() - started
            frames += 1
            probe.frame("video", frame)
            width, height = frame.width, frame.height
            if on_frame is not None:
                on_frame(frame)
            while not inbox.empty():
                late = inbox.get_nowait()
                if late.get("type") == "bye":
                    ended = str(late.get("reason", "bye"))
            if on_stats is not None and time.monotonic() >= next_stats:
                next_stats += stats_interval
                on_stats({"frames": frames, **await inbound_stats(pc)})
        elapsed = time.monotonic() - view_start
        stats = await inbound_stats(pc)
        try:
            await client.publish(topic, {"type": "bye", "from": "fleet"})
        except (TimeoutError, ConnectionError):
            pass
        result = ViewResult(
            sid,
            answer_s,
            first_frame,
            frames,
            width,
            height,
            frames / elapsed if elapsed > 0 else 0.0,
            elapsed,
            stats=stats,
            ended_by_device=ended,
        )
        if recorder is not None and record is not None:
            result.recorded_frames = await asyncio.to_thread(recorder.write, width, height)
            result.record_path = record
        return result
    finally:
        await probe.stop()
        client.conn.unsubscribe(topic)
        await pc.close()


async def inbound_stats(pc: RTCPeerConnection) -> dict[str, Any]:
    """The numeric inbound-rtp video figures (packets received/lost, jitter, bytes)."""
    report = await pc.getStats()
    for stat in report.values():
        if stat.type == "inbound-rtp" and stat.kind == "video":
            return {k: v for k, v in vars(stat).items() if isinstance(v, (int, float)) and k != "timestamp"}
    return {}
