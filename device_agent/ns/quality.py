"""Scale-invariant SDR, the one quality metric computed by our own code (training, benchmark, smoke test)."""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SI-SDR in dB of ``estimate`` against ``reference`` (same length, any scale; means removed)."""
    ref = np.asarray(reference, np.float64) - np.mean(reference)
    est = np.asarray(estimate, np.float64) - np.mean(estimate)
    target = np.dot(est, ref) / (np.dot(ref, ref) + _EPS) * ref
    return float(10 * np.log10(np.sum(target**2) / (np.sum((est - target) ** 2) + _EPS) + _EPS))
