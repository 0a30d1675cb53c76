"""Noise-suppression quality and cost vs peers (noisy input, RNNoise, DTLN) on held-out real mixtures.

Run: ``.venv/bin/python -m benchmarks.ns_quality [MODEL_DIR]`` (reads ../shared/data/ns,
../shared/data/ns-extra and ../shared/anchors/dtln).
Set 1: clean_freesound_33711 (never used in training) + held-out tail of noise_freesound_573577 at 0/5/10 dB.
Set 2 (when ../shared/data/ns-extra is there): its held-out talkers in its held-out noise recordings
(``tools.ns_train.data.extra_validation_set``: the 0/5/10 dB mixtures of the 60, 12 per SNR; never
trained on).
Each output is aligned to the clean signal by the lag (0..1024) maximising correlation. Per-SNR tables with
the peers (noisy input, RNNoise, DTLN) from the same run, then the cost.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from pesq import pesq
from pystoi import stoi
from scipy.signal import resample_poly

from device_agent.ns.model import HOP, MaskModel
from device_agent.ns.quality import si_sdr
from device_agent.ns.stage import NoiseSuppressionStage

SHARED = Path(__file__).resolve().parents[2] / "shared"
SR = 16000


def align(clean: np.ndarray, out: np.ndarray) -> np.ndarray:
    n = len(clean) - 1100
    lag = int(np.argmax([np.dot(clean[:n], out[k : k + n]) for k in range(0, 1025)]))
    y = out[lag : lag + len(clean)]
    return np.pad(y, (0, len(clean) - len(y)))


def ours(x: np.ndarray, model: MaskModel) -> np.ndarray:
    """Our stage over one clip, hop by hop, from a fresh recurrent state."""
    model.reset()
    st = NoiseSuppressionStage(model, budget_rtf=1e9)
    n = (len(x) + 2 * HOP) // HOP * HOP
    pcm = np.clip(np.round(np.pad(x, (0, n - len(x))) * 32768), -32768, 32767).astype(np.int16)
    return np.concatenate([st.process(pcm[i : i + HOP]) for i in range(0, n, HOP)]).astype(np.float32) / 32768


def rnnoise(x: np.ndarray) -> np.ndarray:
    from pyrnnoise import RNNoise

    rn = RNNoise(48000)
    x48 = (np.clip(resample_poly(x, 3, 1), -1, 1) * 32767).astype(np.int16)
    frames = [f for _, f in rn.denoise_chunk(x48, partial=True)]
    y = np.concatenate([np.atleast_2d(f)[0] for f in frames]).astype(np.float32) / 32768
    return resample_poly(y, 1, 3).astype(np.float32)


class Dtln:
    """DTLN: 512 block, 128 shift, two TFLite models with explicit LSTM states."""

    def __init__(self, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        d = SHARED / "anchors" / "dtln"
        self.m = [Interpreter(model_path=str(d / f"model_{i}.tflite"), num_threads=threads) for i in (1, 2)]
        for m in self.m:
            m.allocate_tensors()

    def run(self, x: np.ndarray) -> np.ndarray:
        m1, m2 = self.m
        i1, o1 = m1.get_input_details(), m1.get_output_details()
        i2, o2 = m2.get_input_details(), m2.get_output_details()
        big = lambda ds: next(d for d in ds if d["shape"][-1] in (257, 512))  # noqa: E731
        st = lambda ds: next(d for d in ds if d["shape"][-1] not in (257, 512))  # noqa: E731
        s1 = np.zeros(st(i1)["shape"], np.float32)
        s2 = np.zeros(st(i2)["shape"], np.float32)
        buf_in = np.zeros(512, np.float32)
        buf_out = np.zeros(512, np.float32)
        out = np.zeros(len(x) + 512, np.float32)
        for k in range(0, len(x) - 128, 128):
            buf_in[:-128] = buf_in[128:]
            buf_in[-128:] = x[k : k + 128]
            spec = np.fft.rfft(buf_in)
            m1.set_tensor(big(i1)["index"], np.abs(spec).reshape(1, 1, -1).astype(np.float32))
            m1.set_tensor(st(i1)["index"], s1)
            m1.invoke()
            mask = m1.get_tensor(big(o1)["index"])
            s1 = m1.get_tensor(st(o1)["index"])
            blk = np.fft.irfft(spec * mask.reshape(-1)).astype(np.float32).reshape(1, 1, -1)
            m2.set_tensor(big(i2)["index"], blk)
            m2.set_tensor(st(i2)["index"], s2)
            m2.invoke()
            y = m2.get_tensor(big(o2)["index"]).reshape(-1)
            s2 = m2.get_tensor(st(o2)["index"])
            buf_out[:-128] = buf_out[128:]
            buf_out[-128:] = 0
            buf_out += y
            out[k : k + 128] = buf_out[:128]
        return out


def table(mixtures: list[tuple[int, np.ndarray, np.ndarray]], systems: dict) -> None:
    """Per-SNR rows (means over that SNR's mixtures) for every system, then the means over all SNRs."""
    print(f"{'snr':>4} {'system':<14} {'PESQ-WB':>8} {'STOI':>6} {'SI-SDR':>7}")
    per: dict[str, dict[int, list[list[float]]]] = {}
    for snr, clean, x in mixtures:
        for name, fn in systems.items():
            y = align(clean, fn(x).astype(np.float32))
            per.setdefault(name, {}).setdefault(snr, []).append(
                [pesq(SR, clean, y, "wb"), stoi(clean, y, SR), si_sdr(clean, y)]
            )
    for snr in sorted({m[0] for m in mixtures}):
        for name in systems:
            row = np.mean(per[name][snr], axis=0)
            print(f"{snr:>4} {name:<14} {row[0]:8.3f} {row[1]:6.3f} {row[2]:7.2f}")
    print("mean over SNRs:")
    for name in systems:
        m = np.mean([np.mean(rows, axis=0) for rows in per[name].values()], axis=0)
        print(f"     {name:<14} {m[0]:8.3f} {m[1]:6.3f} {m[2]:7.2f}")


def extra_set() -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(snr, clean, noisy) of ns-extra's held-out validation mixtures at 0/5/10 dB; empty without ns-extra."""
    from tools.ns_train.data import EXTRA_VAL_SNRS, extra_data, extra_validation_set

    extra = extra_data(SHARED / "data" / "ns-extra", val_only=True)
    if not (extra.speech_val and extra.noise_val):
        return []
    clean, noisy = extra_validation_set(extra, 60)
    snrs = [EXTRA_VAL_SNRS[i % len(EXTRA_VAL_SNRS)] for i in range(len(clean))]
    return [(s, c, x) for s, c, x in zip(snrs, clean, noisy, strict=True) if s in (0, 5, 10)]


def main() -> None:
    d = SHARED / "data" / "ns"
    c, r = sf.read(d / "clean_freesound_33711.wav", dtype="float32")
    clean = resample_poly(c, SR, r)
    nz, r = sf.read(d / "noise_freesound_573577.wav", dtype="float32")
    nz = resample_poly(nz, SR, r)
    nz = np.resize(nz[int(0.7 * len(nz)) :], len(clean))
    clean = clean / np.std(clean) * 0.05
    mdir = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1] / "device_agent/ns/models"
    )
    models = {
        "ours (quant)": MaskModel(mdir / "ns_quant.tflite"),
        "ours (fp16)": MaskModel(mdir / "ns_float16.tflite"),
    }
    dtln = Dtln()
    systems = {
        "noisy": lambda x: x,
        "RNNoise": rnnoise,
        "DTLN": dtln.run,
        **{k: (lambda x, m=m: ours(x, m)) for k, m in models.items()},
    }
    print("set 1: clean_freesound_33711 + held-out tail of noise_freesound_573577")
    table(
        [
            (snr, clean, (clean + nz / np.std(nz) * 0.05 * 10 ** (-snr / 20)).astype(np.float32))
            for snr in (0, 5, 10)
        ],
        systems,
    )
    extra = extra_set()
    if extra:
        print(
            "set 2: ns-extra held-out talkers in held-out noise recordings "
            f"({len(extra) // 3} mixtures per SNR)"
        )
        table(extra, systems)
    x = np.random.default_rng(0).standard_normal(SR * 5).astype(np.float32) * 0.05
    # interleaved repeats, best of each: the machine is shared, so take the least-disturbed run
    runs: dict[str, list[float]] = {k: [] for k in ("ours (quant)", "ours (fp16)", "DTLN")}
    for _ in range(5):
        for name, fn in (
            ("ours (quant)", lambda: ours(x, models["ours (quant)"])),
            ("ours (fp16)", lambda: ours(x, models["ours (fp16)"])),
            ("DTLN", lambda: dtln.run(x)),
        ):
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    t_dtln = min(runs["DTLN"])
    print(
        f"cost, 1 thread, 5 s audio, best of 5 interleaved runs, Python overhead included: "
        f"DTLN per-shift(8 ms) {t_dtln / 625 * 1e3:.3f} ms RTF {t_dtln / 5:.4f}"
    )
    for name in ("ours (quant)", "ours (fp16)"):
        t = min(runs[name])
        print(
            f"     {name:<14} per-hop(10 ms) {t / 500 * 1e3:.3f} ms RTF {t / 5:.4f}; "
            f"ratio to DTLN {t / t_dtln:.2f}"
        )


if __name__ == "__main__":
    main()
