"""CPU of the second (lower) encoding layer against the first: camera + libx264 at 720p30, 1 and 2 layers.

The agent's video path in this process (``FrameEncoderSource``: the test-pattern camera, libx264 on
its worker thread, the low layer's libx264 on its own, fed the same frames scaled by
``--scale``), measured in the same run: CPU seconds (utime+stime of this process) per wall
second with the camera only (no viewer: frames captured, nothing encoded), one layer, two layers.
The first layer's cost is (1 layer - camera only), the second's (2 layers - 1 layer); the target
is second <= 0.6 x first. Less noisy on a shared machine: each layer's own encode calls (scaling
included) timed with its worker thread's CPU clock (``time.thread_time``), in the 2-layer case.

Run: .venv/bin/python -m benchmarks.media_layers [--seconds 10] [--pattern busy] [--scale 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks._media_common import load
from device_agent.media.video_source import FrameEncoderSource
from hal.camera.test_pattern import TestPatternCamera
from hal.encoder.base import EncodedPacket
from hal.encoder.pyav import Libx264Encoder


class Timed:
    """An encoder whose ``encode`` calls add up their thread CPU time."""

    def __init__(self, encoder: Libx264Encoder) -> None:
        self.encoder, self.cpu = encoder, 0.0

    def __getattr__(self, name: str) -> object:
        return getattr(self.encoder, name)

    def encode(self, frame: object) -> list[EncodedPacket]:
        t0 = time.thread_time()
        try:
            return self.encoder.encode(frame)  # type: ignore[arg-type]
        finally:
            self.cpu += time.thread_time() - t0


async def run_case(layers: int, args: argparse.Namespace) -> tuple[float, list[int], list[float]]:
    """CPU s per wall s with ``layers`` encodings (0: camera only); returns it, each layer's packets
    and each layer's encode-thread CPU s per wall s."""
    w, h, fps = args.width, args.height, args.fps
    counts = [0, 0]

    def counter(i: int):  # noqa: ANN202
        def on_packet(_: EncodedPacket) -> None:
            counts[i] += 1

        return on_packet

    high = Timed(Libx264Encoder(w, h, fps, args.bitrate, 6_000_000))
    source = FrameEncoderSource(
        TestPatternCamera(w, h, fps, pattern=args.pattern),
        high,  # type: ignore[arg-type]
        wanted=lambda: layers >= 1,
    )
    lw, lh = round(w * args.scale) // 2 * 2, round(h * args.scale) // 2 * 2
    low = Timed(Libx264Encoder(lw, lh, fps, args.bitrate // 4, 1_500_000))
    source.add_layer(low, counter(1), lambda: layers >= 2)  # type: ignore[arg-type]
    await source.start(counter(0))
    await asyncio.sleep(args.warmup)
    c0, w0, n0, e0 = time.process_time(), time.monotonic(), list(counts), [high.cpu, low.cpu]
    await asyncio.sleep(args.seconds)
    wall = time.monotonic() - w0
    cpu = (time.process_time() - c0) / wall
    frames = [c - n for c, n in zip(counts, n0, strict=True)]
    encode = [(high.cpu - e0[0]) / wall, (low.cpu - e0[1]) / wall]
    await source.stop()
    return cpu, frames, encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per case")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--pattern", default="busy", choices=("bars", "busy"))
    parser.add_argument("--scale", type=float, default=0.5, help="low layer size / high layer size")
    parser.add_argument(
        "--bitrate", type=int, default=2_000_000, help="high layer target; the low one gets 1/4"
    )
    args = parser.parse_args()
    print(
        f"media_layers: {args.width}x{args.height} {args.fps} fps {args.pattern}, low layer x{args.scale}, "
        f"{args.seconds:.0f} s per case; {load()}"
    )
    cpu = {}
    for layers in (0, 1, 2):
        cpu[layers], frames, encode = asyncio.run(run_case(layers, args))
        print(
            f"  {layers} layer(s) {'(camera only)' if layers == 0 else '':14s} CPU {cpu[layers]:.3f} s/s, "
            f"frames encoded per layer {frames}, encode threads {encode[0]:.3f} + {encode[1]:.3f} s/s"
        )
    first, second = cpu[1] - cpu[0], cpu[2] - cpu[1]
    ratio = second / first if first > 0 else float("nan")
    print(f"  process: first layer {first:.3f} s/s, second {second:.3f} s/s: second/first = {ratio:.2f}")
    print(
        f"  encode threads (2 layers): first {encode[0]:.3f} s/s, second {encode[1]:.3f} s/s: "
        f"second/first = {encode[1] / encode[0]:.2f} (target <= 0.6); {load()}"
    )


if __name__ == "__main__":
    main()
