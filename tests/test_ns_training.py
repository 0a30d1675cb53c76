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
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.ns_train.train",
            "--out",
            str(tmp_path),
            "--steps",
            "3",
            "--utterances",
            "12",
            "--rirs",
            "2",
            "--batch",
            "4",
            "--segment",
            "1",
            "--val-every",
            "2",
            "--val-count",
            "4",
            "--hidden",
            "32",
            "--df-bins",
            str(df_bins),
            "--ambient-fraction",
            "0.25" if df_bins else "0",
        ],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=240,
    )
    from device_agent.ns.model import MaskModel, StreamingDenoiser

    for name in ("ns_float.tflite", "ns_float16.tflite", "ns_quant.tflite"):
        model = MaskModel(tmp_path / name)
        assert (model.bins, model.frame, model.df_bins, model.df_order) == (
            257,
            512,
            df_bins,
            3 if df_bins else 0,
        )
        mask, coef = model.step(np.ones(257, np.float32))
        assert mask.shape == (257,) and np.all((mask >= 0) & (mask <= 1))
        assert (
            coef is None if not df_bins else (coef.shape == (3, df_bins) and np.all(np.abs(coef.real) <= 1))
        )
        y = StreamingDenoiser(model).process(
            np.random.default_rng(0).standard_normal(1600).astype(np.float32) * 0.1
        )
        assert len(y) == 1600 and np.all(np.isfinite(y))
    report = json.loads((tmp_path / "ns_train_report.json").read_text())
    assert report["steps_run"] == 3 and report["history"] and "si_sdr" in report["best_validation"]
    _assert_training_graph_equals_runtime(tmp_path / "ns_float.tflite", 32, df_bins)


@pytest.mark.slow
@pytest.mark.timeout(900)  # loads all of ns-extra (157 min of audio) and the Debian recordings
def test_tiny_training_run_on_ns_extra_chooses_by_the_guarded_rule(tmp_path: Path) -> None:
    shared = Path(__file__).resolve().parents[2] / "shared/data"
    if not shutil.which("espeak-ng") or not (shared / "ns-extra" / "MANIFEST.md").is_file():
        pytest.skip("needs espeak-ng and ../shared/data/ns-extra")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.ns_train.train",
            "--out",
            str(tmp_path),
            "--steps",
            "3",
            "--utterances",
            "12",
            "--rirs",
            "2",
            "--batch",
            "4",
            "--segment",
            "1",
            "--val-every",
            "2",
            "--val-count",
            "10",
            "--hidden",
            "32",
            "--extra-fraction",
            "0.4",
            "--extra-noise-fraction",
            "0.3",
            "--shared-noise-fraction",
            "0.2",
            "--mic-fraction",
            "0.5",
            "--level",
            "-45",
            "-10",
            "--select",
            "extra",
        ],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=800,
    )
    report = json.loads((tmp_path / "ns_train_report.json").read_text())
    best = report["best_validation"]
    assert sorted(map(int, best["per_snr"])) == [0, 5, 10, 15, 20] and isinstance(best["guard"], bool)
    assert abs(best["score"] - (best["pesq"] + 0.1 * best["si_sdr"])) < 1e-9
    assert report["corpus"]["extra"]["talkers_val"] > 0
    from tools.ns_train.train import rule_key

    assert best == max(report["history"], key=rule_key)


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
    assert np.max(np.abs(y_runtime[HOP : HOP + n] - y_train[:n])) < 1e-5 * np.max(np.abs(y_train)) + 1e-7


def test_interpolation_mixes_the_weights_of_two_models_of_one_lineage(tmp_path: Path) -> None:
    """WiSE-FT (``tools.ns_train.interpolate``): alpha 0 and 1 give the two models back exactly, alpha 0.5
    the mean of their weights; a mask-only base joins a deep-filter fine-tune as its zero-filter start;
    models of different width are refused."""
    import tensorflow as tf

    from device_agent.ns.model import MaskModel, StreamingDenoiser
    from tools.ns_train.interpolate import interpolate
    from tools.ns_train.train import build, export, load_tflite_weights

    def exported(name: str, hidden: int, df_bins: int, seed: int) -> Path:
        tf.keras.utils.set_random_seed(seed)
        m = build(tf, 257, hidden, 2, np.zeros(257, np.float32), np.ones(257, np.float32), df_bins, 3)
        # trained-looking: no zero bias (the converter would fold the add away)
        rng = np.random.default_rng(seed)
        m.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.1 for w in m.get_weights()])
        export(tf, m, tmp_path / name, 2, hidden, 257, df_bins, 3)
        return tmp_path / name / "ns_float.tflite"

    def weights(path: Path, df_bins: int) -> list[np.ndarray]:
        m = build(tf, 257, 16, 2, np.zeros(257, np.float32), np.ones(257, np.float32), df_bins, 3)
        load_tflite_weights(m, path, 2, 512)
        return m.get_weights()

    def output(path: Path) -> np.ndarray:
        x = (np.random.default_rng(3).standard_normal(3200) * 0.05).astype(np.float32)
        return StreamingDenoiser(MaskModel(path)).process(x)

    base, tuned = exported("base", 16, 0, 1), exported("tuned", 16, 16, 2)
    for alpha in (0.0, 0.5, 1.0):
        interpolate(base, tuned, alpha, tmp_path / f"a{alpha}")
    assert np.array_equal(output(tmp_path / "a1.0" / "ns_float.tflite"), output(tuned))
    assert (
        json.loads((tmp_path / "a0.5" / "ns_train_report.json").read_text())["interpolation"]["alpha"] == 0.5
    )
    # the base, as a deep-filter model with a zero filter
    zero = output(tmp_path / "a0.0" / "ns_float.tflite")
    np.testing.assert_allclose(zero, output(base), atol=1e-6)
    # base embedded
    mid, w0, w1 = (weights(p, 16) for p in (tmp_path / "a0.5" / "ns_float.tflite", base, tuned))
    for m, a, b in zip(mid, w0, w1, strict=True):
        np.testing.assert_allclose(m, (a + b) / 2, atol=1e-6)
    with pytest.raises(SystemExit, match="not one lineage"):
        interpolate(base, exported("wide", 24, 0, 3), 0.5, tmp_path / "bad")
