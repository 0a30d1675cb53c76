#!/bin/sh
# Reproduces the shipped noise-suppression model (fixed seeds), on one TensorFlow thread, niced.
# Stage 1 trains from scratch (cosine schedule over 4500 steps, stopped after 4438 as the shipped run was
# by its 42-minute limit); stage 2 fine-tunes stage 1's float model at a lower learning rate, with fresh
# mixtures and an extra penalty on suppressed speech; stage 3 repeats that with a doubled penalty. All share the generated corpus (cached).
# Run from the repository root:   sh tools/ns_train/reproduce.sh [OUT_DIR]   (default: device_agent/ns/models)
set -eu
OUT=${1:-device_agent/ns/models}
PY=${PY:-.venv/bin/python}
WORK=${NS_WORK:-/tmp/ns_train}
mkdir -p "$WORK/stage1" "$WORK/stage2" "$OUT"
nice -n 10 "$PY" -m tools.ns_train.train --out "$WORK/stage1" --steps 4500 --stop-after 4438 --max-minutes 600 \
    --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.train --out "$WORK/stage2" --init "$WORK/stage1/ns_float.tflite" --lr 3e-4 \
    --steps 2000 --mix-seed 4321 --asym-weight 1.0 --max-minutes 600 --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.train --out "$OUT" --init "$WORK/stage2/ns_float.tflite" --lr 2e-4 \
    --steps 1300 --val-every 325 --mix-seed 999 --asym-weight 2.0 --max-minutes 600 --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.evaluate "$OUT/ns_quant.tflite" "$OUT/ns_float.tflite" --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.evaluate "$OUT/ns_quant.tflite" --real --count 30 --cache "$WORK/cache"
