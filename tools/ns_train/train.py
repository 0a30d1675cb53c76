"""Train the streaming noise-suppression model and export TFLite (float32, float16 weights, dynamic-range
int8).

The shipped model (fixed seeds, staged; arguments in docs/noise-suppression.md) is reproduced by::

    sh tools/ns_train/reproduce.sh

Needs the ``[train]`` extra (tensorflow-cpu, pyroomacoustics), espeak-ng / flite / festival, the Debian
packages klettres-data, ktuberling-data and alsa-utils (human speech) and ../shared/data/ns. Runs
TensorFlow on ONE thread. Data: ``tools.ns_train.data`` (synthetic and human speech, real and synthetic
noise, simulated rooms), mixed on the fly. The checkpoint is chosen on a validation set of held-out
synthetic utterances and held-out human speakers (``data.REAL_VAL_GROUPS`` and the alsa-utils phrases)
-- never the benchmark's clean_freesound_33711 speech or the held-out tail of noise_freesound_573577.
``--init`` fine-tunes an exported float model; with a larger ``--hidden`` it is widened first, with
another ``--frame`` its input and output weights are interpolated onto the new frequency grid first;
``--df-bins F`` adds a causal deep filter on the lowest F bins (``deep_filter_pair``), starting from zero.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from device_agent.ns.model import HOP, rotations, stft_windows
from device_agent.ns.quality import si_sdr as si_sdr_np
from tools.ns_train.data import (
    DEFAULT_SPEECH_SOURCES,
    EXTRA_VAL_SNRS,
    REAL_SPEECH_SOURCES,
    SR,
    TRAIN_LEVEL_DB,
    TRAIN_SNR_DB,
    Corpus,
    Mixer,
    extra_validation_set,
)

COMPRESS = 0.3


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def build(
    tf,
    bins: int,
    hidden: int,
    layers: int,
    mu: np.ndarray,
    sd: np.ndarray,
    df_bins: int = 0,
    df_order: int = 0,
):
    """feat (compressed magnitude) -> fixed normalisation -> Dense -> GRU x layers -> sigmoid mask.

    With ``df_bins``: the phase feature of those bins joins the first layer's input, and a second head
    gives the deep filter (``2 * df_order * df_bins`` tanh-bounded coefficients), initialised to zero so
    that the model starts as the plain mask model it may be fine-tuned from."""
    k = tf.keras
    inp = k.Input((None, bins))
    x = k.layers.Rescaling(1.0 / sd, offset=-mu / sd, name="norm")(inp)
    inputs = [inp]
    if df_bins:
        phase = k.Input((None, 2 * df_bins))
        inputs.append(phase)
        x = k.layers.Concatenate()([x, phase])
    x = k.layers.Dense(hidden, activation="tanh", name="enc")(x)
    for i in range(layers):
        x = k.layers.GRU(hidden, return_sequences=True, name=f"gru{i}")(x)
    outputs = [k.layers.Dense(bins, activation="sigmoid", name="mask")(x)]
    if df_bins:
        outputs.append(
            k.layers.Dense(
                2 * df_order * df_bins, activation="tanh", kernel_initializer="zeros", name="filter"
            )(x)
        )
    return k.Model(inputs, outputs)


def deep_filter_pair(tf, frame: int, df_bins: int, df_order: int):
    """The runtime's deep filter in TensorFlow (``StreamingDenoiser``) over whole [batch, time, bins]
    spectra: ``features(spec)`` gives the network's input, ``apply(spec, outputs)`` the enhanced spectrum
    (mask times spectrum; plus the filter over the current and past frames of the lowest ``df_bins``)."""
    rot = tf.constant(rotations(frame, df_bins, df_order))

    def past(spec, taps: int = df_order):  # [taps, batch, time, df_bins]: frame t - i rotated to the present
        low = spec[..., :df_bins]  # (zeros before the first frame)
        return tf.stack(
            [tf.pad(low, [[0, 0], [i, 0], [0, 0]])[:, : tf.shape(low)[1]] * rot[i] for i in range(taps)]
        )

    def features(spec):
        mag = tf.pow(tf.abs(spec) + 1e-9, COMPRESS)
        if not df_bins:
            return mag
        p = spec[..., :df_bins] * tf.math.conj(past(spec, 2)[1])
        p = p / tf.complex(tf.abs(p) + 1e-9, 0.0)
        return [mag, tf.concat([tf.math.real(p), tf.math.imag(p)], -1)]

    def apply(spec, out):
        if not df_bins:
            return tf.complex(out, 0.0) * spec
        mask, coef = out
        re, im = tf.split(coef, 2, axis=-1)
        shape = tf.concat([tf.shape(re)[:-1], [df_order, df_bins]], 0)
        c = tf.transpose(tf.complex(tf.reshape(re, shape), tf.reshape(im, shape)), [2, 0, 1, 3])
        est = tf.complex(mask, 0.0) * spec
        return tf.concat([est[..., :df_bins] + tf.reduce_sum(c * past(spec), 0), est[..., df_bins:]], -1)

    return features, apply


def stft_pair(tf, frame: int):
    """The runtime's STFT in TensorFlow (``StreamingDenoiser``): frame ``i`` ends with hop ``i``, asymmetric
    windows from ``stft_windows``; ``istft(stft(x))`` equals ``x`` except the last hop."""
    wa, ws = (tf.constant(w) for w in stft_windows(frame))

    def stft(x):
        x = tf.pad(x, [[0, 0], [frame - HOP, 0]])
        return tf.signal.stft(x, frame, HOP, frame, window_fn=lambda n, dtype: wa, pad_end=False)

    def istft(s):
        return tf.signal.overlap_and_add(tf.signal.irfft(s, [frame]) * ws, HOP)[:, frame - HOP :]

    return stft, istft


def validation_set(corpus: Corpus, seed: int, count: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed mixtures, half of the speech from held-out synthetic utterances and half from held-out human
    speakers (``corpus.real_val``: validation speaker groups and the alsa-utils phrases)."""
    mixer = Mixer(
        corpus,
        np.random.default_rng(seed + 1),
        speech=corpus.val_speech,
        real=corpus.real_val,
        real_fraction=0.5,
    )
    return mixer.batch(count, int(seconds * SR))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="device_agent/ns/models")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--steps", type=int, default=6000, help="optimizer steps (batch of --batch x --segment s)"
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--segment", type=float, default=2.0, help="seconds per training example")
    ap.add_argument("--utterances", type=int, default=1500, help="synthetic utterances to generate")
    ap.add_argument("--rirs", type=int, default=80, help="simulated rooms")
    ap.add_argument(
        "--frame",
        type=int,
        default=512,
        help="STFT analysis frame (asymmetric window; the latency stays that of 2 hops = 20 ms)",
    )
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument(
        "--df-bins",
        type=int,
        default=0,
        help="deep filter on this many lowest bins (0: mask only); fine-tunes a mask model too",
    )
    ap.add_argument(
        "--df-order", type=int, default=3, help="deep filter taps: the current and N-1 past frames"
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sisdr-weight", type=float, default=0.01)
    ap.add_argument(
        "--real-fraction",
        type=float,
        default=0.5,
        help="share of training utterances drawn from the Debian human recordings",
    )
    ap.add_argument(
        "--speech-sources",
        nargs="+",
        default=list(DEFAULT_SPEECH_SOURCES),
        choices=sorted(REAL_SPEECH_SOURCES),
        help="Debian packages whose human recordings are drawn "
        "(data.REAL_SPEECH_SOURCES; the default is the recipe of stages 4-11)",
    )
    ap.add_argument(
        "--asym-weight",
        type=float,
        default=0.0,
        help="extra penalty on suppressed speech (compressed magnitude below the clean one)",
    )
    ap.add_argument(
        "--ambient-fraction",
        type=float,
        default=0.0,
        help="share of training noises drawn from the Debian ambient recordings (data.ambient_noises), "
        "taken from the synthetic share",
    )
    ap.add_argument(
        "--snr",
        type=float,
        nargs=2,
        default=TRAIN_SNR_DB,
        metavar=("LOW", "HIGH"),
        help="training mixtures' SNR range in dB "
        f"(validation keeps {TRAIN_SNR_DB[0]:g}..{TRAIN_SNR_DB[1]:g})",
    )
    ap.add_argument(
        "--extra-fraction",
        type=float,
        default=0.0,
        help="share of training utterances from ns-extra's training talkers (data.extra_data)",
    )
    ap.add_argument(
        "--extra-noise-fraction",
        type=float,
        default=0.0,
        help="share of training noises from ns-extra's training recordings",
    )
    ap.add_argument(
        "--shared-noise-fraction",
        type=float,
        default=0.45,
        help="share of training noises from the two recordings of ../shared/data/ns",
    )
    ap.add_argument(
        "--mic-fraction",
        type=float,
        default=0.0,
        help="share of examples given a random microphone colouration (data.microphone)",
    )
    ap.add_argument(
        "--level",
        type=float,
        nargs=2,
        default=TRAIN_LEVEL_DB,
        metavar=("LOW", "HIGH"),
        help="training mixtures' RMS level range in dBFS",
    )
    ap.add_argument(
        "--reverb-target-ms",
        type=float,
        default=50.0,
        help="how much of a simulated room's response the target keeps (0: all; the model then does "
        "not dereverberate)",
    )
    ap.add_argument(
        "--select",
        choices=("mixed", "extra"),
        default="mixed",
        help="checkpoint choice: 'mixed' the earlier validation set (PESQ-WB + 0.1 SI-SDR); 'extra' "
        "ns-extra's held-out talkers in held-out noises (docs/noise-suppression.md, the rule)",
    )
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--val-count", type=int, default=48)
    ap.add_argument("--cache", default="", help="directory to cache the generated corpus")
    ap.add_argument(
        "--max-minutes", type=float, default=45.0, help="safety stop (the best checkpoint is exported)"
    )
    ap.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop after this many steps (the schedule still spans --steps); 0: run all",
    )
    ap.add_argument(
        "--init", default="", help="start from this float .tflite written by an earlier run (fine-tuning)"
    )
    ap.add_argument(
        "--mix-seed", type=int, default=None, help="seed of the on-the-fly mixing (default: --seed)"
    )
    a = ap.parse_args(argv)
    if not 0.0 <= a.ambient_fraction <= 0.55:
        ap.error("--ambient-fraction is taken from the synthetic share: 0..0.55")
    if a.shared_noise_fraction + a.ambient_fraction + a.extra_noise_fraction > 1.0:
        ap.error(
            "the noise shares (--shared-noise-fraction, --ambient-fraction, --extra-noise-fraction) exceed 1"
        )
    if a.extra_fraction + a.real_fraction > 1.0:
        ap.error("--extra-fraction + --real-fraction exceed 1")
    t_start = time.time()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(a.seed)

    cache = Path(a.cache) / f"corpus_s{a.seed}_u{a.utterances}_r{a.rirs}.npz" if a.cache else None
    if cache and cache.is_file():
        corpus = Corpus.load(cache)
        log("corpus loaded from", cache)
    else:
        log(f"generating corpus: {a.utterances} utterances, {a.rirs} rooms")
        corpus = Corpus.build(a.seed, a.utterances, a.rirs, log)
        log("corpus", corpus.stats)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            corpus.save(cache)
    log(
        f"train utterances {len(corpus.train_speech)} "
        f"({sum(map(len, corpus.train_speech)) / SR / 60:.1f} min), "
        f"val {len(corpus.val_speech)}, rooms {len(corpus.rirs)}"
    )
    corpus.add_real_speech(a.seed, log, a.speech_sources)
    if a.ambient_fraction:
        corpus.add_ambient_noise(log)
    if a.extra_fraction or a.extra_noise_fraction or a.select == "extra":
        corpus.add_extra(log)
        if not (corpus.extra.speech_val and corpus.extra.noise_val):
            ap.error("ns-extra not found (../shared/data/ns-extra)")
    rng = np.random.default_rng(a.seed if a.mix_seed is None else a.mix_seed)
    mixer = Mixer(
        corpus,
        rng,
        real_fraction=a.real_fraction,
        snr_db=tuple(a.snr),
        ambient_fraction=a.ambient_fraction,
        extra_fraction=a.extra_fraction,
        extra_noise_fraction=a.extra_noise_fraction,
        shared_noise_fraction=a.shared_noise_fraction,
        mic_fraction=a.mic_fraction,
        level_db=tuple(a.level),
        reverb_target_ms=a.reverb_target_ms,
    )
    seg = int(a.segment * SR)
    if a.select == "extra":
        vc, vn = extra_validation_set(corpus.extra, a.val_count, 4.0)
        val_clean, val_noisy = np.stack(vc), np.stack(vn)
    else:
        val_clean, val_noisy = validation_set(corpus, a.seed, a.val_count, 4.0)

    stft, istft = stft_pair(tf, a.frame)
    bins = a.frame // 2 + 1
    if a.df_bins and not (a.df_order >= 2 and 0 < a.df_bins <= bins):
        ap.error("--df-bins needs 1..bins and --df-order >= 2")
    features, apply = deep_filter_pair(tf, a.frame, a.df_bins, a.df_order)

    # fixed feature normalisation from the training distribution (baked into the exported graph)
    feats = [np.abs(stft(tf.constant(mixer.batch(16, seg)[1])).numpy()) for _ in range(8)]
    f = np.power(np.concatenate([x.reshape(-1, bins) for x in feats]) + 1e-9, COMPRESS)
    mu, sd = f.mean(0).astype(np.float32), (f.std(0) + 1e-3).astype(np.float32)

    if a.init:  # the earlier run's normalisation is folded into its enc weights: identity here
        mu, sd = np.zeros(bins, np.float32), np.ones(bins, np.float32)
    model = build(tf, bins, a.hidden, a.layers, mu, sd, a.df_bins, a.df_order)
    if a.init:
        load_tflite_weights(model, Path(a.init), a.layers, a.frame)
        log("initialised from", a.init)
    log(f"model: {model.count_params()} weights, hidden {a.hidden} x {a.layers} GRU")
    warm = 200
    sched = tf.keras.optimizers.schedules.CosineDecay(
        a.lr, max(1, a.steps - warm), alpha=0.03, warmup_target=None
    )

    def lr_at(step: int) -> float:
        return a.lr * min(1.0, (step + 1) / warm) if step < warm else float(sched(step - warm))

    opt = tf.keras.optimizers.Adam(a.lr, clipnorm=3.0)

    def compressed(s):
        mag = tf.abs(s)
        cm = tf.pow(mag + 1e-9, COMPRESS)
        return cm, tf.complex(cm * tf.math.real(s) / (mag + 1e-9), cm * tf.math.imag(s) / (mag + 1e-9))

    def losses(c, n):
        sc, sn = stft(c), stft(n)
        est = apply(sn, model(features(sn)))
        ce, cce = compressed(est)
        cc, ccc = compressed(sc)
        l_mag = tf.reduce_mean(tf.square(ce - cc))
        l_cplx = tf.reduce_mean(tf.square(tf.abs(cce - ccc)))
        ref, out = istft(sc), istft(est)
        ref -= tf.reduce_mean(ref, -1, keepdims=True)
        out -= tf.reduce_mean(out, -1, keepdims=True)
        e_ref = tf.reduce_sum(ref * ref, -1)
        proj = tf.reduce_sum(out * ref, -1, keepdims=True) / (e_ref[:, None] + 1e-9) * ref
        sdr = (
            10.0
            * tf.math.log((tf.reduce_sum(proj**2, -1) + 1e-9) / (tf.reduce_sum((out - proj) ** 2, -1) + 1e-9))
            / tf.math.log(10.0)
        )
        has = tf.cast(e_ref > 1e-6, tf.float32)
        l_sdr = -tf.reduce_sum(sdr * has) / (tf.reduce_sum(has) + 1e-9)
        l_asym = tf.reduce_mean(tf.square(tf.nn.relu(cc - ce)))  # over-suppression of speech
        return 0.3 * l_mag + 0.7 * l_cplx + a.asym_weight * l_asym, l_sdr, out

    @tf.function
    def train_step(c, n, lr):
        opt.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            l_spec, l_sdr, _ = losses(c, n)
            loss = l_spec + a.sisdr_weight * l_sdr
        g = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(g, model.trainable_variables, strict=True))
        return l_spec, l_sdr

    @tf.function
    def enhance(n):
        sn = stft(n)
        return istft(apply(sn, model(features(sn))))

    def validate() -> dict:
        from pesq import pesq

        outs = np.concatenate(
            [enhance(tf.constant(val_noisy[i : i + 16])).numpy() for i in range(0, len(val_noisy), 16)]
        )
        ref = np.concatenate(
            [istft(stft(tf.constant(val_clean[i : i + 16]))).numpy() for i in range(0, len(val_clean), 16)]
        )
        if a.select == "extra":
            return extra_rule(
                [r[HOP : -2 * HOP] for r in ref],
                [o[HOP : -2 * HOP] for o in outs],
                [x[HOP : -2 * HOP] for x in val_noisy],
            )
        sdrs, pq = [], []
        for i, (r, o) in enumerate(zip(ref, outs, strict=True)):
            if np.std(r) < 1e-5:
                continue
            sdrs.append(si_sdr_np(r[HOP : -2 * HOP], o[HOP : -2 * HOP]))
            if i % 2 == 0:
                try:
                    pq.append(pesq(SR, r[HOP : -2 * HOP], o[HOP : -2 * HOP], "wb"))
                except Exception:  # noqa: BLE001 - pesq rejects clips without an utterance
                    pass
        res = {"si_sdr": float(np.mean(sdrs)), "pesq": float(np.mean(pq))}
        res["score"] = res["pesq"] + 0.1 * res["si_sdr"]
        return res

    noisy_ref = {
        "si_sdr": float(
            np.mean([si_sdr_np(c, n) for c, n in zip(val_clean, val_noisy, strict=True) if np.std(c) > 1e-5])
        )
    }
    log("validation noisy input SI-SDR", round(noisy_ref["si_sdr"], 2))
    if a.init:  # where the run starts, on the same set (not a candidate)
        noisy_ref["init"] = validate()
        log(
            f"validation of --init: SI-SDR {noisy_ref['init']['si_sdr']:.2f} "
            f"PESQ {noisy_ref['init']['pesq']:.3f} "
            f"score {noisy_ref['init']['score']:.3f} guard {noisy_ref['init'].get('guard')}"
        )
    best, best_w, history = None, model.get_weights(), []
    t0, acc, step = time.time(), np.zeros(2), 0
    for step in range(a.steps):
        c, n = mixer.batch(a.batch, seg)
        ls, lsdr = train_step(tf.constant(c), tf.constant(n), tf.constant(lr_at(step), tf.float32))
        acc += [float(ls), float(lsdr)]
        if (step + 1) % 50 == 0:
            log(
                f"step {step + 1} spec {acc[0] / 50:.4f} sisdr {-acc[1] / 50:.2f} lr {lr_at(step):.2e} "
                f"{(time.time() - t0) / (step + 1):.3f} s/step"
            )
            acc[:] = 0
        last = step + 1 == a.steps or step + 1 == a.stop_after or (time.time() - t_start) / 60 > a.max_minutes
        if (step + 1) % a.val_every == 0 or last:
            v = validate()
            v["step"] = step + 1
            history.append(v)
            # the rule: the best score among checkpoints that keep the intelligibility guard (until one does,
            # among all); every new best is exported at once, so a stopped run leaves its best model on disk
            key = rule_key(v)
            if best is None or key > best:
                best, best_w = key, model.get_weights()
                export(
                    tf, model, Path(a.out), a.layers, a.hidden, bins, a.df_bins, a.df_order, float_only=True
                )
                (Path(a.out) / "ns_train_report.json").write_text(
                    json.dumps({"args": vars(a), "checkpoint": v, "history": history}, indent=1)
                )
            log(
                f"val step {step + 1}: SI-SDR {v['si_sdr']:.2f} PESQ {v['pesq']:.3f} score {v['score']:.3f}"
                + (
                    f" STOI {v['stoi']:.3f} guard {'kept' if v['guard'] else 'BROKEN'}"
                    if "guard" in v
                    else ""
                )
                + f" (best {best[1]:.3f})"
            )
        if last:
            break
    model.set_weights(best_w)
    out = Path(a.out)
    export(tf, model, out, a.layers, a.hidden, bins, a.df_bins, a.df_order)
    best_v = max(history, key=rule_key) if history else {}
    report = {
        "args": vars(a),
        "steps_run": step + 1,
        "minutes": round((time.time() - t_start) / 60, 1),
        "weights": int(model.count_params()),
        "best_validation": best_v,
        "validation_noisy": noisy_ref,
        "corpus": corpus.stats,
        "history": history,
    }
    (out / "ns_train_report.json").write_text(json.dumps(report, indent=1))
    log("done", json.dumps({k: report[k] for k in ("steps_run", "minutes", "best_validation")}))


