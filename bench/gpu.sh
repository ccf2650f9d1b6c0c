#!/usr/bin/env bash
# One call on a lent GPU (see GPU.md beside this repository for the machine): install the carried wheels, point data/
# and runs/ at the carried inputs, then train and evaluate what a run list says (`bench/gpu_runs.py`):
#     bash bench/gpu.sh bench/runs/video_stages.yaml          # OUT=/tmp/gpu-out by default; WHEELS=.gpu/whl-train
# Carried: the wheels (.gpu/whl: deepspeed, decord, pydantic, hjson; decord can stay behind when the runs read token
# shards only), .gpu/shapes (built-in clips) and .gpu/real (the package clips and photos) for tokenizer runs, and the
# shard folders the run list names (as folders, or packed as .gpu/NAME.tar.xz, unpacked into runs/). Comes back under $OUT: report.txt, gpu_bench.json, runs.tgz.part-*.
set -uo pipefail
RUNS=${1:?usage: bash bench/gpu.sh bench/runs/LIST.yaml}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
PY=${PY:-python3}  # a local dry run: PY=.venv/bin/python SKIP_INSTALL=1 bash bench/gpu.sh LIST --dry-run
[ -n "${SKIP_INSTALL:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    ${WHEELS:-.gpu/whl}/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p data runs
for packed in .gpu/*.tar.xz; do [ -e "$packed" ] && tar xJf "$packed" -C runs; done  # shards carried packed
[ -d .gpu/shapes ] && { rm -rf data/shapes; ln -s "$PWD/.gpu/shapes" data/shapes; }
[ -e runs/image-tiny/model ] || { mkdir -p runs/image-tiny && ln -s "$PWD/checkpoints/shapes-tiny/image" runs/image-tiny/model; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -m bench.gpu_runs "$RUNS" --out "$OUT" "${@:2}"
