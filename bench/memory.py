"""Memory of training and sampling: measured at `tiny` on this machine, computed for every registered size.

    python -m bench.memory [--sizes tiny small base] [--threads 1] [--json OUT]

Measured (each case in a fresh process, so that one peak does not hide another):
- training: two steps (forward, backward, AdamW) of each stage at its config's micro-batch: the process's peak
  resident memory (RSS), its growth over the built model, and the bytes autograd saved for the backward pass
  (`saved_tensors_hooks`, parameters excluded) beside the activation estimate below;
- sampling: one cached 33-frame video at batch 1 and 8 (random bundle of `bench.sample_speed`).
On CPU torch keeps no allocation counter; `gpu_bench` reports `torch.cuda.max_memory_allocated` on a GPU.

Computed (parameters counted exactly on a meta-device model, nothing allocated):
- training state per trainable parameter: float32 on CPU 16 bytes (weight, gradient, Adam's two moments);
  DeepSpeed bf16 on GPU 16 bytes (bf16 weight and gradient, float32 master weight and two moments), frozen
  weights 4 (float32) / 2 (bf16) bytes;
- activations per sample, elements saved for the backward pass per token and layer: 16 D in the image stage
  (block input, normalised input, QKV, attention output, residual, second norm, the 4 D MLP hidden before and after
  GELU); 17 D in the video stages, where a frozen linear layer saves no input (no weight gradient): block input,
  normalised input, both channels' QKV and outputs, both projections' outputs (for the mixing gradient), residual,
  the MLP hidden before GELU; plus 2 x N x codebook for the logits and the loss at the N loss rows (the head runs
  there alone). With activation checkpointing
  (base): one D per token and layer plus one layer's full set. Attention scores are not stored (fused attention).
  At tiny the estimate is compared with what autograd actually saved under the dense attention; the CPU's per-slot
  attention also keeps the keys and values each spatial slot gathers (prefix and slot), about 2 D more.
- KV cache of sampling: 2 channels x (keys, values) x depth x batch x S x D.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path
from typing import Any

import psutil
import torch

from bench.common import (base_parser, generator_layout, machine_info, peak_rss_bytes, report, set_threads,
                          write_json)
from bench.common import text_tokenizer as build_text_tokenizer
from bench.sample_speed import FULL_ROUNDS, build_random_bundle, video
from bench.train_speed import STAGES, build_generator_stage, build_tokenizer_stage, plain_step
from cogvideo_lite.model.config import GENERATOR_SIZES
from cogvideo_lite.model.stages import IMAGE, KEYFRAME, STAGES as REGISTRY
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.sample.pipeline import Pipeline

MB = 2**20
GB = 2**30
SAVED_PER_TOKEN_LAYER = {False: 16, True: 17}  # image stage, video stages: in units of D, see the docstring
TRAIN_STEPS = 2
SAMPLE_BATCHES = (1, 8)


# ---------------------------------------------------------------------------------------------------- computed
def parameter_counts(size: str, stage: str, text_vocab_size: int) -> tuple[int, int]:
    """(all, trainable) parameters of a generator stage, counted on the meta device."""
    with torch.device("meta"):
        model = Generator(GENERATOR_SIZES[size], generator_layout(size, stage, text_vocab_size))
    if REGISTRY[stage].is_video:
        model.freeze_spatial()
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def activation_elements(size: str, stage: str, text_vocab_size: int) -> int:
    """Elements saved for the backward pass by one training sequence (see the module docstring)."""
    config, layout = GENERATOR_SIZES[size], generator_layout(size, stage, text_vocab_size)
    tokens = layout.seq_length
    per_layer = SAVED_PER_TOKEN_LAYER[REGISTRY[stage].is_video] * config.dim * tokens
    layers = (config.depth * config.dim * tokens + per_layer if config.activation_checkpointing
              else config.depth * per_layer)
    loss_rows = len(REGISTRY[stage].plan(layout).loss_slots) * layout.tokens_per_frame
    return layers + 2 * loss_rows * layout.codebook_size


def computed_row(size: str, stage: str, text_vocab_size: int) -> dict[str, Any]:
    everything, trainable = parameter_counts(size, stage, text_vocab_size)
    frozen = everything - trainable
    config, layout = GENERATOR_SIZES[size], generator_layout(size, stage, text_vocab_size)
    activations = activation_elements(size, stage, text_vocab_size)
    cache_stage = layout if REGISTRY[stage].is_video else layout.with_frames(1)
    channels = len(REGISTRY[stage].channels)
    kv_cache = channels * 2 * config.depth * SAMPLE_BATCHES[-1] * cache_stage.seq_length * config.dim * 4
    return {"size": size, "stage": stage, "S": layout.seq_length, "params M": everything / 1e6,
            "trainable M": trainable / 1e6,
            "fp32 state GB": (16 * trainable + 4 * frozen) / GB,
            "fp32 act GB/sample": 4 * activations / GB,
            "bf16 state GB": (16 * trainable + 2 * frozen) / GB,
            "bf16 act GB/sample": 2 * activations / GB,
            "kv cache MB (b8)": kv_cache / MB,
            "checkpointing": config.activation_checkpointing}


# ---------------------------------------------------------------------------------------------------- measured
def saved_for_backward_bytes(setup) -> int:
    """Bytes of the distinct storages autograd saves in one forward pass, parameters excluded."""
    parameters = {p.untyped_storage().data_ptr() for p in setup.module.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = setup.module(setup.batch, 0).loss
    loss.backward()
    setup.module.zero_grad(set_to_none=True)
    return sum(storages.values())


def measure_training(stage: str, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: build the tiny stage, then TRAIN_STEPS steps; memory before and after."""
    set_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        text = build_text_tokenizer(Path(scratch))
    setup = (build_generator_stage(stage, "tiny", None, text) if REGISTRY[stage].is_generator
             else build_tokenizer_stage("tiny", None))
    built = psutil.Process().memory_info().rss
    saved = saved_for_backward_bytes(setup)
    step = plain_step(setup)
    for _ in range(TRAIN_STEPS):
        step()
    row = {"case": f"train {stage}", "batch": next(iter(setup.batch.values())).shape[0],
           "peak RSS MB": peak_rss_bytes() / MB, "RSS growth MB": (peak_rss_bytes() - built) / MB,
           "saved for backward MB": saved / MB}
    if REGISTRY[stage].is_generator:
        row["estimate MB"] = 4 * row["batch"] * activation_elements("tiny", stage, text.vocab_size) / MB
    return row


