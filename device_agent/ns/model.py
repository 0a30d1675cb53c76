"""Loads the shipped streaming mask model and runs it one 10 ms hop at a time."""
from __future__ import annotations

from pathlib import Path

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


def _interpreter(path: Path, threads: int):
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


class MaskModel:
    """Per-hop inference: compressed magnitude (``bins``) in, mask out; GRU state kept here.

    The graph has two inputs, ``feat`` [1, bins] and ``state`` [1, H], and two outputs of the same
    shapes; ``bins`` fixes the STFT frame (``frame = 2 * (bins - 1)``)."""

    def __init__(self, path: str | Path = "", threads: int = 1) -> None:
        self.path = Path(path) if path else DEFAULT_MODEL
        self._it = _interpreter(self.path, threads)
        ins = {d["name"]: d for d in self._it.get_input_details()}
        feat = next((d for n, d in ins.items() if "feat" in n), None)
        state = next((d for n, d in ins.items() if "state" in n), None)
        if len(ins) != 2 or feat is None or state is None:
            raise ModelError(f"{self.path}: expected inputs 'feat' [1,bins] and 'state' [1,H], got {list(ins)}")
        self.bins, feat_shape, state_shape = int(feat["shape"][-1]), tuple(feat["shape"]), tuple(state["shape"])
        by_shape = {tuple(d["shape"]): d["index"] for d in self._it.get_output_details()}
        if feat_shape == state_shape or feat_shape not in by_shape or state_shape not in by_shape or self.bins < 161:
            raise ModelError(f"{self.path}: unexpected signature {feat_shape}/{state_shape} -> {list(by_shape)}")
        self.frame = 2 * (self.bins - 1)
        self._feat, self._state_in = feat["index"], state["index"]
        self._mask, self._state_out = by_shape[feat_shape], by_shape[state_shape]
        self._state = np.zeros(state_shape, np.float32)

    def reset(self) -> None:
        self._state[:] = 0

    def step(self, feat: np.ndarray) -> np.ndarray:
        it = self._it
        it.set_tensor(self._feat, feat.reshape(1, self.bins).astype(np.float32))
        it.set_tensor(self._state_in, self._state)
        it.invoke()
        self._state = it.get_tensor(self._state_out).copy()
        return it.get_tensor(self._mask)[0]


class StreamingDenoiser:
    """Asymmetric-window STFT (the model's frame, 160 hop) + mask model + overlap-add.

    Output is offset by ``latency`` = 160 samples; the algorithmic latency (synthesis window, no
    look-ahead) is 320 samples = 20 ms: a sample leaves at most 20 ms after it arrived, counting the
    hop it waits for. Only the analysis window reaches further into the past (``stft_windows``)."""

    latency = HOP
    algorithmic_latency = 2 * HOP

    def __init__(self, model: MaskModel) -> None:
        self.model = model
        self.frame = model.frame
        self._wa, ws = stft_windows(self.frame)
        self._ws = ws[-2 * HOP:]
        self._in = np.zeros(self.frame, np.float32)
        self._ola = np.zeros(2 * HOP, np.float32)

    def reset(self) -> None:
        self.model.reset(); self._in[:] = 0; self._ola[:] = 0

    def hop(self, x: np.ndarray) -> np.ndarray:
        """Process one 160-sample float hop; returns 160 samples delayed by ``latency``."""
        self._in[:-HOP] = self._in[HOP:]
        self._in[-HOP:] = x
        spec = np.fft.rfft(self._in * self._wa)
        mask = self.model.step(np.power(np.abs(spec) + 1e-9, 0.3))
        self._ola += np.fft.irfft(spec * mask, self.frame)[-2 * HOP:].astype(np.float32) * self._ws
        out = self._ola[:HOP].copy()
        self._ola[:HOP] = self._ola[HOP:]
        self._ola[HOP:] = 0
        return out

    def process(self, x: np.ndarray) -> np.ndarray:
        """Float samples, a whole number of hops."""
        if len(x) % HOP:
            raise ValueError(f"length {len(x)} is not a whole number of {HOP}-sample hops")
        return np.concatenate([self.hop(x[i:i + HOP]) for i in range(0, len(x), HOP)]) if len(x) else x.astype(np.float32)
