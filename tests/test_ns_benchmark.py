"""benchmarks.ns_quality's runner for our model: each clip starts from a fresh recurrent state."""

from __future__ import annotations

import numpy as np

from benchmarks.ns_quality import ours
from device_agent.ns.model import MaskModel


def test_each_clip_is_denoised_from_a_fresh_state() -> None:
    model = MaskModel()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(8000) * 0.05).astype(np.float32)
    first = ours(x, model)
    ours((rng.standard_normal(8000) * 0.3).astype(np.float32), model)  # another clip in between
    assert np.array_equal(ours(x, model), first)
