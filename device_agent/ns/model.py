"""Loads the shipped streaming mask model and runs it one 10 ms hop at a time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

FRAME, HOP, BINS = 320, 160, 161
DEFAULT_MODEL = Path(__file__).with_name("models") / "ns_quant.tflite"


class ModelError(RuntimeError):
    """The model file is missing, corrupt or has an unexpected signature."""


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
    """Per-hop inference: compressed magnitude (161 bins) in, mask out; GRU state kept here."""

    def __init__(self, path: str | Path = "", threads: int = 1) -> None:
        self.path = Path(path) if path else DEFAULT_MODEL
        self._it = _interpreter(self.path, threads)
        ins = {tuple(d["shape"]): d["index"] for d in self._it.get_input_details()}
        outs = self._it.get_output_details()
        if (1, BINS) not in ins or len(ins) != 2:
            raise ModelError(f"{self.path}: expected inputs [1,{BINS}] and a [1,H] state, got {list(ins)}")
        self._feat = ins.pop((1, BINS))
        (state_shape, self._state_in), = ins.items()
        by_shape = {tuple(d["shape"]): d["index"] for d in outs}
        if (1, BINS) not in by_shape or state_shape not in by_shape:
            raise ModelError(f"{self.path}: unexpected outputs {list(by_shape)}")
        self._mask, self._state_out = by_shape[(1, BINS)], by_shape[state_shape]
        self._state = np.zeros(state_shape, np.float32)

    def reset(self) -> None:
        self._state[:] = 0

    def step(self, feat: np.ndarray) -> np.ndarray:
        it = self._it
        it.set_tensor(self._feat, feat.reshape(1, BINS).astype(np.float32))
        it.set_tensor(self._state_in, self._state)
        it.invoke()
        self._state = it.get_tensor(self._state_out).copy()
        return it.get_tensor(self._mask)[0]


class StreamingDenoiser:
    """Sqrt-Hann STFT (320/160) + mask model + overlap-add.

    Output is offset by ``latency`` = 160 samples; the algorithmic latency (frame, no look-ahead) is
    320 samples = 20 ms: a sample leaves at most 20 ms after it arrived, counting the hop it waits for."""

    latency = FRAME - HOP

    def __init__(self, model: MaskModel) -> None:
        self.model = model
        self._win = np.sqrt(np.hanning(FRAME + 1)[:FRAME]).astype(np.float32)  # periodic
        self._in = np.zeros(FRAME, np.float32)
        self._ola = np.zeros(FRAME, np.float32)

    def reset(self) -> None:
        self.model.reset(); self._in[:] = 0; self._ola[:] = 0

    def hop(self, x: np.ndarray) -> np.ndarray:
        """Process one 160-sample float hop; returns 160 samples delayed by ``latency``."""
        self._in[:HOP] = self._in[HOP:]
        self._in[HOP:] = x
        spec = np.fft.rfft(self._in * self._win)
        mag = np.abs(spec)
        mask = self.model.step(np.power(mag + 1e-9, 0.3))
        frame = np.fft.irfft(spec * mask, FRAME).astype(np.float32) * self._win
        self._ola += frame
        out = self._ola[:HOP].copy()
        self._ola[:HOP] = self._ola[HOP:]
        self._ola[HOP:] = 0
        return out

    def process(self, x: np.ndarray) -> np.ndarray:
        """Float samples, a whole number of hops."""
        if len(x) % HOP:
            raise ValueError(f"length {len(x)} is not a whole number of {HOP}-sample hops")
        return np.concatenate([self.hop(x[i:i + HOP]) for i in range(0, len(x), HOP)]) if len(x) else x.astype(np.float32)