def rule_key(v: dict) -> tuple[bool, float]:
    """Checkpoints are ranked by (keeps the intelligibility guard, score); without a guard it counts as
    kept."""
    return bool(v.get("guard", True)), float(v["score"])


def extra_rule(ref: list[np.ndarray], out: list[np.ndarray], noisy: list[np.ndarray]) -> dict:
    """The pre-fixed checkpoint rule on ns-extra's held-out set (mixture i at ``EXTRA_VAL_SNRS[i % 5]`` dB):
    ``score`` = mean PESQ-WB + 0.1 x mean SI-SDR over the 0/5/10 dB mixtures; ``guard`` = the output's
    mean STOI is at least the noisy input's at every SNR (0..20 dB)."""
    from pesq import pesq
    from pystoi import stoi

    by: dict[int, dict[str, list[float]]] = {}
    for i, (r, o, x) in enumerate(zip(ref, out, noisy, strict=True)):
        d = by.setdefault(
            EXTRA_VAL_SNRS[i % len(EXTRA_VAL_SNRS)], {"pesq": [], "si_sdr": [], "stoi": [], "stoi_in": []}
        )
        d["si_sdr"].append(si_sdr_np(r, o))
        d["stoi"].append(stoi(r, o, SR))
        d["stoi_in"].append(stoi(r, x, SR))
        try:
            d["pesq"].append(pesq(SR, r, o, "wb"))
        except Exception:  # noqa: BLE001 - pesq rejects clips without an utterance
            pass
    per = {snr: {k: float(np.mean(v)) for k, v in d.items()} for snr, d in sorted(by.items())}
    core = [per[s] for s in (0, 5, 10) if s in per]
    res = {
        "pesq": float(np.mean([p["pesq"] for p in core])),
        "si_sdr": float(np.mean([p["si_sdr"] for p in core])),
        "stoi": float(np.mean([p["stoi"] for p in core])),
        "per_snr": per,
        "guard": all(p["stoi"] >= p["stoi_in"] for p in per.values()),
    }
    res["score"] = res["pesq"] + 0.1 * res["si_sdr"]
    return res


