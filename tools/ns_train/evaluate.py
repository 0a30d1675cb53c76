"""Score exported models on the training pipeline's validation set, through the real streaming runtime.

``.venv/bin/python -m tools.ns_train.evaluate device_agent/ns/models/ns_quant.tflite [--floor 0.05]``

Same validation mixtures as ``train.py`` (same seed, corpus cache): held-out synthetic utterances and
held-out human speakers; ``--real``: the human speakers only, in training noises; ``--ambient``: the
human speakers in the held-out Debian ambient recordings (real noise never trained on). Never the
benchmark's speech or noise.
``--peers`` adds RNNoise and DTLN on the same mixtures; ``--floor`` tries a lower bound on the mask (a
post-processing knob), to decide its value on data that is not the benchmark.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from device_agent.ns.model import HOP, MaskModel, StreamingDenoiser
from tools.ns_train.data import SR, Corpus
from tools.ns_train.train import si_sdr_np, validation_set


class _Floored:
    """A MaskModel whose mask is bounded below by ``floor``."""

    def __init__(self, model: MaskModel, floor: float) -> None:
        self.model, self.floor, self.path, self.frame = model, floor, model.path, model.frame
        self.df_bins, self.df_order = model.df_bins, model.df_order

    def reset(self) -> None:
        self.model.reset()

    def step(self, feat: np.ndarray, phase: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        mask, coef = self.model.step(feat, phase)
        return np.maximum(mask, self.floor), coef


def score(clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray],
          enhance: Callable[[np.ndarray], np.ndarray], snrs: Sequence[int] | None = None) -> dict:
    """Mean PESQ-WB, STOI and SI-SDR of ``enhance(noisy)`` (time-aligned to its input) over the mixtures
    that contain speech; with ``snrs`` (each mixture's SNR in dB), also ``pesq_by_snr`` {snr: mean PESQ-WB}."""
    from pesq import pesq
    from pystoi import stoi
    sdr, pq, st, by = [], [], [], {}
    for i, (c, x) in enumerate(zip(clean, noisy)):
        if np.std(c) < 1e-5:
            continue
        y = enhance(x)
        sdr.append(si_sdr_np(c, y)); st.append(stoi(c, y, SR))
        try:
            pq.append(pesq(SR, c, y, "wb"))
        except Exception:  # noqa: BLE001 - pesq rejects clips without an utterance
            continue
        if snrs is not None:
            by.setdefault(snrs[i], []).append(pq[-1])
    return {"pesq": float(np.mean(pq)), "stoi": float(np.mean(st)), "si_sdr": float(np.mean(sdr)),
            "pesq_by_snr": {k: float(np.mean(v)) for k, v in sorted(by.items())}}


def ours(model_path: Path, floor: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """The streaming runtime on a whole clip, latency removed."""
    model = MaskModel(model_path)

    def enhance(x: np.ndarray) -> np.ndarray:
        model.reset()
        den = StreamingDenoiser(_Floored(model, floor) if floor > 0 else model)  # type: ignore[arg-type]
        pad = np.zeros(HOP + (-len(x)) % HOP, np.float32)
        return den.process(np.concatenate([x, pad]))[den.latency:den.latency + len(x)]
    return enhance


def peers() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """RNNoise and DTLN as the benchmark runs them, outputs aligned to the input."""
    from benchmarks.ns_quality import Dtln, align, rnnoise
    dtln = Dtln()
    return {"RNNoise": lambda x: align(x, rnnoise(x)), "DTLN": lambda x: align(x, dtln.run(x))}


REAL_SET_SNRS = (0, 5, 10)  # mixture i of ``real_validation_set`` is at REAL_SET_SNRS[i % 3] dB


def real_validation_set(corpus: Corpus, seed: int, count: int, ambient: bool = False
                        ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Held-out human speakers only (``corpus.real_val``: validation groups and the alsa-utils phrases):
    three utterances with 0.2 s gaps at 0/5/10 dB, in training noises -- checks the synthetic-to-real gap
    -- or, with ``ambient``, in the held-out real ambient recordings (``corpus.ambient_val``: sea, jet,
    traffic, wind) -- checks real noise never trained on. Neither touches the benchmark."""
    from tools.ns_train.data import Mixer, loop_excerpt
    rng = np.random.default_rng(seed + (3 if ambient else 2))
    mixer = Mixer(corpus, rng)
    gap, clean, noisy = np.zeros(SR // 5, np.float32), [], []
    for i in range(count):
        parts = [corpus.real_val[int(k)] for k in rng.integers(0, len(corpus.real_val), 3)]
        sp = np.concatenate([gap] + [x for p in parts for x in (p, gap)])
        sp /= np.std(sp)
        if ambient:
            nz = loop_excerpt(rng, corpus.ambient_val[i % len(corpus.ambient_val)], len(sp))
            nz = nz / (np.std(nz) + 1e-9)
        else:
            nz = mixer._noise(len(sp))  # noqa: SLF001 - same noise recipe as training
        snr = REAL_SET_SNRS[i % 3]
        clean.append(sp * 0.05); noisy.append((sp + nz * 10 ** (-snr / 20)) * 0.05)
    return clean, noisy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--utterances", type=int, default=1500)
    ap.add_argument("--rirs", type=int, default=80)
    ap.add_argument("--cache", default="")
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--floor", type=float, nargs="*", default=[0.0])
    ap.add_argument("--real", action="store_true", help="held-out human speakers only")
    ap.add_argument("--ambient", action="store_true",
                    help="held-out human speakers in the held-out Debian ambient recordings")
    ap.add_argument("--peers", action="store_true", help="also score RNNoise and DTLN on the same mixtures")
    a = ap.parse_args(argv)
    cache = Path(a.cache) / f"corpus_s{a.seed}_u{a.utterances}_r{a.rirs}.npz" if a.cache else None
    corpus = Corpus.load(cache) if cache and cache.is_file() else Corpus.build(a.seed, a.utterances, a.rirs)
    corpus.add_real_speech(a.seed, log=lambda *_: None)
    if a.ambient:
        corpus.add_ambient_noise(log=lambda *_: None)
        if not corpus.ambient_val:
            ap.error("--ambient: none of the held-out ambient recordings is installed "
                     "(docs/noise-suppression.md, train-deps)")
    clean, noisy = (real_validation_set(corpus, a.seed, a.count, a.ambient) if a.real or a.ambient
                    else validation_set(corpus, a.seed, a.count, 4.0))
    pairs = [(c, x) for c, x in zip(clean, noisy) if np.std(c) > 1e-5]
    print(f"validation: {len(pairs)} mixtures; noisy input SI-SDR "
          f"{np.mean([si_sdr_np(c, x) for c, x in pairs]):.2f} dB")
    systems = {f"{m} floor {fl:.3f}": ours(Path(m), fl) for m in a.models for fl in a.floor}
    snrs = [REAL_SET_SNRS[i % 3] for i in range(len(clean))] if a.real or a.ambient else None
    for name, enhance in ((peers() if a.peers else {}) | systems).items():
        r = score(clean, noisy, enhance, snrs)
        per_snr = " ".join(f"{k}dB {v:.3f}" for k, v in r["pesq_by_snr"].items())
        print(f"{name}: PESQ-WB {r['pesq']:.3f} STOI {r['stoi']:.3f} SI-SDR {r['si_sdr']:.2f}"
              + (f" (PESQ-WB per SNR: {per_snr})" if per_snr else ""))


if __name__ == "__main__":
    main()
