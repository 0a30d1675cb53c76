"""The intelligibility guard: on ns-extra's held-out talkers in its held-out noise recordings (real read
speech, real noise; never trained on), the shipped model's output keeps at least the noisy input's STOI at
every SNR from 0 to 20 dB (docs/noise-suppression.md, "the rule")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent.ns.model import DEFAULT_MODEL
from tools.ns_train.data import EXTRA_VAL_SNRS, SR, extra_data, extra_validation_set
from tools.ns_train.evaluate import ours, stoi_guard

EXTRA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ns-extra"


def _mean_stoi_by_snr(clean: list[np.ndarray], outputs: list[np.ndarray]) -> dict[int, dict[str, float]]:
    from pystoi import stoi

    by: dict[int, list[float]] = {}
    for i, (c, y) in enumerate(zip(clean, outputs, strict=True)):
        by.setdefault(EXTRA_VAL_SNRS[i % len(EXTRA_VAL_SNRS)], []).append(stoi(c, y, SR))
    return {snr: {"stoi": float(np.mean(v))} for snr, v in sorted(by.items())}


def test_guard_names_the_snrs_where_stoi_fell() -> None:
    noisy = {0: {"stoi": 0.78}, 5: {"stoi": 0.87}, 20: {"stoi": 0.98}, 25: {"stoi": 0.99}}
    out = {0: {"stoi": 0.80}, 5: {"stoi": 0.86}, 20: {"stoi": 0.97}, 25: {"stoi": 0.90}}
    assert stoi_guard(out, noisy) == [5, 20]  # 25 dB is outside the guarded range
    assert stoi_guard(noisy, noisy) == []


@pytest.mark.xfail(
    strict=True,
    reason="stage 13 (shipped) lowers STOI at 0, 10, 15 and 20 dB on real read speech: "
    "the open issue (docs/noise-suppression.md, 4 Dec). Strict: a model that keeps the guard must "
    "ship with this marker removed",
)
def test_shipped_model_keeps_intelligibility_on_held_out_talkers_and_noises() -> None:
    if not (EXTRA / "MANIFEST.md").is_file():
        pytest.skip("needs ../shared/data/ns-extra")
    clean, noisy = extra_validation_set(extra_data(EXTRA, val_only=True), 60)
    enhance = ours(DEFAULT_MODEL)
    base = _mean_stoi_by_snr(clean, noisy)
    got = _mean_stoi_by_snr(clean, [enhance(x) for x in noisy])
    assert sorted(base) == [0, 5, 10, 15, 20]
    assert stoi_guard(got, base) == [], {
        snr: (round(got[snr]["stoi"], 3), round(base[snr]["stoi"], 3)) for snr in base
    }
