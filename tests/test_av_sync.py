"""A/V sync as viewers see it: sender reports dated by capture (device_agent/media/capture_clock.py),
and a known audio delay at the source read back by a real viewer through a real agent.

The viewer here is the aiortc one (tests/support/media.py, QoeProbe): it plays each stream as it is
decoded, without lip sync, so an audio path 200 ms slower than video is heard 200 ms late and
its report says so. A browser (Chromium) lip-syncs the streams of one msid from the same sender
reports and delays video instead (docs/protocol.md). With sender reports dated by *send* time (as
aiortc dates them) the delay would be invisible: audio's mapping would move with it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import struct
import time
from pathlib import Path

import aiohttp
import paho.mqtt.client as mqtt
from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

from device_agent.media.audio_pipeline import OPUS_RATE, AudioPipeline
from device_agent.media.capture_clock import NTP_UNIX_OFFSET_S, attach_capture_clock
from hal.audio.synthetic import SyntheticSource
from tests.support.agent_proc import AgentProcess
from tests.support.media import Viewer
from tests.support.mosquitto import free_port

SSRC = 0x1234ABCD


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


class _Sender:
    def __init__(self) -> None:
        self._ssrc = SSRC
        self.transport = _Transport()


def _rtp(ssrc: int, timestamp: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, 1, timestamp, ssrc) + b"\x00" * 20


def _sr(ssrc: int, wall: float, rtp: int) -> bytes:
    ntp_s = wall + NTP_UNIX_OFFSET_S
    ntp = (int(ntp_s) << 32) | int((ntp_s % 1) * (1 << 32))
    info = RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=rtp, packet_count=1, octet_count=100)
    return bytes(RtcpSrPacket(ssrc=ssrc, sender_info=info))


async def test_sender_report_is_dated_by_the_capture_of_the_last_packet() -> None:
    sender = _Sender()
    mono, wall = [1000.0], [1_700_000_000.0]
    captured: list[float | None] = [None]
    state = attach_capture_clock(
        sender, 90000, lambda: captured[0], clock=lambda: mono[0], wall=lambda: wall[0]
    )
    send = sender.transport._send_rtp
    await send(_sr(SSRC, wall[0], 0))  # before any packet: as aiortc made it
    assert state.skipped == 1 and struct.unpack_from("!I", sender.transport.sent[-1], 16)[0] == 0
    captured[0] = 999.9  # the track's last packet was captured 100 ms ago...
    await send(_rtp(SSRC, 4_000_000_000))
    mono[0] += 0.05
    wall[0] += 0.05  # ...and aiortc's SR pairs its timestamp with the send time, 150 ms after capture
    await send(_sr(SSRC, wall[0], 4_000_000_000))
    rtp = struct.unpack_from("!I", sender.transport.sent[-1], 16)[0]
    assert rtp == (4_000_000_000 + 150 * 90) & 0xFFFFFFFF  # the clock read 150 ms past the capture
    assert state.rewritten == 1 and abs(state.shift_ms - 150.0) < 0.01
    other = _sr(SSRC + 1, wall[0], 5)  # another stream's report (the bundled audio) is left alone
    await send(other)
    assert sender.transport.sent[-1] == other


async def test_audio_packets_are_dated_by_their_first_samples_capture() -> None:
    """The synthetic microphone dates period n at t0 + n * period; a delayed one still does."""
    for delay_s, offset_s in ((0.0, 0.0), (0.2, 0.05)):
        source = SyntheticSource(16000, 1, 160, delay_s=delay_s, max_lag_s=10.0)  # no overrun on a busy CPU
        pipeline = AudioPipeline(source, offset_s=offset_s)
        sub = pipeline.subscribe()
        started = time.monotonic()
        await pipeline.start()
        try:
            packets = [await asyncio.wait_for(sub.get(), 3) for _ in range(10)]
        finally:
            await pipeline.stop()
        elapsed = time.monotonic() - started
        assert elapsed >= delay_s + 0.15, elapsed  # the delay is real: 10 packets of 20 ms came late
        t0 = source._t0
        for packet in packets[-3:]:
            expected = t0 + packet.pts / OPUS_RATE + offset_s
            assert abs(pipeline.capture_time(packet.pts) - expected) < 1e-6, (packet.pts, delay_s)


def _agent(tmp_path: Path, broker_url: str, delay_ms: int, listen: str) -> AgentProcess:
    """An agent process whose synthetic microphone delivers ``delay_ms`` late, dated at capture."""
    return AgentProcess(
        tmp_path / f"agent-{delay_ms}",
        {
            "device": {"id": f"av-{delay_ms}", "state_dir": str(tmp_path / f"state-{delay_ms}")},
            "camera": {"width": 160, "height": 120, "fps": 15},
            "audio": {"synthetic_delay_ms": delay_ms},
            "web": {"enabled": True, "listen": listen},
            "mqtt": {"url": broker_url, "telemetry_interval_s": 5.0},
            "alert_defaults": {"evaluate_interval_s": 1.0},
            # the shipped rule with a 3 s hold instead of 30 s (an operator's override, docs/configuration.md)
            "alerts": [
                {
                    "code": "av_sync_late",
                    "metric": "media.viewers.sessions.*.qoe.av_sync_ms",
                    "aggregate": "min",
                    "op": "<",
                    "threshold": -125,
                    "clear_threshold": -100,
                    "hold_s": 3,
                    "severity": "P2",
                }
            ],
        },
    )


async def _watch(base: str, seconds: float) -> list[float]:
    """An aiortc viewer for ``seconds``: the agent's ``av_sync_ms`` for it, once a second."""
    offsets: list[float] = []
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:  # the agent is still starting
            try:
                async with http.get(f"{base}/api/stats") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"{base} did not serve"
            await asyncio.sleep(0.3)
        viewer = Viewer(base)
        await viewer.connect(http, qoe_interval_s=1.0)
        await viewer.wait_frames(10, timeout=20)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            async with http.get(f"{base}/api/stats") as resp:
                qoe = (await resp.json())["viewers"]["sessions"][0]["qoe"]
            if qoe["av_sync_ms"] is not None:
                offsets.append(qoe["av_sync_ms"])
        await viewer.close(http)
    return offsets