def measure_sampling(batch: int, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: load a random tiny bundle, then one cached 33-frame video of `batch` samples."""
    set_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = Pipeline.load(build_random_bundle(Path(scratch), "tiny"))
        built = psutil.Process().memory_info().rss
        video(pipeline, batch, FULL_ROUNDS, use_cache=True)
    return {"case": "sample 33 frames, cached", "batch": batch, "peak RSS MB": peak_rss_bytes() / MB,
            "RSS growth MB": (peak_rss_bytes() - built) / MB}


def in_fresh_process(function, *arguments) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, arguments)


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], warmup=0, repeats=1)
    parser.add_argument("--sizes", nargs="+", default=list(GENERATOR_SIZES), choices=list(GENERATOR_SIZES))
    parser.add_argument("--no-measure", action="store_true", help="computed figures only")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    measured = []
    if not args.no_measure:
        measured += [in_fresh_process(measure_training, stage, args.threads) for stage in STAGES]
        measured += [in_fresh_process(measure_sampling, batch, args.threads) for batch in SAMPLE_BATCHES]
    with tempfile.TemporaryDirectory() as scratch:
        vocabulary = build_text_tokenizer(Path(scratch)).vocab_size
    computed = [computed_row(size, stage, vocabulary) for size in args.sizes for stage in (IMAGE.name, KEYFRAME.name)]
    machine = machine_info()
    record = report("memory", "measured memory, size tiny (fresh process per case)", measured, None, {}, machine)
    notes = ["training batches are the micro-batches of configs/*_tiny.yaml",
             "interpolate has the same parameters and sequence as keyframe (5 slots)",
             "state = weights + gradients + optimizer; activations per sample scale with the micro-batch"]
    computed_record = report("memory", "computed memory per generator stage", computed, None, {}, machine, notes)
    record = {"benchmark": "memory", "machine": machine, "settings": {"sizes": args.sizes},
              "measured": record["rows"], "computed": computed_record["rows"], "notes": notes}
    write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
