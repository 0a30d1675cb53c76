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
def test_tiny_training_run_exports_a_loadable_model(tmp_path: Path) -> None:
    if not shutil.which("espeak-ng") or not (Path(__file__).resolve().parents[2] / "shared/data/ns").is_dir():
        pytest.skip("needs espeak-ng and ../shared/data/ns")
    subprocess.run([sys.executable, "-m", "tools.ns_train.train", "--out", str(tmp_path), "--steps", "3",
                    "--utterances", "12", "--rirs", "2", "--batch", "4", "--segment", "1", "--val-every", "2",
                    "--val-count", "4", "--hidden", "32"], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1], timeout=240)
    from device_agent.ns.model import MaskModel, StreamingDenoiser
    for name in ("ns_float.tflite", "ns_float16.tflite", "ns_quant.tflite"):
        model = MaskModel(tmp_path / name)
        assert (model.bins, model.frame) == (257, 512)
        mask = model.step(np.ones(257, np.float32))
        assert mask.shape == (257,) and np.all((mask >= 0) & (mask <= 1))
        y = StreamingDenoiser(model).process(np.random.default_rng(0).standard_normal(1600).astype(np.float32) * 0.1)
        assert len(y) == 1600 and np.all(np.isfinite(y))
    report = json.loads((tmp_path / "ns_train_report.json").read_text())
    assert report["steps_run"] == 3 and report["history"] and "si_sdr" in report["best_validation"]
