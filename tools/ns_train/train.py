"""Train the streaming noise-suppression model and export TFLite (float + dynamic-range quantized).

One command: ``.venv/bin/python -m tools.ns_train.train --out device_agent/ns/models --seconds 240 --utterances 80 --pairs 800``.
Needs the ``[train]`` extra (tensorflow-cpu), espeak-ng and ../shared/data/ns. Fixed seed.
Speech: espeak-ng voices/pitch/rate. Noise: real noise (held-out tail of freesound_573577 is NOT used)
plus synthetic white/pink/brown/hum/clicks. clean_freesound_33711 is never used for training.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

FRAME, HOP, BINS, HIDDEN = 320, 160, 161, 96
SR = 16000
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ns"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "Please turn off the lights in the kitchen.",
    "Device seven reports a temperature of forty two degrees.", "Can you hear me clearly now?",
    "We will meet again at half past nine tomorrow morning.", "The camera stream is running fine.",
    "Open the garage door and check the battery level.", "Rain is expected later this afternoon.",
    "Numbers one two three four five six seven eight nine ten.", "How much does the new sensor cost?",
    "She sells sea shells by the sea shore.", "Update the firmware before the weekend.",
]
VOICES = ["en", "en-us", "en-gb-x-rp", "en+f3", "en+m3", "en+f5", "en-us+f2", "de", "fr", "es", "en+m7", "en+f4"]


def to16k(x: np.ndarray, sr: int) -> np.ndarray:
    if x.ndim > 1:
        x = x[:, 0]
    return resample_poly(x, SR, sr).astype(np.float32) if sr != SR else x.astype(np.float32)


def synth_speech(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            wav = Path(tmp) / f"{i}.wav"
            cmd = ["espeak-ng", "-v", VOICES[i % len(VOICES)], "-p", str(int(rng.integers(20, 80))),
                   "-s", str(int(rng.integers(130, 200))), "-w", str(wav), SENTENCES[int(rng.integers(len(SENTENCES)))]]
            subprocess.run(cmd, check=True, capture_output=True)
            x, sr = sf.read(wav, dtype="float32")
            out.append(to16k(x, sr))
    return out


def synth_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = int(rng.integers(5))
    w = rng.standard_normal(n).astype(np.float32)
    if kind == 1:  # pink-ish
        spec = np.fft.rfft(w); spec /= np.sqrt(np.arange(1, len(spec) + 1)); w = np.fft.irfft(spec, n)
    elif kind == 2:  # brown
        w = np.cumsum(w); w -= np.convolve(w, np.ones(400) / 400, "same")
    elif kind == 3:  # hum + harmonics
        t = np.arange(n) / SR; f0 = rng.choice([50.0, 60.0])
        w = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8)) + 0.05 * w
    elif kind == 4:  # clicks over light noise
        w = 0.1 * w; idx = rng.integers(0, n, size=max(1, n // 4000)); w[idx] += rng.uniform(-5, 5, len(idx))
    return (w / (np.std(w) + 1e-9)).astype(np.float32)


def reverb(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    rt60 = rng.uniform(0.1, 0.6); n = int(rt60 * SR)
    rir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n); rir[0] = 1.0
    y = np.convolve(x, rir / np.sqrt(np.sum(rir ** 2)))[: len(x)]
    return y.astype(np.float32)


def make_pairs(rng, speech, real_noise, count, seg):
    clean = np.zeros((count, seg), np.float32); noisy = np.zeros_like(clean)
    for i in range(count):
        s = np.concatenate([speech[int(rng.integers(len(speech)))] for _ in range(3)])
        start = int(rng.integers(0, max(1, len(s) - seg))); s = s[start:start + seg]
        s = np.pad(s, (0, seg - len(s)))
        if rng.random() < 0.3:
            s = reverb(rng, s)
        if rng.random() < 0.5:
            src = real_noise[int(rng.integers(len(real_noise)))]
            off = int(rng.integers(0, len(src) - seg)) if len(src) > seg else 0
            nz = np.resize(src[off:], seg); nz = nz / (np.std(nz) + 1e-9)
        else:
            nz = synth_noise(rng, seg)
        snr = rng.uniform(-5, 20)
        s = s / (np.std(s) + 1e-9)
        x = s + nz * 10 ** (-snr / 20)
        g = 10 ** (rng.uniform(-35, -10) / 20) / (np.std(x) + 1e-9)
        clean[i] = s * g; noisy[i] = x * g
    return clean, noisy


def build(tf):
    k = tf.keras
    inp = k.Input((None, BINS))
    x = k.layers.Dense(HIDDEN, activation="tanh", name="enc")(inp)
    x = k.layers.GRU(HIDDEN, return_sequences=True, name="gru")(x)
    m = k.layers.Dense(BINS, activation="sigmoid", name="mask")(x)
    return k.Model(inp, m)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="device_agent/ns/models")
    ap.add_argument("--seconds", type=float, default=1200, help="training wall-clock budget")
    ap.add_argument("--utterances", type=int, default=120)
    ap.add_argument("--pairs", type=int, default=1500)
    a = ap.parse_args()
    import tensorflow as tf
    tf.keras.utils.set_random_seed(1234); tf.config.threading.set_intra_op_parallelism_threads(1)
    rng = np.random.default_rng(1234)
    speech = synth_speech(rng, a.utterances)
    noises = []
    for name in ["noise_cafe_short.wav", "noise_freesound_573577.wav"]:
        x, sr = sf.read(DATA / name, dtype="float32"); x = to16k(x, sr)
        if "573577" in name:
            x = x[: int(0.7 * len(x))]  # tail held out for evaluation
        noises.append(x)
    clean, noisy = make_pairs(rng, speech, noises, a.pairs, SR * 2)
    win = tf.signal.hann_window(FRAME, periodic=True) ** 0.5

    def spec(x):
        return tf.signal.stft(x, FRAME, HOP, FRAME, window_fn=lambda n, dtype: win)

    model = build(tf)
    opt = tf.keras.optimizers.Adam(1e-3)

    @tf.function
    def step(c, n):
        sc, sn = spec(c), spec(n)
        mag = tf.abs(sn)
        with tf.GradientTape() as tape:
            m = model(tf.pow(mag + 1e-9, 0.3))
            est = m * mag
            loss = tf.reduce_mean(tf.square(tf.pow(est + 1e-9, 0.3) - tf.pow(tf.abs(sc) + 1e-9, 0.3)))
            loss += 0.1 * tf.reduce_mean(tf.square(est - tf.abs(sc))) * 100.0
        g = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(g, model.trainable_variables))
        return loss

    t0, it = time.time(), 0
    while time.time() - t0 < a.seconds:
        idx = rng.integers(0, a.pairs, 32)
        loss = step(tf.constant(clean[idx]), tf.constant(noisy[idx])); it += 1
        if it % 50 == 0:
            print(f"it {it} loss {float(loss):.4f} t {time.time() - t0:.0f}s", flush=True)
    export(tf, model, Path(a.out))


def export(tf, model, out: Path) -> None:
    """Export a single-hop graph with the GRU state as explicit input/output."""
    out.mkdir(parents=True, exist_ok=True)
    const = lambda v: tf.constant(np.asarray(v), tf.float32)  # noqa: E731
    we, be = (const(v) for v in model.get_layer("enc").get_weights())
    wk, wr, bk = (const(v) for v in model.get_layer("gru").get_weights())  # Keras order z, r, h; reset_after
    wd, bd = (const(v) for v in model.get_layer("mask").get_weights())

    @tf.function(input_signature=[tf.TensorSpec([1, BINS], tf.float32, name="feat"),
                                  tf.TensorSpec([1, HIDDEN], tf.float32, name="state")])
    def hop(feat, state):
        x = tf.tanh(tf.matmul(feat, we) + be)
        xz, xr, xh = tf.split(tf.matmul(x, wk) + bk[0], 3, axis=-1)
        hz, hr, hh = tf.split(tf.matmul(state, wr) + bk[1], 3, axis=-1)
        z, r = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
        new = z * state + (1 - z) * tf.tanh(xh + r * hh)
        return {"mask": tf.sigmoid(tf.matmul(new, wd) + bd), "state_out": new}

    cf = hop.get_concrete_function()
    for name, quant in [("ns_float.tflite", False), ("ns_quant.tflite", True)]:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], model)
        if quant:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        (out / name).write_bytes(conv.convert())
        print("wrote", out / name)


if __name__ == "__main__":
    main()
