"""CPU of the second (lower) encoding layer against the first: camera + libx264 at 720p30, 1 and 2 layers.

The agent's video path in this process (``FrameEncoderSource``: the test-pattern camera, libx264 on
its worker thread, the low layer's libx264 on its own, fed the same frames scaled by
``--scale``), measured in the same run: CPU seconds (utime+stime of this process) per wall
second with the camera only (no viewer: frames captured, nothing encoded), one layer, two layers.
The first layer's cost is (1 layer - camera only), the second's (2 layers - 1 layer); the target
is second <= 0.6 x first.

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


async def run_case(layers: int, args: argparse.Namespace) -> tuple[float, list[int]]:
    """CPU s per wall s with ``layers`` encodings (0: camera only); returns it and each layer's packets."""
    w, h, fps = args.width, args.height, args.fps
    counts = [0, 0]

    def counter(i: int):  # noqa: ANN202
        def on_packet(_: EncodedPacket) -> None:
            counts[i] += 1
        return on_packet

    source = FrameEncoderSource(TestPatternCamera(w, h, fps, pattern=args.pattern),
                                Libx264Encoder(w, h, fps, args.bitrate, 6_000_000), wanted=lambda: layers >= 1)
    lw, lh = round(w * args.scale) // 2 * 2, round(h * args.scale) // 2 * 2
    source.add_layer(Libx264Encoder(lw, lh, fps, args.bitrate // 4, 1_500_000), counter(1), lambda: layers >= 2)
    await source.start(counter(0))
    await asyncio.sleep(args.warmup)
    c0, w0, n0 = time.process_time(), time.monotonic(), list(counts)
    await asyncio.sleep(args.seconds)
    cpu = (time.process_time() - c0) / (time.monotonic() - w0)
    frames = [c - n for c, n in zip(counts, n0)]
    await source.stop()
    return cpu, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per case")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--pattern", default="busy", choices=("bars", "busy"))
    parser.add_argument("--scale", type=float, default=0.5, help="low layer size / high layer size")
    parser.add_argument("--bitrate", type=int, default=2_000_000, help="high layer target; the low one gets 1/4")
    args = parser.parse_args()
    print(f"media_layers: {args.width}x{args.height} {args.fps} fps {args.pattern}, low layer x{args.scale}, "
          f"{args.seconds:.0f} s per case; {load()}")
    cpu = {}
    for layers in (0, 1, 2):
        cpu[layers], frames = asyncio.run(run_case(layers, args))
        print(f"  {layers} layer(s) {'(camera only)' if layers == 0 else '':14s} CPU {cpu[layers]:.3f} s/s, "
              f"frames encoded per layer {frames}")
    first, second = cpu[1] - cpu[0], cpu[2] - cpu[1]
    ratio = second / first if first > 0 else float("nan")
    print(f"  first layer {first:.3f} s/s, second {second:.3f} s/s: second/first = {ratio:.2f} "
          f"(target <= 0.6); {load()}")


if __name__ == "__main__":
    main()
