"""Score exported models on the training pipeline's validation set, through the real streaming runtime.

``.venv/bin/python -m tools.ns_train.evaluate device_agent/ns/models/ns_quant.tflite [--floor 0.05]``

Same validation mixtures as ``train.py`` (same seed, corpus cache): held-out synthetic utterances and
held-out human speakers; ``--real``: the human speakers only, in training noises; ``--ambient``: the
human speakers in the held-out Debian ambient recordings (real noise never trained on); ``--extra``:
ns-extra's held-out talkers in its held-out noise recordings (``data.extra_validation_set``; per-SNR
table at 0/5/10/15/20 dB and the intelligibility guard, ``stoi_guard``). Never the benchmark's speech or
noise.
``--peers`` adds RNNoise and DTLN on the same mixtures; ``--floor`` tries a lower bound on the mask (a
post-processing knob), to decide its value on data that is not the benchmark.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from device_agent.ns.model import HOP, MaskModel, StreamingDenoiser
from tools.ns_train.data import EXTRA_VAL_SNRS, SR, Corpus, extra_data, extra_validation_set
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


def score(
    clean: Sequence[np.ndarray],
    noisy: Sequence[np.ndarray],
    enhance: Callable[[np.ndarray], np.ndarray],
    snrs: Sequence[int] | None = None,
) -> dict:
    """Mean PESQ-WB, STOI and SI-SDR of ``enhance(noisy)`` (time-aligned to its input) over the mixtures
    that contain speech; with ``snrs`` (each mixture's SNR in dB), also ``pesq_by_snr`` {snr: mean
    PESQ-WB}."""
    from pesq import pesq
    from pystoi import stoi

    sdr, pq, st, by = [], [], [], {}
    for i, (c, x) in enumerate(zip(clean, noisy, strict=True)):
        if np.std(c) < 1e-5:
            continue
        y = enhance(x)
        sdr.append(si_sdr_np(c, y))
        st.append(stoi(c, y, SR))
        try:
            pq.append(pesq(SR, c, y, "wb"))
        except Exception:  # noqa: BLE001 - pesq rejects clips without an utterance
            continue
        if snrs is not None:
            by.setdefault(snrs[i], []).append(pq[-1])
    return {
        "pesq": float(np.mean(pq)),
        "stoi": float(np.mean(st)),
        "si_sdr": float(np.mean(sdr)),
        "pesq_by_snr": {k: float(np.mean(v)) for k, v in sorted(by.items())},
    }


def score_by_snr(
    clean: Sequence[np.ndarray],
    noisy: Sequence[np.ndarray],
    enhance: Callable[[np.ndarray], np.ndarray],
    snrs: Sequence[int],
) -> dict[int, dict[str, float]]:
    """{snr: mean PESQ-WB, STOI, SI-SDR of ``enhance(noisy)``} over the mixtures at each SNR."""
    from pesq import pesq
    from pystoi import stoi

    by: dict[int, dict[str, list[float]]] = {}
    for c, x, snr in zip(clean, noisy, snrs, strict=True):
        y = enhance(x)
        d = by.setdefault(snr, {"pesq": [], "stoi": [], "si_sdr": []})
        d["stoi"].append(stoi(c, y, SR))
        d["si_sdr"].append(si_sdr_np(c, y))
        try:
            d["pesq"].append(pesq(SR, c, y, "wb"))
        except Exception:  # noqa: BLE001 - pesq rejects clips without an utterance
            pass
    return {snr: {k: float(np.mean(v)) for k, v in d.items()} for snr, d in sorted(by.items())}


def stoi_guard(system: dict[int, dict[str, float]], noisy: dict[int, dict[str, float]]) -> list[int]:
    """The intelligibility guard: the SNRs (of 0..20 dB) at which the system's mean STOI is below the
    noisy input's. Empty: kept."""
    return [snr for snr in system if 0 <= snr <= 20 and system[snr]["stoi"] < noisy[snr]["stoi"]]


def print_by_snr(name: str, per: dict[int, dict[str, float]]) -> None:
    """One line per SNR and the mean over 0/5/10 dB."""
    for snr, r in per.items():
        print(f"{snr:>4} {name:<40} {r['pesq']:8.3f} {r['stoi']:6.3f} {r['si_sdr']:7.2f}")
    core = [per[s] for s in (0, 5, 10) if s in per]
    print(
        f"0-10 {name:<40} {np.mean([r['pesq'] for r in core]):8.3f} "
        f"{np.mean([r['stoi'] for r in core]):6.3f} {np.mean([r['si_sdr'] for r in core]):7.2f}"
    )


