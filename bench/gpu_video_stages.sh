#!/usr/bin/env bash
# One call on a lent GPU (see ../shared/GPU.md): optionally first the GPU benchmark alone (clean timings); optionally
# image-stage runs side by side, of which the one whose frame 0 most often shows the captioned shape
# (`bench.shape_probe --image`, the lowest share over the three shapes) becomes the image weights of the video
# stages; then several video-stage runs of the tiny generator side by side on the one card (each is bound by
# kernel-launch overhead, so they share it well), each stopped by its time limit and published from its newest
# checkpoint, then `evaluate shapes` of bundles made of the new runs (and of the shipped one), side by side too.
# Comes back under $OUT: report.txt, gpu_bench.json and the runs with their evaluations (video-runs.tgz.part-*).
#
#   IMAGES: name:shards[:extra --set, comma separated]  (empty: the image run IMAGE, default the shipped weights)
#   RUNS: name:config:shards:init[:extra --set, comma separated]   (init "-" = from scratch on the image weights)
#   EVALS: name:keyframe-run:interpolate-run
#
# The defaults are the next experiment (BENCHMARKS.md, third GPU session): two image-stage runs on 8,000-sample
# steady shards of all 2,000 built-in clips (the ones that drew squares best there), then key-frame stages from
# scratch that start leaning on their temporal channel (spatial_share_init 0.25) and, as the control, at the even
# mix, and an interpolation stage leaning the same way. The calls of 2026-11-26 were, in order, as below (the
# first one's checker then ran with one seed, without top-k, on bundles without a sampling.json, the shipped one
# beside: its figures are BENCHMARKS.md's second GPU session; the training commands are as given)
#   BENCH=1 IMAGES= STEPS=3000 BATCH=128 LIMIT=310 RUNS="kf-plain:keyframe:runs/shards-tiny8k:$KF
#     kf-steady:keyframe:$S8:$KF kf-steady-scratch:keyframe:$S8:- in-plain:interpolate:runs/shards-tiny8k:$IN
#     in-steady:interpolate:$S8:$IN" EVALS="plain:kf-plain:in-plain steady:kf-steady:in-steady
#     steady-scratch:kf-steady-scratch:in-steady"                                    (the shipped video stages)
#   IMAGES="img-a:$S8:train.lr=2e-3,train.warmup_steps=200 img-b:$S8:train.micro_batch=256
#     img-c:$S8:train.lr=2e-3,train.warmup_steps=200,model.dropout=0.1" STEPS=2500 BATCH=256 LIMIT=220
#     RUNS="kf-new:keyframe:$S8:- in-new:interpolate:$S8:-:train.steps=2000" EVALS="new:kf-new:in-new"
#   IMAGES= IMAGE=runs/gpu2/img-c LIMIT=330 RUNS="kf-c:keyframe:$S8:-:train.micro_batch=128,train.steps=4000
#     in-c:interpolate:$S8:-:train.micro_batch=128,train.steps=4000 kf-c2:keyframe:$S8:-:train.steps=2500
#     in-c2:interpolate:$S8:-:train.steps=2500" EVALS="c:kf-c:in-c c2:kf-c2:in-c2"
#   IMAGES= IMAGE=runs/gpu2/img-c LIMIT=85 EVAL_LIMIT=30 EVAL_SEEDS=1 RUNS="kf-c3:keyframe:$S8:runs/kf-c/model:
#     train.micro_batch=128,train.steps=2200,train.lr=5e-4,train.warmup_steps=20" EVALS="c3:kf-c3:in-c"
# Carried: .gpu/whl-train (the deepspeed, pydantic and hjson wheels of ../shared/gpu-wheels; no decord: the runs read
# token shards) and the shard folders the runs name. Without IMAGES the image weights are the shipped bundle's.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
BENCH=${BENCH:-0}; BENCH_LIMIT=${BENCH_LIMIT:-90}; EVAL_LIMIT=${EVAL_LIMIT:-75}; EVAL_SHIPPED=${EVAL_SHIPPED:-0}
KF=checkpoints/shapes-tiny/keyframe; IN=checkpoints/shapes-tiny/interpolate; S8=runs/shards-steady8k
IMAGE_LIMIT=${IMAGE_LIMIT:-160}; IMAGE_STEPS=${IMAGE_STEPS:-2000}; IMAGE_BATCH=${IMAGE_BATCH:-512}
IMAGES=${IMAGES-"img-a:$S8:train.lr=2e-3,train.warmup_steps=200
img-c:$S8:train.lr=2e-3,train.warmup_steps=200,model.dropout=0.1"}
LIMIT=${LIMIT:-320}; STEPS=${STEPS:-4000}; BATCH=${BATCH:-128}
RUNS=${RUNS:-"kf-lean:keyframe:$S8:-:spatial_share_init=0.25 kf-even:keyframe:$S8:-
in-lean:interpolate:$S8:-:spatial_share_init=0.25"}
EVALS=${EVALS:-"lean:kf-lean:in-lean even:kf-even:in-lean"}
REPORT=$OUT/report.txt
PY=${PY:-python3}  # a local smoke test: PY=.venv/bin/python SKIP_INSTALL=1 LIMIT=60 STEPS=4 BATCH=4 OUT=/tmp/o bash ...
[ -n "${SKIP_INSTALL:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ${WHEELS:-.gpu/whl-train}/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
[ -e runs/image-tiny/model ] || { mkdir -p runs/image-tiny && ln -s "$PWD/checkpoints/shapes-tiny/image" runs/image-tiny/model; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$REPORT" 2>&1
quiet() { tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$"; }

# -- 1. the benchmark, alone on the card
if [ "$BENCH" = 1 ]; then
    timeout "$BENCH_LIMIT" $PY -m bench.gpu_bench --json "$OUT/gpu_bench.json" --repeats 10 --warmup 3 2>&1 | quiet \
        | tail -n 40 >> "$REPORT"
    echo "gpu_bench exit ${PIPESTATUS[0]}" >> "$REPORT"
fi

# Trains runs side by side, each stopped after $1 seconds and published from its newest checkpoint if cut off.
# $2: specs name:stage:shards:init:extra (init "-": none; extra: --set values, comma separated, after the defaults)
train_side_by_side() {
    local limit=$1 pids=() spec name stage shards init extra
    for spec in $2; do
        IFS=: read -r name stage shards init extra <<< "$spec"
        names+=("$name")
        local sets=(--set run_dir=runs/$name --set data.shards=$shards --set train.save_every=250
                    --set train.log_every=50 --set train.num_workers=1)
        [ "$init" = "-" ] || sets+=(--set init_from=$init)
        for e in ${extra//,/ }; do sets+=(--set "$e"); done
        ( start=$(date +%s)
          timeout "$limit" $PY train.py --config configs/${stage}_tiny.yaml --overwrite "${sets[@]}" 2>&1 | quiet \
              > runs/$name.log
          echo "$name exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" >> runs/$name.log
          [ -d runs/$name/model ] || $PY -c "from cogvideo_lite.train.checkpoint import RunDirectory as R; r=R('runs/$name'); t=r.latest_tag(); print('published', t); t and r.publish(t)" >> runs/$name.log 2>&1
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    for spec in $2; do tail -n 3 "runs/${spec%%:*}.log"; done >> "$REPORT"
}
( while sleep 15; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) > runs/gpu-load.txt &
MONITOR=$!
names=(); B=checkpoints/shapes-tiny; IMAGE=${IMAGE:-runs/image-tiny}  # without IMAGES: the video stages build on this

# -- 2. image-stage runs, then the probe of each: the one with the best worst-shape share is the image weights
if [ -n "$IMAGES" ]; then
    specs=""
    for spec in $IMAGES; do
        IFS=: read -r name shards extra <<< "$spec"
        specs+=" $name:image:$shards:-:train.steps=$IMAGE_STEPS,train.micro_batch=$IMAGE_BATCH${extra:+,$extra}"
    done
    train_side_by_side "$IMAGE_LIMIT" "$specs"
    pids=()
    for spec in $IMAGES; do
        name=${spec%%:*}
        ( timeout 45 $PY -m bench.shape_probe --ckpt $B --image runs/$name/model --seeds 2 --top-k 20 \
              --json runs/probe-$name.json > runs/probe-$name.txt 2>&1 ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    IMAGE=runs/$($PY - $IMAGES 2>> "$REPORT" <<'PY'
import json, sys
scores = {}
for spec in sys.argv[1:]:
    name = spec.split(":")[0]
    try:
        shares = json.load(open(f"runs/probe-{name}.json"))["image_model"]
    except (OSError, KeyError, ValueError):
        continue
    scores[name] = (min(shares.values()), sum(shares.values()))
    print(f"probe {name}: {shares}", file=sys.stderr)
print(max(scores, key=scores.get) if scores else "image-tiny")
PY
    )
    echo "image weights of the video stages: $IMAGE" >> "$REPORT"
fi

# -- 3. the video-stage runs, side by side (their model config must equal the image export's, dropout included)
DROPOUT=$($PY -c "import json; print(json.load(open('$IMAGE/model/generator.json'))['model']['dropout'])")
specs=""
for spec in $RUNS; do
    IFS=: read -r name stage shards init extra <<< "$spec"
    specs+=" $name:$stage:$shards:$init:image_checkpoint=$IMAGE,model.dropout=$DROPOUT,train.steps=$STEPS,train.micro_batch=$BATCH${extra:+,$extra}"
done
train_side_by_side "$LIMIT" "$specs"
kill $MONITOR

# -- 4. the checker's measures of each bundle, side by side (with EVAL_SHIPPED=1 the shipped one too)
pids=(); evals=()
EVAL="--seeds ${EVAL_SEEDS:-2} --batch-size 168 --top-k 20 --interp-top-k 1 ${EVAL_ARGS:-}"
if [ "$EVAL_SHIPPED" = 1 ]; then
    evals+=(shipped)
    ( timeout "$EVAL_LIMIT" $PY -m cogvideo_lite.evaluate shapes --ckpt $B $EVAL --json runs/eval-shipped.json 2>&1 \
          | quiet | tail -n 14 > runs/eval-shipped.txt ) &
    pids+=($!)
fi
for spec in $EVALS; do
    IFS=: read -r name keyframe interpolate <<< "$spec"
    evals+=("$name")
    ( $PY -m cogvideo_lite.bundle --out runs/bundle-$name --tokenizer $B/tokenizer --text $B/text --image $IMAGE/model \
          --keyframe runs/$keyframe/model --interpolate runs/$interpolate/model --recommend top_k=20 \
          --recommend interp_top_k=1 > runs/eval-$name.txt 2>&1 &&
      timeout "$EVAL_LIMIT" $PY -m cogvideo_lite.evaluate shapes --ckpt runs/bundle-$name $EVAL \
          --json runs/eval-$name.json 2>&1 | quiet | tail -n 14 >> runs/eval-$name.txt ) &
    pids+=($!)
done
wait "${pids[@]}"
for name in "${evals[@]}"; do echo "== evaluate $name"; cat runs/eval-$name.txt; done >> "$REPORT"
# files of at most 16 MiB come back: split the archive (globs that match nothing drop out)
shopt -s nullglob
tar czf - runs/gpu-load.txt runs/eval-* runs/probe-* $(for name in "${names[@]}"; do
    echo runs/$name.log runs/$name/model runs/$name/metrics.jsonl runs/$name/config.yaml runs/$name/run.json; done) \
    | split -b 15M - "$OUT/video-runs.tgz.part-"
cat "$REPORT"
