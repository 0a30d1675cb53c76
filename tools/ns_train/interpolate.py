"""Weight-space interpolation of two exported models of one lineage (WiSE-FT, Wortsman et al. 2022).

``.venv/bin/python -m tools.ns_train.interpolate BASE.tflite TUNED.tflite --alpha 0.5 --out DIR``

``TUNED`` must be a fine-tune of ``BASE`` (started from its weights; same frame and width): the result's
weights are ``(1 - alpha) * BASE + alpha * TUNED``, exported as float32, float16-weight and int8 models
like a training run's. A mask-only ``BASE`` of a deep-filter ``TUNED`` enters as the network it was
when the fine-tune started (zero phase inputs, zero filter head: ``train.load_tflite_weights``). A
fine-tune that gains on new data but loses on the old often keeps most of both gains at an intermediate
``alpha``; choose it on validation data (``tools.ns_train.evaluate``). Models of ``LAYERS`` GRU layers
(``train.py``'s default; the layer count is not recorded in the exported graph).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tools.ns_train.train import build, export, load_tflite_weights, log

LAYERS = 2


def _shape(path: Path) -> tuple[int, int, int, int]:
    """(bins, hidden, df_bins, df_order) of an exported model."""
    from device_agent.ns.model import MaskModel

    m = MaskModel(path)
    return m.bins, m.state_size // LAYERS, m.df_bins, m.df_order


def interpolate(base: Path, tuned: Path, alpha: float, out: Path) -> None:
    """Write ``(1 - alpha) * base + alpha * tuned`` to ``out`` (see the module docstring)."""
    import tensorflow as tf

    shape, base_shape = _shape(tuned), _shape(base)
    if (
        base_shape[:2] != shape[:2]
        or base_shape[2] not in (0, shape[2])
        or base_shape[3] not in (0, shape[3])
    ):
        raise SystemExit(
            f"{base} {base_shape} and {tuned} {shape} (bins, hidden, deep-filter bins, taps) "
            "are not one lineage"
        )
    bins, hidden, df_bins, df_order = shape
    models = []
    for path in (base, tuned):
        m = build(
            tf, bins, hidden, LAYERS, np.zeros(bins, np.float32), np.ones(bins, np.float32), df_bins, df_order
        )
        load_tflite_weights(m, path, LAYERS, 2 * (bins - 1))
        models.append(m)
    models[0].set_weights(
        [
            (1 - alpha) * a + alpha * b
            for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True)
        ]
    )
    export(tf, models[0], out, LAYERS, hidden, bins, df_bins, df_order)
    report = {"interpolation": {"base": str(base), "tuned": str(tuned), "alpha": alpha}}
    for key, path in (("base_report", base), ("tuned_report", tuned)):  # the runs' own reports, where kept
        if (path.parent / "ns_train_report.json").is_file():
            report[key] = json.loads((path.parent / "ns_train_report.json").read_text())
    (out / "ns_train_report.json").write_text(json.dumps(report, indent=1))
    log("interpolated", base, tuned, "alpha", alpha, "->", out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("tuned", type=Path)
    ap.add_argument("--alpha", type=float, required=True, help="weight of TUNED, 0..1")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if not 0.0 <= a.alpha <= 1.0:
        ap.error("--alpha takes 0..1")
    interpolate(a.base, a.tuned, a.alpha, a.out)


if __name__ == "__main__":
    main()
