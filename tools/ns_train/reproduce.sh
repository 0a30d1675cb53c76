#!/bin/sh
# Reproduces the shipped noise-suppression model (fixed seeds), on one TensorFlow thread, niced.
# Run from a git checkout's root:   sh tools/ns_train/reproduce.sh [OUT_DIR]   (default: device_agent/ns/models)
#
# Stages 1-3 made the previous model (synthetic speech only) with the training code of commit 3dbcf55;
# they run from a git worktree of that commit so that their data and checkpoint choice are the same.
#   1: from scratch (cosine schedule over 4500 steps, stopped after 4438 as the original run was)
#   2: fine-tune, lower LR, fresh mixtures, penalty on suppressed speech; 3: the penalty doubled
# Stages 4-6 use this checkout's code: half of the speech from the Debian human recordings, wind noise.
#   4: fine-tune stage 3 (hidden 128); 5: widen to 192 units per layer (function-preserving) and fine-tune;
#   6: fine-tune again at half the learning rate with fresh mixtures.
# Each stage takes well under an hour on this 2-core machine (minutes in docs/noise-suppression.md).
set -eu
OUT=${1:-device_agent/ns/models}
PY=${PY:-$(pwd)/.venv/bin/python}
WORK=${NS_WORK:-/tmp/ns_train}
SHARED=$(cd "$(dirname "$0")/../../.." && pwd)/shared
V1=3dbcf55
mkdir -p "$WORK/stage1" "$WORK/stage2" "$WORK/stage3" "$WORK/stage4" "$WORK/stage5" "$OUT"
if [ ! -d "$WORK/v1/repo" ]; then
    mkdir -p "$WORK/v1"
    git worktree add --detach "$WORK/v1/repo" "$V1"
    ln -sfn "$SHARED" "$WORK/v1/shared"  # the old code finds ../shared/data/ns next to its checkout
fi
(
    cd "$WORK/v1/repo"
    nice -n 10 "$PY" -m tools.ns_train.train --out "$WORK/stage1" --steps 4500 --stop-after 4438 --max-minutes 600 \
        --cache "$WORK/cache"
    nice -n 10 "$PY" -m tools.ns_train.train --out "$WORK/stage2" --init "$WORK/stage1/ns_float.tflite" --lr 3e-4 \
        --steps 2000 --mix-seed 4321 --asym-weight 1.0 --max-minutes 600 --cache "$WORK/cache"
    nice -n 10 "$PY" -m tools.ns_train.train --out "$WORK/stage3" --init "$WORK/stage2/ns_float.tflite" --lr 2e-4 \
        --steps 1300 --val-every 325 --mix-seed 999 --asym-weight 2.0 --max-minutes 600 --cache "$WORK/cache"
)
nice -n 10 "$PY" -m tools.ns_train.train --out "$WORK/stage4" --init "$WORK/stage3/ns_float.tflite" --lr 3e-4 \
    --steps 3500 --mix-seed 2024 --asym-weight 2.0 --real-fraction 0.5 --max-minutes 600 --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.train --out "$WORK/stage5" --init "$WORK/stage4/ns_float.tflite" --hidden 192 \
    --lr 3e-4 --steps 3000 --mix-seed 77 --asym-weight 2.0 --real-fraction 0.5 --max-minutes 600 --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.train --out "$OUT" --init "$WORK/stage5/ns_float.tflite" --hidden 192 \
    --lr 1.5e-4 --steps 3000 --mix-seed 79 --asym-weight 2.0 --real-fraction 0.5 --max-minutes 600 --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.evaluate "$OUT/ns_quant.tflite" "$OUT/ns_float.tflite" --peers --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.evaluate "$OUT/ns_quant.tflite" --real --count 30 --peers --cache "$WORK/cache"