def _alerts(broker_url: str, into: list[dict]) -> mqtt.Client:
    host, port = broker_url.split("//", 1)[1].split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: into.append({"topic": msg.topic, **json.loads(msg.payload)})
    client.on_connect = lambda c, *_a: c.subscribe("dev/+/events", qos=1)
    client.connect(host, int(port))
    client.loop_start()
    return client


def test_a_200_ms_audio_delay_at_the_source_reads_200_ms_late_and_raises_av_sync_late(
    tmp_path: Path, mosquitto
) -> None:
    """Two agents side by side (the same load on both), one with its microphone 200 ms late."""
    events: list[dict] = []
    client = _alerts(mosquitto.url, events)
    listen = {delay: f"127.0.0.1:{free_port()}" for delay in (0, 200)}
    agents = {delay: _agent(tmp_path, mosquitto.url, delay, listen[delay]).start() for delay in (0, 200)}
    try:

        async def both() -> list[list[float]]:
            return await asyncio.gather(*(_watch(f"http://{listen[d]}", 9.0) for d in (0, 200)))

        clean, late = asyncio.run(both())
        time.sleep(1.5)  # the last evaluation's alert on its way
    finally:
        for agent in agents.values():
            agent.stop()
        client.loop_stop()
        client.disconnect()
    raised = {
        (e["topic"].split("/")[1], e["code"]) for e in events if e.get("type") == "alert" and e.get("active")
    }
    assert len(clean) >= 5 and len(late) >= 5, (clean, late)
    # the median of ~8 reports: one report can catch a scheduling stall of this loaded machine
    clean_ms, late_ms = statistics.median(clean), statistics.median(late)
    # clean: the aiortc viewer hears audio ~90 ms late (its 4-packet audio prefetch, Opus's 20 ms
    # frame and look-ahead against video sent as captured): inside the -125 ms rule
    assert -125 < clean_ms < 45, clean
    assert abs((late_ms - clean_ms) - -200) <= 60, (clean, late)
    assert ("av-200", "av_sync_late") in raised, (late, events)
    assert not {code for device, code in raised if device == "av-0"} & {"av_sync_late", "av_sync_early"}, (
        clean,
        raised,
    )
