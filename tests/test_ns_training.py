"""Training smoke test on a tiny config: runs only where the [train] extra (tensorflow) is installed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")


@pytest.mark.slow
@pytest.mark.parametrize("df_bins", [0, 16])
def test_tiny_training_run_exports_a_loadable_model(tmp_path: Path, df_bins: int) -> None:
    if not shutil.which("espeak-ng") or not (Path(__file__).resolve().parents[2] / "shared/data/ns").is_dir():
        pytest.skip("needs espeak-ng and ../shared/data/ns")
    subprocess.run([sys.executable, "-m", "tools.ns_train.train", "--out", str(tmp_path), "--steps", "3",
                    "--utterances", "12", "--rirs", "2", "--batch", "4", "--segment", "1", "--val-every", "2",
                    "--val-count", "4", "--hidden", "32", "--df-bins", str(df_bins)], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1], timeout=240)
    from device_agent.ns.model import MaskModel, StreamingDenoiser
    for name in ("ns_float.tflite", "ns_float16.tflite", "ns_quant.tflite"):
        model = MaskModel(tmp_path / name)
        assert (model.bins, model.frame, model.df_bins, model.df_order) == (257, 512, df_bins, 3 if df_bins else 0)
        mask, coef = model.step(np.ones(257, np.float32))
        assert mask.shape == (257,) and np.all((mask >= 0) & (mask <= 1))
        assert coef is None if not df_bins else (coef.shape == (3, df_bins) and np.all(np.abs(coef.real) <= 1))
        y = StreamingDenoiser(model).process(np.random.default_rng(0).standard_normal(1600).astype(np.float32) * 0.1)
        assert len(y) == 1600 and np.all(np.isfinite(y))
    report = json.loads((tmp_path / "ns_train_report.json").read_text())
    assert report["steps_run"] == 3 and report["history"] and "si_sdr" in report["best_validation"]
    _assert_training_graph_equals_runtime(tmp_path / "ns_float.tflite", 32, df_bins)


def _assert_training_graph_equals_runtime(path: Path, hidden: int, df_bins: int) -> None:
    """The exported model read back into the training graph (``load_tflite_weights``) computes, on whole
    clips in TensorFlow, what the numpy streaming runtime computes hop by hop: the two implementations of
    STFT, phase feature, deep filter and overlap-add agree, and so do export and import."""
    import tensorflow as tf
    from device_agent.ns.model import HOP, MaskModel, StreamingDenoiser
    from tools.ns_train.train import build, deep_filter_pair, load_tflite_weights, stft_pair
    model = build(tf, 257, hidden, 2, np.zeros(257, np.float32), np.ones(257, np.float32), df_bins, 3)
    load_tflite_weights(model, path, 2, 512)
    stft, istft = stft_pair(tf, 512)
    features, apply = deep_filter_pair(tf, 512, df_bins, 3)
    x = (np.random.default_rng(2).standard_normal(8000) * 0.05).astype(np.float32)
    spec = stft(x[None])
    y_train = istft(apply(spec, model(features(spec)))).numpy()[0]
    y_runtime = StreamingDenoiser(MaskModel(path)).process(x)
    n = len(x) - 2 * HOP  # the training iSTFT lacks the last hop; the runtime is HOP late
    assert np.max(np.abs(y_runtime[HOP:HOP + n] - y_train[:n])) < 1e-5 * np.max(np.abs(y_train)) + 1e-7
