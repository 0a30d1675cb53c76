"""Loads the shipped streaming mask model and runs it one 10 ms hop at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HOP = 160
DEFAULT_MODEL = Path(__file__).with_name("models") / "ns_quant.tflite"


class ModelError(RuntimeError):
    """The model file is missing, corrupt or has an unexpected signature."""


def stft_windows(frame: int, hop: int = HOP) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric analysis/synthesis windows for a low-latency STFT (Mauler & Martin, 2007).

    The analysis window spans ``frame`` samples: a long rise over the past and a ``hop``-long fall at
    the newest end, for fine frequency resolution. The synthesis window is non-zero on the newest
    ``2*hop`` samples only, and analysis x synthesis there is a periodic Hann window (overlap-add to
    one at ``hop``), so the latency is that of a ``2*hop`` frame whatever ``frame`` is. With
    ``frame == 2*hop`` both are the ordinary square-root Hann window."""
    if frame < 2 * hop:
        raise ValueError(f"frame {frame} shorter than two hops ({2 * hop})")
    hann = lambda n: np.hanning(n + 1)[:n]  # noqa: E731 - periodic
    rise = frame - hop
    analysis = np.concatenate([np.sqrt(hann(2 * rise)[:rise]), np.sqrt(hann(2 * hop)[hop:])])
    synthesis = np.zeros(frame)
    tail = slice(frame - 2 * hop, frame)
    synthesis[tail] = hann(2 * hop) / np.maximum(analysis[tail], 1e-12)
    return analysis.astype(np.float32), synthesis.astype(np.float32)


def _interpreter(path: Path, threads: int) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - alternative runtime
        from tflite_runtime.interpreter import Interpreter
    if not path.is_file():
        raise ModelError(f"noise-suppression model not found: {path}")
    try:
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError on bad files
        raise ModelError(f"noise-suppression model {path} is not a valid TFLite model: {exc}") from exc
    return it


def rotations(frame: int, bins: int, order: int, hop: int = HOP) -> np.ndarray:
    """[order, bins] complex: ``rot[i, k]`` advances bin ``k`` of a frame ``i`` hops old to the present as a
    tone at the bin's centre frequency would (``exp(j 2 pi k hop i / frame)``). Applied to the deep filter's
    past frames (and to the previous frame in the phase feature) so that a steady voiced harmonic looks the
    same in every bin: the network predicts coefficients relative to it."""
    k = np.arange(bins)[None, :]
    i = np.arange(order)[:, None]
    return np.exp(2j * np.pi * k * hop * i / frame).astype(np.complex64)


def phase_feature(current: np.ndarray, previous_rotated: np.ndarray) -> np.ndarray:
    """Real and imaginary parts of the unit inter-frame phasor ``X_t conj(R X_{t-1})`` of the deep-filter
    bins (0 for silent bins): how far each bin's phase advanced beyond its centre frequency in one hop."""
    p = current * np.conj(previous_rotated)
    p = p / (np.abs(p) + 1e-9)
    return np.concatenate([p.real, p.imag])


