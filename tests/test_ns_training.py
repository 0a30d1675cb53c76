"""Training smoke test on a tiny config: runs only where the [train] extra (tensorflow) is installed."""
from __future__ import annotations

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
    subprocess.run([sys.executable, "-m", "tools.ns_train.train", "--out", str(tmp_path), "--seconds", "2",
                    "--utterances", "3", "--pairs", "8"], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1], timeout=240)
    from device_agent.ns.model import MaskModel
    for name in ("ns_float.tflite", "ns_quant.tflite"):
        mask = MaskModel(tmp_path / name).step(np.ones(161, np.float32))
        assert mask.shape == (161,) and np.all((mask >= 0) & (mask <= 1))
