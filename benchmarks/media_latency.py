"""Capture-to-packet latency of the agent's video pipeline (libx264) at 640x480 and 1280x720, 30 fps.

The figure is the agent's own ``LatencyWindow`` (health ``video.capture_to_packet``): from the
camera frame's capture timestamp (taken when the test pattern is drawn) to the moment the viewer's
track hands the encoded packet to aiortc. One receive-only aiortc viewer (separate process, no
decoding) watches so packets flow. The window holds the last 600 packets (20 s at 30 fps); the run
reads it after ``--seconds`` of viewing. The peer (aiortc naive handler) has no comparable point
(it encodes inside aiortc's sender), so only the target is printed as the reference.

Run: .venv/bin/python -m benchmarks.media_latency [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

from benchmarks._media_common import ROOT, get_json, load, server


def run(width: int, height: int, fps: int, seconds: float) -> dict:
    with server("agent", width, height, fps) as (base, _pid):
        client = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._media_common", base + "/whep", "1", str(seconds + 2)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None
        line = client.stdout.readline().strip()
        if line != "connected 1":
            client.kill()
            raise RuntimeError(f"viewer did not connect: {line!r}")
        time.sleep(seconds)
        stats = asyncio.run(get_json(base + "/api/stats"))
        client.communicate(timeout=60)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    interval = 1000 / args.fps
    print(
        f"media_latency: libx264, {args.fps} fps (frame interval {interval:.1f} ms), "
        f"{args.seconds:.0f} s per size; {load()}"
    )
    for width, height in ((640, 480), (1280, 720)):
        stats = run(width, height, args.fps, args.seconds)
        video = stats["video"]
        lat = video["capture_to_packet"]
        cam = video.get("camera", {})
        p95 = lat["p95_ms"]
        print(
            f"{width}x{height}: capture->packet p50 {lat['p50_ms']:6.2f} ms  p95 {p95:6.2f} ms  "
            f"(p95 = {p95 / interval:.2f} frame intervals, "
            f"target < 1: {'met' if p95 < interval else 'MISSED'}); "
            f"encode mean {video.get('encode_ms')} ms, fps {video.get('fps')}, "
            f"jitter {video.get('frame_interval_jitter_ms')} ms, camera skipped {cam.get('skipped')}; "
            f"{load()}",
            flush=True,
        )


if __name__ == "__main__":
    main()
