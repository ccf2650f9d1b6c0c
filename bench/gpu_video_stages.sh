#!/usr/bin/env bash
# One call on a lent GPU (see ../shared/GPU.md): first the GPU benchmark alone (clean timings), then several video-stage
# runs of the tiny generator side by side on the one card (each is bound by kernel-launch overhead, so they share it
# well), each stopped by LIMIT seconds and published from its newest checkpoint. Everything comes back under $OUT.
#
#   RUNS: name:config:shards:init[:extra --set, comma separated]   (init "-" = from scratch on the image weights)
#
# The defaults are the runs of 2026-11-26 (BENCHMARKS.md): the key-frame stage continued from the shipped one and
# trained from scratch, the interpolation stage continued, on 8,000-sample shards of all 2,000 built-in clips with
# plain and with steady codes (`prepare --steady-margin 0.05`).
# Carried: .gpu/whl-train (the deepspeed, pydantic and hjson wheels of ../shared/gpu-wheels; no decord: the runs read
# token shards) and the shard folders the runs name. The image weights are the shipped bundle's (tracked).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
LIMIT=${LIMIT:-380}; STEPS=${STEPS:-3500}; BATCH=${BATCH:-128}; BENCH_LIMIT=${BENCH_LIMIT:-100}
KF=checkpoints/shapes-tiny/keyframe; IN=checkpoints/shapes-tiny/interpolate
RUNS=${RUNS:-"kf-plain:keyframe:runs/shards-tiny8k:$KF kf-steady:keyframe:runs/shards-steady8k:$KF
kf-steady-scratch:keyframe:runs/shards-steady8k:- in-plain:interpolate:runs/shards-tiny8k:$IN
in-steady:interpolate:runs/shards-steady8k:$IN"}
PY=${PY:-python3}  # a local smoke test: PY=.venv/bin/python SKIP_INSTALL=1 LIMIT=60 STEPS=4 BATCH=4 OUT=/tmp/o bash ...
[ -n "${SKIP_INSTALL:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ${WHEELS:-.gpu/whl-train}/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
[ -e runs/image-tiny/model ] || { mkdir -p runs/image-tiny && ln -s "$PWD/checkpoints/shapes-tiny/image" runs/image-tiny/model; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
quiet() { tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$"; }

# -- 1. the benchmark, alone on the card
timeout "$BENCH_LIMIT" $PY -m bench.gpu_bench --json "$OUT/gpu_bench.json" --repeats 10 --warmup 3 2>&1 | quiet \
    | tail -n 40 > "$OUT/bench.txt"
echo "gpu_bench exit ${PIPESTATUS[0]}" >> "$OUT/bench.txt"

# -- 2. the training runs, side by side
( while sleep 15; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) >> "$OUT/gpu.txt" &
MONITOR=$!
names=(); pids=()
for spec in $RUNS; do
    IFS=: read -r name stage shards init extra <<< "$spec"
    names+=("$name")
    sets=(--set run_dir=runs/$name --set data.shards=$shards --set train.steps=$STEPS --set train.micro_batch=$BATCH
          --set train.save_every=250 --set train.log_every=50 --set train.num_workers=1)
    [ "$init" = "-" ] || sets+=(--set init_from=$init)
    for e in ${extra//,/ }; do sets+=(--set "$e"); done
    ( start=$(date +%s)
      timeout "$LIMIT" $PY train.py --config configs/${stage}_tiny.yaml --overwrite "${sets[@]}" 2>&1 | quiet \
          > runs/$name.log
      echo "$name exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" >> runs/$name.log
      [ -d runs/$name/model ] || $PY -c "from cogvideo_lite.checkpoint import RunDirectory as R; r=R('runs/$name'); t=r.latest_tag(); print('published', t); t and r.publish(t)" >> runs/$name.log 2>&1
    ) &
    pids+=($!)
done
wait "${pids[@]}"
kill $MONITOR
for name in "${names[@]}"; do tail -n 3 runs/$name.log; done > "$OUT/summary.txt"
# files of at most 16 MiB come back: split the archive
tar czf - $(for name in "${names[@]}"; do
    echo runs/$name.log runs/$name/model runs/$name/metrics.jsonl runs/$name/config.yaml runs/$name/run.json; done) \
    | split -b 15M - "$OUT/video-runs.tgz.part-"
cat "$OUT/bench.txt" "$OUT/summary.txt"
