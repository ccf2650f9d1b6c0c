"""One short GPU run (under 3 minutes): bf16 training throughput and MFU of the `small` key-frame generator through
DeepSpeed, sampling speed of a 33-frame video, and peak GPU memory.

    python -m bench.gpu_bench --json OUT [--size small] [--batch 16] [--steps 20]
    python -m bench.gpu_bench --smoke --json OUT          # CPU, tiny, a few seconds: checks the script itself

Training: `GeneratorObjective` of the key-frame stage (spatial channel frozen, as `GeneratorTask` builds it) wrapped
by `cogvideo_lite.train.engine.build_engine` (ZeRO-2; precision "auto": bf16 on a GPU, float32 on CPU), random codes
and real captions; one timed step = engine forward, `engine.backward`, `engine.step`. FLOPs are counted as in
`bench.train_speed`; MFU divides them by the bf16 matmul rate of the same card measured at the start of the run
(and, for reference, by the card's nominal dense bf16 peak where the name is known).
Sampling: a random bundle of the same size loaded with `Pipeline.load` on the device (float32 weights, as
`sample.py` runs it), cached, batch 1 and 8. Peak memory: `torch.cuda.max_memory_allocated` per phase (peak RSS on CPU).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.common import base_parser, generator_layout, machine_info, measure, peak_rss_bytes, report, set_threads
from bench.common import text_tokenizer as build_text_tokenizer
from bench.matmul import time_matmul
from bench.sample_speed import FULL_ROUNDS, build_random_bundle, frames_after, video
from bench.train_speed import generator_step_flops, random_generator_batch
from cogvideo_lite.train import distributed
from cogvideo_lite.train.config import TrainConfig
from cogvideo_lite.train.engine import build_engine, resolve_precision
from cogvideo_lite.model.config import GENERATOR_SIZES
from cogvideo_lite.model.stages import KEYFRAME
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.sample.pipeline import Pipeline
from cogvideo_lite.train.generator_task import GeneratorObjective

# Nominal dense bf16 tensor-core peaks (NVIDIA data sheets, without sparsity), matched on the device name.
NOMINAL_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12}
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}
SAMPLE_BATCHES = (1, 8)
SMOKE = {"size": "tiny", "batch": 2, "steps": 1, "warmup": 1, "rounds": 1, "sample_batches": (1, 2)}
GiB = 2**30


def nominal_peak(name: str) -> float | None:
    for key, value in NOMINAL_BF16_FLOPS.items():  # the longer names come first
        if key in name:
            return value
    return None


class PeakMemory:
    """Peak memory of a phase: torch's allocation counter on a GPU, the process's peak RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GiB
        return peak_rss_bytes() / GiB


def synchronizer(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else None


def train_rows(size: str, batch: int, warmup: int, steps: int, text, device: torch.device, matmul_rate: float,
               memory: PeakMemory) -> list[dict[str, Any]]:
    config = GENERATOR_SIZES[size]
    layout = generator_layout(size, KEYFRAME.name, text.vocab_size)
    model = Generator(config, layout)
    model.freeze_spatial()
    module = GeneratorObjective(model, KEYFRAME, layout).train().to(device)
    train = TrainConfig(micro_batch=batch, grad_accum=1, zero_stage=2, warmup_steps=0)
    parameters = [p for p in model.parameters() if p.requires_grad]
    engine, _, _ = build_engine(module, parameters, train, distributed.world_size(), device)
    data = {name: value.to(device) for name, value in random_generator_batch(layout, text, batch).items()}
    counter = iter(range(10**9))

    def step() -> None:
        engine.backward(engine(data, next(counter)).loss)
        engine.step()

    memory.reset()
    timing = measure(step, warmup, steps, synchronizer(device))
    flops = generator_step_flops(config, layout, KEYFRAME.name, batch)
    row = {"phase": f"train keyframe ({resolve_precision(train, device)}, DeepSpeed ZeRO-{train.zero_stage})",
           "size": size, "batch": batch, "s/step": timing.seconds,
           "tokens/s": batch * layout.seq_length / timing.seconds,
           "model TFLOP/s": flops.model / timing.seconds / 1e12, "MFU": flops.model / timing.seconds / matmul_rate,
           "executed MFU": flops.executed / timing.seconds / matmul_rate, "peak GiB": memory.peak_gib()}
    peak = nominal_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if peak:
        row["MFU vs nominal"] = flops.model / timing.seconds / peak
    return [row]


def sample_rows(size: str, batches: tuple[int, ...], rounds: int, device: torch.device,
                memory: PeakMemory) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = Pipeline.load(build_random_bundle(Path(scratch), size), device)
        video(pipeline, 1, 0, use_cache=True)  # warm-up: key frames only
        for batch in batches:
            memory.reset()
            timing = measure(lambda: video(pipeline, batch, rounds, use_cache=True), 0, 1, synchronizer(device))
            rows.append({"phase": f"sample {frames_after(rounds)} frames, cached (fp32)", "size": size,
                         "batch": batch, "s/call": timing.seconds, "s/video": timing.seconds / batch,
                         "peak GiB": memory.peak_gib()})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], warmup=5, repeats=20)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: checks that the script runs")
    parser.add_argument("--size", default="small", choices=list(GENERATOR_SIZES))
    parser.add_argument("--batch", type=int, default=16, help="training micro-batch")
    args = parser.parse_args(argv)
    if args.smoke:
        size, batch, steps, warmup = SMOKE["size"], SMOKE["batch"], SMOKE["steps"], SMOKE["warmup"]
        rounds, batches = SMOKE["rounds"], SMOKE["sample_batches"]
    else:
        size, batch, steps, warmup = args.size, args.batch, args.repeats, args.warmup
        rounds, batches = FULL_ROUNDS, SAMPLE_BATCHES
    set_threads(args.threads)
    info = distributed.init_distributed("cpu" if args.smoke else "auto")
    device = info.device
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("gpu_bench: no CUDA device; run with --smoke to check the script on CPU")
    torch.manual_seed(0)
    precision = resolve_precision(TrainConfig(), device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    matmul_size = MATMUL_SIZE[device.type]
    matmul = time_matmul(matmul_size, dtype, warmup=3, repeats=10, device=device)
    matmul_rate = 2 * matmul_size**3 / matmul.seconds
    memory = PeakMemory(device)
    with tempfile.TemporaryDirectory() as scratch:
        text = build_text_tokenizer(Path(scratch))
    rows = [{"phase": f"matmul {matmul_size}^2 {precision}", "size": "-", "batch": "-", "s/step": matmul.seconds,
             "model TFLOP/s": matmul_rate / 1e12}]
    notes = ["MFU = model FLOPs (6 per weight per token, 3x attention, frozen weights included) / the matmul rate "
             "above; executed MFU counts frozen weights at 4 (no weight gradient)"]
    if args.smoke:
        notes.append("smoke run: tiny sizes, not a measurement")
    settings = {"smoke": args.smoke, "size": size, "batch": batch, "steps": steps, "warmup": warmup, "rounds": rounds,
                "sample_batches": list(batches), "precision": precision, "matmul_flops_per_second": matmul_rate}

    def write(partial: bool) -> dict:  # the training figures are kept even if sampling runs out of time
        return report("gpu_bench", f"GPU benchmark, size {size}" + (" (training; sampling to follow)" * partial),
                      rows, args.json, {**settings, "partial": partial}, machine_info(), notes)

    rows += train_rows(size, batch, warmup, steps, text, device, matmul_rate, memory)
    write(partial=True)
    rows += sample_rows(size, batches, rounds, device, memory)
    return write(partial=False)


if __name__ == "__main__":
    main()
