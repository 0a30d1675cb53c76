"""Server CPU for one 1280x720 30 fps stream to 1 and to 4 viewers: the agent (encode once, fan out)
against aiortc with a naive WHEP handler (aiortc encodes per viewer), measured in the same run.

CPU is utime+stime of the server process (/proc/PID/stat) per wall second. The viewers are aiortc
peers in a separate process that offer H.264 only and receive without decoding (their decoder
thread just drains the encoded frames and counts them), so the clients cost little and their
CPU is not in the figure.

Run: .venv/bin/python -m benchmarks.media_cpu [--seconds 15] [--width 1280 --height 720 --fps 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks._media_common import ROOT, cpu_seconds, load, server


def measure(base: str, pid: int, viewers: int, seconds: float, warmup: float) -> tuple[float, int]:
    """CPU s/s of ``pid`` while ``viewers`` receive-only clients watch; returns (cpu per s, frames got)."""
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks._media_common",
            base + "/whep",
            str(viewers),
            str(warmup + seconds + 1),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    line = client.stdout.readline().strip()
    if not line.startswith("connected") or int(line.split()[1]) != viewers:
        client.kill()
        raise RuntimeError(f"clients did not all connect: {line!r}")
    time.sleep(warmup)
    c0, w0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, w1 = cpu_seconds(pid), time.monotonic()
    out = client.communicate(timeout=60)[0]
    frames = int(out.split("frames", 1)[1].split()[0]) if "frames" in out else 0
    time.sleep(2)  # let the server settle before the next measurement
    return (c1 - c0) / (w1 - w0), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per case")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    print(f"media_cpu: {args.width}x{args.height} {args.fps} fps, {args.seconds:.0f} s per case; {load()}")
    results: dict[str, dict[int, float]] = {}
    for kind, label in (
        ("agent", "agent (encode once, fan out)"),
        ("naive", "aiortc naive WHEP (per-viewer encode)"),
    ):
        with server(kind, args.width, args.height, args.fps) as (base, pid):
            time.sleep(args.warmup)
            idle0, w0 = cpu_seconds(pid), time.monotonic()
            time.sleep(3)
            idle = (cpu_seconds(pid) - idle0) / (time.monotonic() - w0)
            results[kind] = {0: idle}
            for viewers in (1, 4):
                cpu, frames = measure(base, pid, viewers, args.seconds, args.warmup)
                results[kind][viewers] = cpu
                per_viewer_fps = frames / viewers / (args.seconds + args.warmup + 1)
                print(
                    f"{label:<40} viewers {viewers}: cpu {cpu:5.3f} s/s  "
                    f"(clients got {frames} frames, ~{per_viewer_fps:.1f} fps per viewer)",
                    flush=True,
                )
            print(
                f"{label:<40} idle (0 viewers): cpu {idle:5.3f} s/s; 4/1 ratio "
                f"{results[kind][4] / results[kind][1]:.2f}x; {load()}",
                flush=True,
            )
    a, n = results["agent"], results["naive"]
    print(
        f"\nratio 4 viewers / 1 viewer: agent {a[4] / a[1]:.2f}x (target <= 1.3x), naive {n[4] / n[1]:.2f}x"
    )
    print(f"CPU at 4 viewers: agent {a[4]:.3f} s/s, naive {n[4]:.3f} s/s -> naive/agent {n[4] / a[4]:.2f}x")


if __name__ == "__main__":
    main()