def load_tflite_weights(model, path: Path, layers: int, frame: int) -> None:
    """Inverse of ``export`` for the float model: read its constant tensors back into the Keras layers.
    A model with another frame (bin count) is carried over by interpolating its input and output weights
    across frequency (a warm start, not an exact copy); a narrower one is widened (``_widen``). A mask model
    read into a deep-filter one gets zero weights for the phase inputs and keeps the zero filter head."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    t = {d["name"]: d["index"] for d in it.get_tensor_details()}
    get = lambda name: np.array(it.get_tensor(t[name]), np.float32)  # noqa: E731 - float16 weights too
    has_df = "filter" in it.get_signature_list()["serving_default"]["outputs"]
    # export() builds matmuls/adds in a fixed order: enc, then per layer (input, recurrent), mask[, filter]
    mm = ["MatMul"] + [f"MatMul_{i}" for i in range(1, 2 * layers + 2 + has_df)]
    adds, k = ["add"], 0
    for _ in range(layers):
        adds += [f"add_{k + 1}", f"add_{k + 2}"]
        k += 6
    adds += [f"add_{k + 1 + i}" for i in range(1 + has_df)]
    head = 2 * layers + 1
    small = {"enc": [get(mm[0]).T, get(adds[0])], "mask": [get(mm[head]).T, get(adds[head])]}
    if has_df:
        small["filter"] = [get(mm[head + 1]).T, get(adds[head + 1])]
    old_bins, bins = small["mask"][0].shape[1], frame // 2 + 1
    if old_bins != bins:
        if has_df:
            raise ValueError("re-binning (--frame) starts from a mask model, not a deep-filter one")
        # same frequencies, compressed magnitudes scaled by the windows' energy ratio
        energy = lambda n: float(np.sum(stft_windows(n)[0] ** 2))  # noqa: E731
        scale = (energy(frame) / energy(2 * (old_bins - 1))) ** (COMPRESS / 2)
        small["enc"][0] = _rebin(bins, old_bins).T @ small["enc"][0] / scale
        to_new = _rebin(old_bins, bins)
        small["mask"] = [small["mask"][0] @ to_new.T, to_new @ small["mask"][1]]
    for i in range(layers):
        small[f"gru{i}"] = [
            get(mm[1 + 2 * i]).T,
            get(mm[2 + 2 * i]).T,
            np.stack([get(adds[1 + 2 * i]), get(adds[2 + 2 * i])]),
        ]
    for name, weights in small.items():
        layer = model.get_layer(name)
        layer.set_weights(
            [
                _widen(w, fresh, gates=3 if name.startswith("gru") else 1)
                for w, fresh in zip(weights, layer.get_weights(), strict=True)
            ]
        )


def _rebin(n_from: int, n_to: int) -> np.ndarray:
    """[n_to, n_from]: linear interpolation from one STFT bin grid to another over the same 0..8 kHz."""
    pos = np.linspace(0, n_from - 1, n_to)
    lo = np.clip(np.floor(pos).astype(int), 0, n_from - 2)
    m = np.zeros((n_to, n_from), np.float32)
    m[np.arange(n_to), lo] = 1 - (pos - lo)
    m[np.arange(n_to), lo + 1] = pos - lo
    return m


def _widen(small: np.ndarray, fresh: np.ndarray, gates: int) -> np.ndarray:
    """Embed a trained weight into a wider layer's freshly initialised one so that the wider network
    computes exactly what the trained one did: trained values in the old rows and (per GRU gate block)
    old columns, zero rows for the new inputs (new units do not yet influence the old ones), fresh values
    in the new columns (new units start learning from the old ones)."""
    if small.shape == fresh.shape:
        return small
    out = fresh.copy()
    if small.ndim == 2:
        out[small.shape[0] :] = 0.0
    rows = tuple(slice(0, k) for k in small.shape[:-1])
    old, new = small.shape[-1] // gates, fresh.shape[-1] // gates
    for g in range(gates):
        out[rows + (slice(g * new, g * new + old),)] = small[..., g * old : (g + 1) * old]
    return out


def export(
    tf,
    model,
    out: Path,
    layers: int,
    hidden: int,
    bins: int,
    df_bins: int = 0,
    df_order: int = 0,
    float_only: bool = False,
) -> None:
    """Single-hop graph; all GRU states concatenated into ONE explicit state input/output [1, layers*hidden].
    A deep-filter model adds the ``phase`` input and the ``filter`` output (``MaskModel``). ``float_only``:
    just ``ns_float.tflite`` (a checkpoint that ``--init`` can continue from)."""
    out.mkdir(parents=True, exist_ok=True)
    const = lambda v: tf.constant(np.asarray(v, np.float32))  # noqa: E731
    norm = model.get_layer("norm")
    scale, offset = np.asarray(norm.scale, np.float32), np.asarray(norm.offset, np.float32)
    we, be = model.get_layer("enc").get_weights()
    # normalisation folded into enc; the phase rows (after the first ``bins``) have none
    be_f = const(be + offset @ we[:bins])
    we_f = const(np.concatenate([we[:bins] * scale[:, None], we[bins:]]))
    grus = [[const(v) for v in model.get_layer(f"gru{i}").get_weights()] for i in range(layers)]
    wd, bd = (const(v) for v in model.get_layer("mask").get_weights())
    wf, bf = (const(v) for v in model.get_layer("filter").get_weights()) if df_bins else (None, None)

    def body(x, state):
        x = tf.tanh(tf.matmul(x, we_f) + be_f)
        states = tf.split(state, layers, axis=-1) if layers > 1 else [state]
        new_states = []
        for (wk, wr, b), h in zip(grus, states, strict=True):  # Keras gate order z, r, h; reset_after=True
            xz, xr, xh = tf.split(tf.matmul(x, wk) + b[0], 3, axis=-1)
            hz, hr, hh = tf.split(tf.matmul(h, wr) + b[1], 3, axis=-1)
            z, r = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
            x = z * h + (1 - z) * tf.tanh(xh + r * hh)
            new_states.append(x)
        res = {
            "mask": tf.sigmoid(tf.matmul(x, wd) + bd),
            "state_out": tf.concat(new_states, -1) if layers > 1 else new_states[0],
        }
        if df_bins:
            res["filter"] = tf.tanh(tf.matmul(x, wf) + bf)
        return res

    feat_spec = tf.TensorSpec([1, bins], tf.float32, name="feat")
    state_spec = tf.TensorSpec([1, layers * hidden], tf.float32, name="state")
    if df_bins:
        hop = tf.function(
            lambda feat, phase, state: body(tf.concat([feat, phase], -1), state),
            input_signature=[
                feat_spec,
                tf.TensorSpec([1, 2 * df_bins], tf.float32, name="phase"),
                state_spec,
            ],
        )
    else:
        hop = tf.function(lambda feat, state: body(feat, state), input_signature=[feat_spec, state_spec])

    cf = hop.get_concrete_function()
    # ns_float: float32 weights (what --init reads back); ns_float16: the same float computation with its
    # weights stored as float16 (half the size; the shipped float variant); ns_quant: dynamic-range int8
    variants = [("ns_float.tflite", None), ("ns_float16.tflite", tf.float16), ("ns_quant.tflite", tf.int8)]
    for name, quant in variants[:1] if float_only else variants:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], model)
        if quant is not None:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if quant == tf.float16:
            conv.target_spec.supported_types = [tf.float16]
        (out / name).write_bytes(conv.convert())
        log("wrote", out / name, (out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
