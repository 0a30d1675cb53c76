#!/bin/sh
# Reproduces the shipped noise-suppression model (fixed seeds), on one TensorFlow thread, niced.
# Run from a git checkout's root:   sh tools/ns_train/reproduce.sh [OUT_DIR]   (default: device_agent/ns/models)
#
# Each stage runs the training code of the commit that introduced it, from a git worktree, so that its
# data, STFT and checkpoint choice are exactly those of the original run:
#   3dbcf55 (synthetic speech only, 320-sample frames): 1 from scratch (cosine schedule over 4500 steps,
#     stopped after 4438 as the original run was); 2 fine-tune, lower LR, fresh mixtures, penalty on
#     suppressed speech; 3 the penalty doubled.
#   e02792f (half of the speech from the Debian human recordings, wind noise): 4 fine-tune stage 3
#     (hidden 128); 5 widen to 192 units per layer (function-preserving) and fine-tune; 6 fine-tune again
#     at half the learning rate with fresh mixtures.
#   this checkout: 7 move to 512-sample asymmetric analysis windows (same 20 ms latency; the input and
#     output weights are interpolated onto the finer frequency grid) and fine-tune; 8 fine-tune again at a
#     quarter of that learning rate with fresh mixtures (with no ambient share the mixer draws exactly
#     what it drew when 7 and 8 were trained); 9 fine-tune stage 8's float16 model (what the runs of
#     2 Dec started from) with a quarter of the noises from the Debian ambient recordings (their packages
#     must be installed: docs/noise-suppression.md, "train-deps"); 10 fine-tune again at half that
#     learning rate with fresh mixtures; 11 interpolate the weights of stages 8 and 10 half-way (WiSE-FT,
#     tools/ns_train/interpolate.py); 12 fine-tune stage 11's float16 model with three quarters of the
#     speech from Debian's human recordings, tuxpaint's read phrases added (its package must be installed
#     too: "train-deps"), and mixtures at -5 to 12 dB SNR instead of -5 to 20; 13 fine-tune again at half
#     that learning rate, -5 to 10 dB, with fresh mixtures. 14 and 15 (4 Dec; candidates, see the docs):
#     14 fine-tunes stage 13's float16 model with ../shared/data/ns-extra's training talkers and noise
#     recordings (its held-out ones choose the checkpoint: --select extra), microphone colouration, levels
#     -45..-10 dBFS, SNR -5..20 dB (stopped at step 250, its best checkpoint then); 15 fine-tunes 14 with
#     a target that keeps the whole room (--reverb-target-ms 0) and a larger penalty on suppressed speech.
# Each stage takes well under an hour on this 2-core machine (minutes in docs/noise-suppression.md).
# The package ships ns_quant.tflite (default) and ns_float16.tflite; the float32 ns_float.tflite that
# the next stage reads stays in $NS_WORK.
set -eu
OUT=${1:-device_agent/ns/models}
PY=${PY:-$(pwd)/.venv/bin/python}
WORK=${NS_WORK:-/tmp/ns_train}
SHARED=$(cd "$(dirname "$0")/../../.." && pwd)/shared
mkdir -p "$WORK/cache" "$OUT"
worktree() {  # worktree NAME COMMIT: a checkout of COMMIT that finds ../shared next to it
    if [ ! -d "$WORK/$1/repo" ]; then
        mkdir -p "$WORK/$1"
        git worktree add --detach "$WORK/$1/repo" "$2"
        ln -sfn "$SHARED" "$WORK/$1/shared"
    fi
}
train() {  # train STAGE ARGS...: one stage into $WORK/stageN
    stage=$1; shift; mkdir -p "$WORK/stage$stage"
    nice -n 10 "$PY" -m tools.ns_train.train --out "$WORK/stage$stage" --max-minutes 600 --cache "$WORK/cache" "$@"
}
worktree v1 3dbcf55
worktree v2 e02792f
(
    cd "$WORK/v1/repo"
    train 1 --steps 4500 --stop-after 4438
    train 2 --init "$WORK/stage1/ns_float.tflite" --lr 3e-4 --steps 2000 --mix-seed 4321 --asym-weight 1.0
    train 3 --init "$WORK/stage2/ns_float.tflite" --lr 2e-4 --steps 1300 --val-every 325 --mix-seed 999 --asym-weight 2.0
)
(
    cd "$WORK/v2/repo"
    train 4 --init "$WORK/stage3/ns_float.tflite" --lr 3e-4 --steps 3500 --mix-seed 2024 --asym-weight 2.0 --real-fraction 0.5
    train 5 --init "$WORK/stage4/ns_float.tflite" --hidden 192 --lr 3e-4 --steps 3000 --mix-seed 77 --asym-weight 2.0 --real-fraction 0.5
    train 6 --init "$WORK/stage5/ns_float.tflite" --hidden 192 --lr 1.5e-4 --steps 3000 --mix-seed 79 --asym-weight 2.0 --real-fraction 0.5
)
train 7 --init "$WORK/stage6/ns_float.tflite" --hidden 192 --frame 512 --lr 6e-4 --steps 3000 --mix-seed 103 --asym-weight 2.0 --real-fraction 0.5
train 8 --init "$WORK/stage7/ns_float.tflite" --hidden 192 --frame 512 --lr 1.5e-4 --steps 2500 --mix-seed 111 --asym-weight 2.0 --real-fraction 0.5
train 9 --init "$WORK/stage8/ns_float16.tflite" --hidden 192 --frame 512 --lr 3e-4 --steps 2500 --mix-seed 173 --asym-weight 2.0 --real-fraction 0.5 --ambient-fraction 0.25
train 10 --init "$WORK/stage9/ns_float.tflite" --hidden 192 --frame 512 --lr 1.5e-4 --steps 2500 --mix-seed 181 --asym-weight 2.0 --real-fraction 0.5 --ambient-fraction 0.25
nice -n 10 "$PY" -m tools.ns_train.interpolate "$WORK/stage8/ns_float16.tflite" "$WORK/stage10/ns_float.tflite" --alpha 0.5 --out "$WORK/stage11"
train 12 --init "$WORK/stage11/ns_float16.tflite" --hidden 192 --frame 512 --lr 3e-4 --steps 2500 --mix-seed 195 --asym-weight 2.0 --real-fraction 0.75 --ambient-fraction 0.25 --speech-sources klettres ktuberling tuxpaint --snr -5 12
train 13 --init "$WORK/stage12/ns_float.tflite" --hidden 192 --frame 512 --lr 1.5e-4 --steps 2500 --mix-seed 199 --asym-weight 2.0 --real-fraction 0.75 --ambient-fraction 0.25 --speech-sources klettres ktuberling tuxpaint --snr -5 10
train 14 --init "$WORK/stage13/ns_float16.tflite" --hidden 192 --frame 512 --lr 3e-4 --steps 3000 --mix-seed 211 --asym-weight 2.0 --real-fraction 0.3 --extra-fraction 0.45 --speech-sources klettres ktuberling tuxpaint --ambient-fraction 0.15 --extra-noise-fraction 0.35 --shared-noise-fraction 0.15 --mic-fraction 0.3 --snr -5 20 --level -45 -10 --select extra --val-count 40 --stop-after 250
train 15 --init "$WORK/stage14/ns_float.tflite" --hidden 192 --frame 512 --lr 2e-4 --steps 1200 --mix-seed 215 --asym-weight 3.0 --reverb-target-ms 0 --real-fraction 0.3 --extra-fraction 0.45 --speech-sources klettres ktuberling tuxpaint --ambient-fraction 0.15 --extra-noise-fraction 0.35 --shared-noise-fraction 0.15 --mic-fraction 0.3 --snr -5 20 --level -45 -10 --select extra --val-count 40
FINAL=$WORK/stage13
cp "$FINAL/ns_quant.tflite" "$FINAL/ns_float16.tflite" "$FINAL/ns_train_report.json" "$OUT/"
nice -n 10 "$PY" -m tools.ns_train.evaluate "$OUT/ns_quant.tflite" "$OUT/ns_float16.tflite" --peers --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.evaluate "$OUT/ns_quant.tflite" --real --count 30 --peers --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.evaluate "$OUT/ns_quant.tflite" --ambient --count 30 --peers --cache "$WORK/cache"
nice -n 10 "$PY" -m tools.ns_train.evaluate "$OUT/ns_quant.tflite" "$WORK/stage15/ns_quant.tflite" --extra --count 60 --peers
