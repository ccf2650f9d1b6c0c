#!/usr/bin/env bash
# One call on a lent GPU (see ../shared/GPU.md): train the three generator stages of the shipped tiny model from token
# shards prepared on the CPU (runs/shards-tiny, carried), and, at the same time on the same card, the general tiny frame
# tokenizer of configs/tokenizer_tiny.yaml. Then the GPU benchmark if it exists. Everything lands in $OUT.
# Carried: .gpu (wheels, 600 built-in clips, the real clips and photos), runs/shards-tiny, runs/tokenizer-tiny/model.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
IMAGE_STEPS=${IMAGE_STEPS:-1500}; VIDEO_STEPS=${VIDEO_STEPS:-1500}; STAGE_LIMIT=${STAGE_LIMIT:-85}
TOKENIZER_STEPS=${TOKENIZER_STEPS:-6000}; TOKENIZER_LIMIT=${TOKENIZER_LIMIT:-270}; EXTRA=${EXTRA:-}
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p data runs && rm -rf data/shapes && ln -s "$PWD/.gpu/shapes" data/shapes
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

publish_latest() {  # a stage stopped by its time limit still yields its newest complete checkpoint
    [ -d "$1/model" ] || python3 -c "from cogvideo_lite.train.checkpoint import RunDirectory as R; r=R('$1'); t=r.latest_tag(); print('published', t); t and r.publish(t)"
}
quiet() { tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$"; }

# -- the general tokenizer, in the background: the config's package files are read from the carried copies
SOURCES=$(python3 - <<'PY'
import yaml
raw = yaml.safe_load(open("configs/tokenizer_tiny.yaml"))
for key in ("sources",):
    for source in raw["data"][key]:
        if ":" in source["path"]:
            source["path"] = ".gpu/real/" + source["path"].rsplit("/", 1)[-1]
print(yaml.safe_dump(raw["data"]["sources"], default_flow_style=True, width=100000).strip())
PY
)
( start=$(date +%s)
  timeout "$TOKENIZER_LIMIT" python3 train.py --config configs/tokenizer_tiny.yaml --overwrite \
      --set run_dir=runs/tokenizer-general --set "data.sources=$SOURCES" --set "data.heldout=[.gpu/real/bigbuckbunny.mp4]" \
      --set train.num_workers=10 --set train.steps=$TOKENIZER_STEPS $EXTRA 2>&1 | quiet > runs/tokenizer-general.log
  echo "tokenizer exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" >> runs/tokenizer-general.log
  publish_latest runs/tokenizer-general >> runs/tokenizer-general.log 2>&1
  tail -n 4 runs/tokenizer-general.log >> "$OUT/summary.txt"
  tar czf "$OUT/tokenizer-general.tgz" runs/tokenizer-general.log runs/tokenizer-general/model \
      runs/tokenizer-general/metrics.jsonl runs/tokenizer-general/config.yaml runs/tokenizer-general/run.json ) &
TOKENIZER_JOB=$!

# -- the generator stages, one after the other
for stage in image keyframe interpolate; do
    steps=$VIDEO_STEPS; batch=64
    [ $stage = image ] && steps=$IMAGE_STEPS && batch=128
    start=$(date +%s)
    timeout "$STAGE_LIMIT" python3 train.py --config configs/${stage}_tiny.yaml --overwrite \
        --set train.steps=$steps --set train.micro_batch=$batch --set train.save_every=250 --set train.log_every=25 \
        --set train.num_workers=3 $EXTRA 2>&1 | quiet > runs/$stage-tiny.log
    echo "$stage exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" >> runs/$stage-tiny.log
    publish_latest runs/$stage-tiny >> runs/$stage-tiny.log
    tail -n 3 runs/$stage-tiny.log >> "$OUT/summary.txt"
done
# files of at most 16 MiB come back: split the archive
tar czf - runs/{image,keyframe,interpolate}-tiny.log runs/{image,keyframe,interpolate}-tiny/{model,metrics.jsonl,config.yaml,run.json} \
    | split -b 15M - "$OUT/generator-runs.tgz.part-"

if [ -f bench/gpu_bench.py ]; then
    timeout 40 python3 bench/gpu_bench.py --json "$OUT/gpu_bench.json" 2>&1 | quiet | tail -n 30 >> "$OUT/summary.txt"
fi
wait $TOKENIZER_JOB
cat "$OUT/summary.txt"
