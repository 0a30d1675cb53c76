"""Score exported models on the training pipeline's validation set, through the real streaming runtime.

``.venv/bin/python -m tools.ns_train.evaluate device_agent/ns/models/ns_quant.tflite [--floor 0.05]``

Same validation mixtures as ``train.py`` (same seed, corpus cache): held-out synthetic utterances and the
Debian ``alsa_front_center`` phrase, never the benchmark's speech or noise. ``--floor`` tries a lower bound
on the mask (a post-processing knob), to decide its value on data that is not the benchmark.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from device_agent.ns.model import HOP, MaskModel, StreamingDenoiser
from tools.ns_train.data import SR, Corpus
from tools.ns_train.train import si_sdr_np, validation_set


class _Floored:
    """A MaskModel whose mask is bounded below by ``floor``."""

    def __init__(self, model: MaskModel, floor: float) -> None:
        self.model, self.floor, self.path = model, floor, model.path

    def reset(self) -> None:
        self.model.reset()

    def step(self, feat: np.ndarray) -> np.ndarray:
        return np.maximum(self.model.step(feat), self.floor)


def score(model_path: Path, clean: np.ndarray, noisy: np.ndarray, floor: float = 0.0) -> dict[str, float]:
    from pesq import pesq
    from pystoi import stoi
    model = MaskModel(model_path)
    sdr, pq, st = [], [], []
    for c, x in zip(clean, noisy):
        if np.std(c) < 1e-5:
            continue
        den = StreamingDenoiser(_Floored(model, floor) if floor > 0 else model)  # type: ignore[arg-type]
        model.reset()
        pad = np.zeros(HOP + (-len(x)) % HOP, np.float32)
        y = den.process(np.concatenate([x, pad]))[den.latency:den.latency + len(x)]
        sdr.append(si_sdr_np(c, y)); st.append(stoi(c, y, SR))
        try:
            pq.append(pesq(SR, c, y, "wb"))
        except Exception:  # noqa: BLE001 - pesq rejects clips without an utterance
            pass
    return {"pesq": float(np.mean(pq)), "stoi": float(np.mean(st)), "si_sdr": float(np.mean(sdr))}


def real_validation_set(corpus: Corpus, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Real speech (Debian's alsa_front_center phrase, the only real clean speech allowed) in training
    noises at 0/5/10 dB: checks the synthetic-to-real speech gap without touching the benchmark."""
    import soundfile as sf
    from tools.ns_train.data import DATA, Mixer, to16k
    x, sr = sf.read(DATA / "alsa_front_center.wav", dtype="float32")
    pad = np.zeros(SR // 4, np.float32)
    sp = to16k(x, sr); sp = np.concatenate([pad, sp / np.std(sp), pad])
    mixer = Mixer(corpus, np.random.default_rng(seed + 2))
    clean, noisy = [], []
    for i in range(count):
        nz = mixer._noise(len(sp))  # noqa: SLF001 - same noise recipe as training
        snr = (0, 5, 10)[i % 3]
        clean.append(sp * 0.05); noisy.append((sp + nz * 10 ** (-snr / 20)) * 0.05)
    return np.stack(clean).astype(np.float32), np.stack(noisy).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--utterances", type=int, default=1500)
    ap.add_argument("--rirs", type=int, default=80)
    ap.add_argument("--cache", default="")
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--floor", type=float, nargs="*", default=[0.0])
    ap.add_argument("--real", action="store_true", help="real-speech set (alsa_front_center) instead")
    a = ap.parse_args(argv)
    cache = Path(a.cache) / f"corpus_s{a.seed}_u{a.utterances}_r{a.rirs}.npz" if a.cache else None
    corpus = Corpus.load(cache) if cache and cache.is_file() else Corpus.build(a.seed, a.utterances, a.rirs)
    clean, noisy = (real_validation_set(corpus, a.seed, a.count) if a.real
                    else validation_set(corpus, a.seed, a.count, 4.0))
    keep = np.std(clean, 1) > 1e-5
    print(f"validation: {int(keep.sum())} mixtures; noisy input SI-SDR "
          f"{np.mean([si_sdr_np(c, x) for c, x in zip(clean[keep], noisy[keep])]):.2f} dB")
    for m in a.models:
        for fl in a.floor:
            r = score(Path(m), clean, noisy, fl)
            print(f"{m} floor {fl:.3f}: PESQ-WB {r['pesq']:.3f} STOI {r['stoi']:.3f} SI-SDR {r['si_sdr']:.2f}")


if __name__ == "__main__":
    main()
