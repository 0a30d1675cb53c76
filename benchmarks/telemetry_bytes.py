"""Telemetry bytes per device-hour of a real agent with viewers reporting QoE, on a real broker.

A real mosquitto on a free loopback port, the whole agent as a process (``tests/support/agent_proc``:
camera test pattern, synthetic microphone, noise suppression on, web on) and ``--viewers`` aiortc
viewers sending receiver reports (``tests/support/media.Viewer``, every 2 s as the page does). A
subscriber counts the bytes of every published health message on ``dev/ID/telemetry``; samples go
out every ``--interval`` s to collect many in a short run, and the figure is scaled to the default
30 s interval (120 samples an hour): payload, and on the wire (topic + MQTT framing + the Content
Type property, as ``benchmarks.fleet_soak`` counts it). The agent sends telemetry deflated with the
preset dictionary (``device_agent/telemetry_codec.py``); each message is also decoded and
re-serialised as the plain compact JSON the agent sent before (``mqtt.compress_telemetry = false``),
the peer figure, so both sizes and their ratio come from the same samples. The largest sections of
the last sample are listed. The target (issue 21): at most 1.5 x 83.5 KB = 125 KB per device-hour
with QoE.

Run: .venv/bin/python -m benchmarks.telemetry_bytes [--viewers 1] [--seconds 40] [--interval 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from device_agent import telemetry_codec
from device_agent.fleetlink.mqtt import MqttClient, parse_broker_url
from tests.support.agent_proc import AgentProcess
from tests.support.media import Viewer
from tests.support.mosquitto import Mosquitto, free_port

MQTT_OVERHEAD = 2 + 2 + 2 + 1 + 4  # fixed header, topic length, packet id, properties length, PUBACK
PER_HOUR = 3600 / 30.0  # samples per hour at the default telemetry interval
TARGET_BYTES = 1.5 * 83.5 * 1000


class Counter:
    """Every telemetry message of one device: payload sizes and the last body."""

    def __init__(self, device: str) -> None:
        self.topic = f"dev/{device}/telemetry"
        self.sizes: list[int] = []  # on the wire (compressed)
        self.plain: list[int] = []  # the same sample as plain compact JSON
        self.props: list[int] = []  # bytes of the MQTT 5 properties (Content Type)
        self.bodies: list[dict[str, Any]] = []
        self.client = MqttClient(f"telemetry-bytes-{device}")
        self._task: asyncio.Task[None] | None = None

    async def start(self, url: str) -> None:
        """Connect (the one MQTT transport, device_agent/fleetlink/mqtt.py) and count from now on."""
        target = parse_broker_url(url)
        await self.client.connect(target.host, target.port)
        await self.client.subscribe(self.topic, qos=1)
        self._task = asyncio.create_task(self._count())

    async def _count(self) -> None:
        while True:
            msg = await self.client.messages.get()
            ctype = telemetry_codec.message_content_type(msg)
            body = json.loads(telemetry_codec.decode(msg.payload, ctype))
            self.sizes.append(len(msg.payload))
            self.plain.append(len(json.dumps(body, separators=(",", ":")).encode()))
            self.props.append(3 + len(ctype.encode()) if ctype else 0)
            self.bodies.append(body)

    def with_viewers(self, count: int) -> list[int]:
        """Indexes of the samples that carry ``count`` viewer sessions with QoE reports."""
        return [
            i
            for i, body in enumerate(self.bodies)
            if sum(
                1
                for s in ((body.get("health", {}).get("media") or {}).get("viewers") or {}).get(
                    "sessions", []
                )
                if (s.get("qoe") or {}).get("reports")
            )
            >= count
        ]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.close()


def section_sizes(body: dict[str, Any], depth: int = 2) -> list[tuple[int, str]]:
    """Compact-JSON bytes of each section down to ``depth`` levels, largest first."""
    out: list[tuple[int, str]] = []

    def walk(value: Any, path: str, level: int) -> None:
        out.append((len(json.dumps(value, separators=(",", ":"), default=str)), path))
        if level < depth and isinstance(value, dict):
            for key, child in value.items():
                walk(child, f"{path}.{key}" if path else key, level + 1)

    walk(body, "", 0)
    return sorted(out, reverse=True)


async def watch(counter: Counter, url: str, base: str, viewers: int, seconds: float, interval: float) -> None:
    """Count the telemetry while ``viewers`` aiortc viewers watch for ``seconds``."""
    await counter.start(url)
    try:
        await _view(base, viewers, seconds)
        await asyncio.sleep(interval + 0.5)  # the last sample with the viewers
    finally:
        await counter.close()


async def _view(base: str, viewers: int, seconds: float) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with http.get(f"{base}/api/stats") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base} did not serve")
            await asyncio.sleep(0.3)
        clients = [Viewer(base) for _ in range(viewers)]
        for viewer in clients:
            await viewer.connect(http, qoe_interval_s=2.0)
        for viewer in clients:
            await viewer.wait_frames(10, timeout=30)
        await asyncio.sleep(seconds)
        for viewer in clients:
            await viewer.close(http)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=40.0, help="with the viewers connected")
    parser.add_argument("--interval", type=float, default=2.0, help="telemetry interval of the run (s)")
    parser.add_argument("--dump", default="", help="write the last sample with viewers here (JSON)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="telemetry-bytes-"))
    broker = Mosquitto(work / "broker").start()
    listen = f"127.0.0.1:{free_port()}"
    agent = AgentProcess(
        work / "agent",
        {
            "device": {"id": "bytes-cam", "state_dir": str(work / "state")},
            "camera": {"width": 320, "height": 180, "fps": 30},
            "ns": {"enabled": True},
            "web": {"enabled": True, "listen": listen},
            "mqtt": {"url": broker.url, "telemetry_interval_s": args.interval},
        },
    )
    counter = Counter("bytes-cam")
    agent.start()
    try:
        asyncio.run(watch(counter, broker.url, f"http://{listen}", args.viewers, args.seconds, args.interval))
    finally:
        agent.stop()
        broker.stop()
    picked = counter.with_viewers(args.viewers)
    if not picked:
        raise SystemExit(f"no telemetry sample with {args.viewers} reporting viewers in {len(counter.sizes)}")
    sizes = [counter.sizes[i] for i in picked]
    plains = [counter.plain[i] for i in picked]
    payload, plain = statistics.mean(sizes), statistics.mean(plains)
    overhead = len(counter.topic) + MQTT_OVERHEAD
    wire = payload + overhead + statistics.mean(counter.props[i] for i in picked)
    last = counter.bodies[picked[-1]]
    print(f"samples with {args.viewers} reporting viewer(s): {len(sizes)} of {len(counter.sizes)}")
    print(f"payload bytes per sample: mean {payload:.0f}, min {min(sizes)}, max {max(sizes)}")
    print(f"plain compact JSON of the same samples (peer): mean {plain:.0f}; ratio {plain / payload:.2f}x")
    print(
        f"per device-hour at 30 s: payload {payload * PER_HOUR / 1000:.1f} KB, "
        f"wire {wire * PER_HOUR / 1000:.1f} KB (target <= {TARGET_BYTES / 1000:.1f} KB payload): "
        f"{'within' if payload * PER_HOUR <= TARGET_BYTES else 'OVER'}; plain JSON "
        f"{plain * PER_HOUR / 1000:.1f} KB payload, {(plain + overhead) * PER_HOUR / 1000:.1f} KB wire"
    )
    if args.dump:
        Path(args.dump).write_text(json.dumps(last, indent=1))
    without = [i for i in range(len(counter.sizes)) if i not in picked]
    if without:
        print(
            f"samples without a reporting viewer: {len(without)}, mean "
            f"{statistics.mean(counter.sizes[i] for i in without):.0f} bytes "
            f"(plain {statistics.mean(counter.plain[i] for i in without):.0f})"
        )
    print("largest sections of the last sample (compact JSON bytes):")
    for size, path in section_sizes(last, depth=4)[:18]:
        print(f"  {size:6d}  {path or '(whole)'}")


if __name__ == "__main__":
    main()