class MaskModel:
    """Per-hop inference: compressed magnitude (``bins``) in, mask out; recurrent state kept here.

    The graph's inputs are ``feat`` [1, bins] and ``state`` [1, H], its outputs ``mask`` [1, bins] and
    ``state_out`` [1, H]; ``bins`` fixes the STFT frame (``frame = 2 * (bins - 1)``). A deep-filter model
    also takes ``phase`` [1, 2F] (``phase_feature`` of its lowest F bins) and returns ``filter``
    [1, 2*N*F]: complex coefficients (real parts, then imaginary; tap-major) of an N-tap filter (N >= 2)
    over the current and past frames of those bins, added to the masked spectrum (``StreamingDenoiser``)."""

    def __init__(self, path: str | Path = "", threads: int = 1) -> None:
        self.path = Path(path) if path else DEFAULT_MODEL
        self._it = _interpreter(self.path, threads)
        ins, outs = self._signature()
        if set(ins) not in ({"feat", "state"}, {"feat", "state", "phase"}) or set(outs) != (
            {"mask", "state_out"} | ({"filter"} if "phase" in ins else set())
        ):
            raise ModelError(
                f"{self.path}: expected inputs feat, state[, phase] and outputs mask, state_out"
                f"[, filter]; got {sorted(ins)} -> {sorted(outs)}"
            )
        shape = lambda d: tuple(int(v) for v in d["shape"])  # noqa: E731
        self.bins = shape(ins["feat"])[-1]
        state_shape = shape(ins["state"])
        self.df_bins = shape(ins["phase"])[-1] // 2 if "phase" in ins else 0
        self.df_order = shape(outs["filter"])[-1] // (2 * self.df_bins) if self.df_bins else 0
        if (
            shape(outs["mask"]) != (1, self.bins)
            or shape(outs["state_out"]) != state_shape
            or self.bins < 161
            or (
                self.df_bins
                and (self.df_order < 2 or shape(outs["filter"])[-1] != 2 * self.df_order * self.df_bins)
            )
        ):
            raise ModelError(
                f"{self.path}: unexpected shapes "
                f"{ {n: shape(d) for n, d in ins.items()} } -> { {n: shape(d) for n, d in outs.items()} }"
            )
        self.frame = 2 * (self.bins - 1)
        self.state_size = state_shape[-1]  # all recurrent layers' states, concatenated
        self._in = {n: d["index"] for n, d in ins.items()}
        self._out = {n: d["index"] for n, d in outs.items()}
        self._state = np.zeros(state_shape, np.float32)

    def _signature(self) -> tuple[dict, dict]:
        """Input and output tensor details by name, from the model's (default) signature."""
        if not self._it.get_signature_list():
            raise ModelError(f"{self.path}: the model has no signature (inputs and outputs cannot be named)")
        runner = self._it.get_signature_runner()
        return runner.get_input_details(), runner.get_output_details()

    def reset(self) -> None:
        self._state[:] = 0

    def step(self, feat: np.ndarray, phase: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """One hop: the mask [bins] and, for a deep-filter model, the complex filter [N, F] (else None)."""
        it = self._it
        it.set_tensor(self._in["feat"], feat.reshape(1, self.bins).astype(np.float32, copy=False))
        it.set_tensor(self._in["state"], self._state)
        if self.df_bins:
            it.set_tensor(
                self._in["phase"],
                np.zeros((1, 2 * self.df_bins), np.float32)
                if phase is None
                else phase.reshape(1, -1).astype(np.float32, copy=False),
            )
        it.invoke()
        self._state = it.get_tensor(self._out["state_out"]).copy()
        if not self.df_bins:
            return it.get_tensor(self._out["mask"])[0], None
        c = it.get_tensor(self._out["filter"])[0].reshape(2, self.df_order, self.df_bins)
        return it.get_tensor(self._out["mask"])[0], c[0] + 1j * c[1]


class StreamingDenoiser:
    """Asymmetric-window STFT (the model's frame, 160 hop) + mask (and deep filter) + overlap-add.

    Output is offset by ``latency`` = 160 samples; the algorithmic latency (synthesis window, no
    look-ahead) is 320 samples = 20 ms: a sample leaves at most 20 ms after it arrived, counting the
    hop it waits for. Only the analysis window, and the deep filter's taps, reach further into the past
    (``stft_windows``)."""

    latency = HOP
    algorithmic_latency = 2 * HOP

    def __init__(self, model: MaskModel) -> None:
        self.model = model
        self.frame = model.frame
        self._wa, ws = stft_windows(self.frame)
        self._ws = ws[-2 * HOP :]
        self._in = np.zeros(self.frame, np.float32)
        self._ola = np.zeros(2 * HOP, np.float32)
        self._df = f = model.df_bins
        if f:
            self._rot = rotations(self.frame, f, model.df_order)
            # row i: the deep-filter bins i hops ago, rotated
            self._past = np.zeros((model.df_order, f), np.complex64)

    def reset(self) -> None:
        self.model.reset()
        self._in[:] = 0
        self._ola[:] = 0
        if self._df:
            self._past[:] = 0

    def hop(self, x: np.ndarray) -> np.ndarray:
        """Process one 160-sample float hop; returns 160 samples delayed by ``latency``."""
        self._in[:-HOP] = self._in[HOP:]
        self._in[-HOP:] = x
        spec = np.fft.rfft(self._in * self._wa)
        feat = np.power(np.abs(spec) + 1e-9, 0.3)
        f = self._df
        if not f:
            out_spec = spec * self.model.step(feat)[0]
        else:
            low, past = spec[:f], self._past
            past[1:] = past[:-1] * self._rot[1]  # one hop older: rotate on by one more hop
            past[0] = low
            mask, coef = self.model.step(feat, phase_feature(low, past[1]))
            assert coef is not None, "a deep-filter model returns its filter every hop"
            out_spec = spec * mask
            out_spec[:f] += np.sum(coef * past, axis=0)
        self._ola += np.fft.irfft(out_spec, self.frame)[-2 * HOP :].astype(np.float32) * self._ws
        out = self._ola[:HOP].copy()
        self._ola[:HOP] = self._ola[HOP:]
        self._ola[HOP:] = 0
        return out

    def process(self, x: np.ndarray) -> np.ndarray:
        """Float samples, a whole number of hops."""
        if len(x) % HOP:
            raise ValueError(f"length {len(x)} is not a whole number of {HOP}-sample hops")
        return (
            np.concatenate([self.hop(x[i : i + HOP]) for i in range(0, len(x), HOP)])
            if len(x)
            else x.astype(np.float32)
        )
