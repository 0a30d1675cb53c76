"""What the test patterns cost to draw and what libx264 needs to carry them.

For each pattern (``bars``, ``busy``): draw time per frame (``TestPatternCamera.render``, the whole
frame: pattern, box, digits, stamp, ``av.VideoFrame``), then libx264 as the agent opens it
(ultrafast, zerolatency, Constrained Baseline) at fixed CRFs, and at the default 2 Mbit/s with VBV
(PSNR of the decoded luma), and whether every decoded frame's burnt-in counter still reads right.

Run: .venv/bin/python -m benchmarks.pattern_bits [--width 1280 --height 720 --fps 30 --seconds 4]
"""

from __future__ import annotations

import argparse
import fractions
import statistics
import time

import av
import numpy as np

from benchmarks._media_common import load
from hal.camera.marker import read_stamp
from hal.camera.test_pattern import PATTERNS, TestPatternCamera


def encode(
    frames: list[av.VideoFrame],
    width: int,
    height: int,
    fps: int,
    options: dict[str, str],
    bit_rate: int | None = None,
) -> tuple[float, float, int]:
    """(kbit/s, mean luma PSNR dB, frames whose stamp read back right) for ``frames`` through libx264."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = fractions.Fraction(1, fps), fps
    if bit_rate is not None:
        enc.bit_rate = bit_rate
    enc.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "profile": "baseline",
        "g": str(2 * fps),
        **options,
    }
    dec = av.CodecContext.create("h264", "r")
    originals = {i: f.to_ndarray()[:height].astype(np.float64) for i, f in enumerate(frames)}
    size, psnrs, stamps = 0, [], 0
    packets: list[av.Packet] = []
    for i, frame in enumerate(frames):
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    for packet in packets:
        size += packet.size
        for decoded in dec.decode(packet):
            luma = decoded.to_ndarray()[:height]  # yuv420p as decoded (format="gray" would rescale the range)
            index = read_stamp(luma).index
            stamps += index in originals
            if index in originals:
                mse = float(np.mean((luma.astype(np.float64) - originals[index]) ** 2))
                psnrs.append(99.0 if mse == 0 else 10 * np.log10(255**2 / mse))
    return size * 8 / 1000 / (len(frames) / fps), statistics.mean(psnrs) if psnrs else 0.0, stamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    count = int(args.seconds * args.fps)
    print(f"pattern_bits: {args.width}x{args.height} {args.fps} fps, {count} frames; {load()}")
    for pattern in PATTERNS:
        camera = TestPatternCamera(args.width, args.height, args.fps, pattern=pattern)
        frames, times = [], []
        for i in range(count):
            started = time.perf_counter()
            frames.append(camera.render(i).frame)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        print(
            f"{pattern}: draw p50 {times[len(times) // 2]:.2f} ms, "
            f"p95 {times[int(len(times) * 0.95)]:.2f} ms per frame ({load()})"
        )
        for crf in ("23", "28"):
            kbps, psnr, ok = encode(frames, args.width, args.height, args.fps, {"crf": crf})
            print(
                f"  libx264 crf {crf}: {kbps:7.0f} kbit/s, luma PSNR {psnr:.1f} dB, stamps read {ok}/{count}"
            )
        for rate in (2_000_000, 1_000_000):
            kbps, psnr, ok = encode(
                frames,
                args.width,
                args.height,
                args.fps,
                {"x264-params": f"vbv-maxrate={rate // 1000}:vbv-bufsize={rate // 1000}"},
                rate,
            )
            print(
                f"  libx264 at {rate // 1000} kbit/s (VBV): {kbps:7.0f} kbit/s, luma PSNR {psnr:.1f} dB, "
                f"stamps read {ok}/{count}"
            )


if __name__ == "__main__":
    main()
