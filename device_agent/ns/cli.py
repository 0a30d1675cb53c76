"""`device-agent ns denoise IN.wav OUT.wav` and `device-agent ns bench`."""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction

import numpy as np

from device_agent.ns.model import HOP, MaskModel, ModelError
from device_agent.ns.stage import NoiseSuppressionStage

RATE = 16000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ns", help="on-device noise suppression tools")
    nsub = p.add_subparsers(dest="ns_command", required=True)
    d = nsub.add_parser("denoise", help="denoise a WAV (any rate; first channel) with the streaming model")
    d.add_argument("input")
    d.add_argument("output")
    d.add_argument("--model", default="", help="TFLite model (default: shipped)")
    d.add_argument("--threads", type=int, default=1)
    d.set_defaults(func=cmd_denoise)
    b = nsub.add_parser("bench", help="per-hop inference time and real-time factor on this machine")
    b.add_argument("--model", default="")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--seconds", type=float, default=5.0)
    b.set_defaults(func=cmd_bench)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    from scipy.signal import resample_poly

    if src == dst:
        return x
    f = Fraction(dst, src)
    return resample_poly(x, f.numerator, f.denominator)


def denoise_array(x: np.ndarray, rate: int, model: MaskModel) -> np.ndarray:
    """Float mono at ``rate`` -> denoised float at ``rate``, same length, latency removed."""
    stage = NoiseSuppressionStage(model, budget_rtf=1e9)
    y16 = _resample(x.astype(np.float64), rate, RATE)
    n = len(y16)
    padded = np.zeros(((n + stage.latency + HOP - 1) // HOP) * HOP, np.float32)
    padded[:n] = y16
    pcm = np.clip(np.round(padded * 32768), -32768, 32767).astype(np.int16)
    out = stage.process(pcm).astype(np.float32)[stage.latency : stage.latency + n] / 32768.0
    return _resample(out, RATE, rate)[: len(x)].astype(np.float32)


def cmd_denoise(args: argparse.Namespace) -> int:
    import soundfile as sf

    try:
        x, rate = sf.read(args.input, dtype="float32", always_2d=True)
    except Exception as exc:
        print(f"cannot read {args.input}: {exc}", file=sys.stderr)
        return 2
    try:
        model = MaskModel(args.model, args.threads)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    y = denoise_array(x[:, 0], rate, model)
    sf.write(args.output, y, rate, subtype="PCM_16")
    print(f"wrote {args.output} ({len(y) / rate:.2f} s at {rate} Hz)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        model = MaskModel(args.model, args.threads)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(int(args.seconds * RATE) // HOP * HOP) * 3000).astype(np.int16)
    stage = NoiseSuppressionStage(model, budget_rtf=1e9)
    stage.process(pcm[: HOP * 10])
    t0 = time.perf_counter()
    for i in range(0, len(pcm), HOP):
        stage.process(pcm[i : i + HOP])
    dt = time.perf_counter() - t0
    hops = len(pcm) // HOP
    print(f"per-hop {dt / hops * 1e3:.3f} ms  RTF {dt / (len(pcm) / RATE):.4f}  threads {args.threads}")
    return 0
