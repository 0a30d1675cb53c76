"""Shared pieces of the media benchmarks: servers in subprocesses, CPU readings, receive-only clients."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def add_impaired_link_args(parser: argparse.ArgumentParser) -> None:
    """The emulated link's and the stream's flags shared by the impaired-link benchmarks (defaults:
    100 ms each way, 1 Mbit/s, 300 ms queue; 1280x720 30 fps; the agent and the naive peer)."""
    parser.add_argument("--delay-ms", type=float, default=100)
    parser.add_argument("--rate-kbps", type=float, default=1000)
    parser.add_argument("--queue-ms", type=float, default=300)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--servers", nargs="+", default=["agent", "naive"], choices=["agent", "naive"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {pct(values, 0.5):7.1f}  p95 {pct(values, 0.95):7.1f}  max {max(values):7.1f}  "
        f"mean {statistics.mean(values):7.1f}  (n={len(values)})"
    )


def agent_config(width: int, height: int, fps: int, state_dir: str) -> str:
    """A TOML for ``device-agent demo --config``: libx264 at the given size, no broker."""
    path = Path(state_dir) / "bench-agent.toml"
    path.write_text(
        f"""[device]\nstate_dir = "{state_dir}"\n\n[camera]\nbackend = "test-pattern"\n"""
        f"""width = {width}\nheight = {height}\nfps = {fps}\n\n[encoder]\nbackend = "libx264"\n"""
    )
    return str(path)


@contextlib.contextmanager
def server(kind: str, width: int = 1280, height: int = 720, fps: int = 30) -> Iterator[tuple[str, int]]:
    """Run the agent demo (``kind="agent"``) or the naive peer (``"naive"``); yields (base URL, pid)."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="media-bench-") as tmp:
        if kind == "agent":
            cmd = [
                str(ROOT / ".venv/bin/device-agent"),
                "demo",
                "--listen",
                listen,
                "--no-broker",
                "--config",
                agent_config(width, height, fps, tmp),
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.naive_whep",
                "--listen",
                listen,
                "--width",
                str(width),
                "--height",
                str(height),
                "--fps",
                str(fps),
            ]
        log = open(Path(tmp) / "server.log", "w+")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://{listen}"
            _wait_http(base + "/api/stats", proc, log)
            yield base, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _wait_http(url: str, proc: subprocess.Popen, log) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in 30 s")


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            return await resp.json()


# -- receive-only aiortc clients (run in their own process: see benchmarks.media_cpu) ---------------


def patch_no_decode(counter: list[int]) -> None:
    """Make aiortc's receivers drain encoded frames without decoding them (counted in ``counter``)."""
    import aiortc.rtcrtpreceiver as rr

    def drain(loop, input_q, output_q, decode_error) -> None:  # noqa: ANN001
        while True:
            task = input_q.get()
            if task is None:
                asyncio.run_coroutine_threadsafe(output_q.put(None), loop)
                return
            counter[0] += 1

    rr.decoder_worker = drain


async def open_client(whep_url: str):  # noqa: ANN201
    """One aiortc viewer offering H.264 only (receive-only video); returns the peer connection."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tr = pc.addTransceiver("video", direction="recvonly")
    tr.setCodecPreferences(
        [
            c
            for c in RTCRtpReceiver.getCapabilities("video").codecs
            if c.mimeType.lower() in ("video/h264", "video/rtx")
        ]
    )

    @pc.on("track")
    def on_track(track) -> None:  # noqa: ANN001
        async def pump() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()

        asyncio.ensure_future(pump())

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(
            whep_url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"WHEP {resp.status}: {await resp.text()}")
            answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc


async def _clients_main(whep_url: str, n: int, seconds: float) -> None:
    counter = [0]
    patch_no_decode(counter)
    pcs = await asyncio.gather(*(open_client(whep_url) for _ in range(n)))
    deadline = time.monotonic() + 20
    while any(pc.connectionState != "connected" for pc in pcs) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    print(f"connected {sum(pc.connectionState == 'connected' for pc in pcs)}", flush=True)
    await asyncio.sleep(seconds)
    print(f"frames {counter[0]}", flush=True)
    await asyncio.gather(*(pc.close() for pc in pcs))


if __name__ == "__main__":  # python -m benchmarks._media_common WHEP_URL N SECONDS: receive-only viewers
    asyncio.run(_clients_main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
