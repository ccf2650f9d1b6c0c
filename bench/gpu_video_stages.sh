#!/usr/bin/env bash
# One call on a lent GPU (see ../shared/GPU.md): first the GPU benchmark alone (clean timings), then several video-stage
# runs of the tiny generator side by side on the one card (each is bound by kernel-launch overhead, so they share it
# well), each stopped by LIMIT seconds and published from its newest checkpoint, then `evaluate shapes` of the shipped
# bundle and of bundles made of the new runs, side by side too. Comes back under $OUT: report.txt, gpu_bench.json and
# the runs with their evaluations (video-runs.tgz.part-*).
#
#   RUNS: name:config:shards:init[:extra --set, comma separated]   (init "-" = from scratch on the image weights)
#   EVALS: name:keyframe-run:interpolate-run
#
# The defaults are the runs of 2026-11-26 (BENCHMARKS.md): the key-frame stage continued from the shipped one and
# trained from scratch, the interpolation stage continued, on 8,000-sample shards of all 2,000 built-in clips with
# plain and with steady codes (`prepare --steady-margin 0.05`).
# Carried: .gpu/whl-train (the deepspeed, pydantic and hjson wheels of ../shared/gpu-wheels; no decord: the runs read
# token shards) and the shard folders the runs name. The image weights are the shipped bundle's (tracked).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
LIMIT=${LIMIT:-310}; STEPS=${STEPS:-3000}; BATCH=${BATCH:-128}; BENCH_LIMIT=${BENCH_LIMIT:-90}
EVAL_LIMIT=${EVAL_LIMIT:-90}
KF=checkpoints/shapes-tiny/keyframe; IN=checkpoints/shapes-tiny/interpolate
RUNS=${RUNS:-"kf-plain:keyframe:runs/shards-tiny8k:$KF kf-steady:keyframe:runs/shards-steady8k:$KF
kf-steady-scratch:keyframe:runs/shards-steady8k:- in-plain:interpolate:runs/shards-tiny8k:$IN
in-steady:interpolate:runs/shards-steady8k:$IN"}
EVALS=${EVALS:-"plain:kf-plain:in-plain steady:kf-steady:in-steady steady-scratch:kf-steady-scratch:in-steady"}
REPORT=$OUT/report.txt
PY=${PY:-python3}  # a local smoke test: PY=.venv/bin/python SKIP_INSTALL=1 LIMIT=60 STEPS=4 BATCH=4 OUT=/tmp/o bash ...
[ -n "${SKIP_INSTALL:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ${WHEELS:-.gpu/whl-train}/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
[ -e runs/image-tiny/model ] || { mkdir -p runs/image-tiny && ln -s "$PWD/checkpoints/shapes-tiny/image" runs/image-tiny/model; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$REPORT" 2>&1
quiet() { tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$"; }

# -- 1. the benchmark, alone on the card
timeout "$BENCH_LIMIT" $PY -m bench.gpu_bench --json "$OUT/gpu_bench.json" --repeats 10 --warmup 3 2>&1 | quiet \
    | tail -n 40 >> "$REPORT"
echo "gpu_bench exit ${PIPESTATUS[0]}" >> "$REPORT"

# -- 2. the training runs, side by side
( while sleep 15; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) > runs/gpu-load.txt &
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
for name in "${names[@]}"; do tail -n 3 runs/$name.log; done >> "$REPORT"

# -- 3. the checker's measures of each bundle, side by side (the shipped one on this card for comparison)
B=checkpoints/shapes-tiny; pids=(); evals=(shipped)
( timeout "$EVAL_LIMIT" $PY -m cogvideo_lite.evaluate shapes --ckpt $B --seeds 1 --batch-size 168 --interp-top-k 1 ${EVAL_ARGS:-} \
      --json runs/eval-shipped.json 2>&1 | quiet | tail -n 14 > runs/eval-shipped.txt ) &
pids+=($!)
for spec in $EVALS; do
    IFS=: read -r name keyframe interpolate <<< "$spec"
    evals+=("$name")
    ( $PY -m cogvideo_lite.bundle --out runs/bundle-$name --tokenizer $B/tokenizer --text $B/text --image $B/image \
          --keyframe runs/$keyframe/model --interpolate runs/$interpolate/model > runs/eval-$name.txt 2>&1 &&
      timeout "$EVAL_LIMIT" $PY -m cogvideo_lite.evaluate shapes --ckpt runs/bundle-$name --seeds 1 --batch-size 168 \
          --interp-top-k 1 ${EVAL_ARGS:-} --json runs/eval-$name.json 2>&1 | quiet | tail -n 14 >> runs/eval-$name.txt ) &
    pids+=($!)
done
wait "${pids[@]}"
for name in "${evals[@]}"; do echo "== evaluate $name"; cat runs/eval-$name.txt; done >> "$REPORT"
# files of at most 16 MiB come back: split the archive
tar czf - runs/gpu-load.txt runs/eval-* $(for name in "${names[@]}"; do
    echo runs/$name.log runs/$name/model runs/$name/metrics.jsonl runs/$name/config.yaml runs/$name/run.json; done) \
    | split -b 15M - "$OUT/video-runs.tgz.part-"
cat "$REPORT"