def ours(model_path: Path, floor: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """The streaming runtime on a whole clip, latency removed."""
    model = MaskModel(model_path)

    def enhance(x: np.ndarray) -> np.ndarray:
        model.reset()
        den = StreamingDenoiser(_Floored(model, floor) if floor > 0 else model)  # type: ignore[arg-type]
        pad = np.zeros(HOP + (-len(x)) % HOP, np.float32)
        return den.process(np.concatenate([x, pad]))[den.latency : den.latency + len(x)]

    return enhance


def peers() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """RNNoise and DTLN as the benchmark runs them, outputs aligned to the input."""
    from benchmarks.ns_quality import Dtln, align, rnnoise

    dtln = Dtln()
    return {"RNNoise": lambda x: align(x, rnnoise(x)), "DTLN": lambda x: align(x, dtln.run(x))}


REAL_SET_SNRS = (0, 5, 10)  # mixture i of ``real_validation_set`` is at REAL_SET_SNRS[i % 3] dB


def real_validation_set(
    corpus: Corpus, seed: int, count: int, ambient: bool = False
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
        clean.append(sp * 0.05)
        noisy.append((sp + nz * 10 ** (-snr / 20)) * 0.05)
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
    ap.add_argument(
        "--ambient",
        action="store_true",
        help="held-out human speakers in the held-out Debian ambient recordings",
    )
    ap.add_argument(
        "--extra",
        action="store_true",
        help="ns-extra's held-out talkers in its held-out noises, per SNR, with the STOI guard",
    )
    ap.add_argument("--peers", action="store_true", help="also score RNNoise and DTLN on the same mixtures")
    a = ap.parse_args(argv)
    if a.extra:
        return main_extra(a.models, a.count, a.peers)
    cache = Path(a.cache) / f"corpus_s{a.seed}_u{a.utterances}_r{a.rirs}.npz" if a.cache else None
    corpus = Corpus.load(cache) if cache and cache.is_file() else Corpus.build(a.seed, a.utterances, a.rirs)
    corpus.add_real_speech(a.seed, log=lambda *_: None)
    if a.ambient:
        corpus.add_ambient_noise(log=lambda *_: None)
        if not corpus.ambient_val:
            ap.error(
                "--ambient: none of the held-out ambient recordings is installed "
                "(docs/noise-suppression.md, train-deps)"
            )
    clean, noisy = (
        real_validation_set(corpus, a.seed, a.count, a.ambient)
        if a.real or a.ambient
        else validation_set(corpus, a.seed, a.count, 4.0)
    )
    pairs = [(c, x) for c, x in zip(clean, noisy, strict=True) if np.std(c) > 1e-5]
    print(
        f"validation: {len(pairs)} mixtures; noisy input SI-SDR "
        f"{np.mean([si_sdr_np(c, x) for c, x in pairs]):.2f} dB"
    )
    systems = {f"{m} floor {fl:.3f}": ours(Path(m), fl) for m in a.models for fl in a.floor}
    snrs = [REAL_SET_SNRS[i % 3] for i in range(len(clean))] if a.real or a.ambient else None
    for name, enhance in ((peers() if a.peers else {}) | systems).items():
        r = score(clean, noisy, enhance, snrs)
        per_snr = " ".join(f"{k}dB {v:.3f}" for k, v in r["pesq_by_snr"].items())
        print(
            f"{name}: PESQ-WB {r['pesq']:.3f} STOI {r['stoi']:.3f} SI-SDR {r['si_sdr']:.2f}"
            + (f" (PESQ-WB per SNR: {per_snr})" if per_snr else "")
        )


def main_extra(models: Sequence[str], count: int, with_peers: bool) -> None:
    """``--extra``: per-SNR table (PESQ-WB, STOI, SI-SDR) and the STOI guard for every system."""
    extra = extra_data(val_only=True)
    if not (extra.speech_val and extra.noise_val):
        raise SystemExit("--extra: ../shared/data/ns-extra not found")
    clean, noisy = extra_validation_set(extra, count)
    snrs = [EXTRA_VAL_SNRS[i % len(EXTRA_VAL_SNRS)] for i in range(len(clean))]
    print(
        f"ns-extra validation: {len(clean)} mixtures, {extra.stats['talkers_val']} held-out talkers, "
        f"{extra.stats['noise_recordings_val']} held-out noise recordings"
    )
    print(f"{'snr':>4} {'system':<40} {'PESQ-WB':>8} {'STOI':>6} {'SI-SDR':>7}")
    base = score_by_snr(clean, noisy, lambda x: x, snrs)
    print_by_snr("noisy input", base)
    systems = (peers() if with_peers else {}) | {m: ours(Path(m)) for m in models}
    for name, enhance in systems.items():
        per = score_by_snr(clean, noisy, enhance, snrs)
        print_by_snr(name, per)
        broken = stoi_guard(per, base)
        print(
            f"     {name}: STOI guard "
            f"{'kept' if not broken else 'BROKEN at ' + ', '.join(f'{s} dB' for s in broken)}"
        )


if __name__ == "__main__":
    main()
