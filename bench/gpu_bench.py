"""One GPU call: the key-frame stage's training throughput at `small` and `base` with MFU counted two ways, peak memory
and the largest micro-batch that fits, the new attention checked against the dense reference, and sampling speed.

    python -m bench.gpu_bench --json OUT [--budget 480] [--phases train largest check sample]   # one GPU
    python -m bench.gpu_bench --smoke --json OUT          # CPU, tiny sizes: checks the script itself

First the card's bf16 matmul rate (8192^2 by 8192^2), measured here: the MFU denominator. Then the jobs of `FULL`,
most important first; the record is rewritten after each, and a job that the remaining budget (seconds since the
start) cannot hold is skipped and named in the notes:
- train: the key-frame stage (spatial channel frozen) through DeepSpeed (ZeRO-2, bf16) as `train.py` runs it, at
  `small` (micro-batch 16: attention "auto", i.e. FlexAttention; the dense reference; "auto" with compiled blocks,
  `train.compile`) and `base` (activation checkpointing, the size's default, at micro-batch 8 and 16; and 16 without
  it). Per row: the first step's loss (the same weights and batch in every row of a size: FlexAttention against the
  dense reference) and seconds (compilation), s/step, tokens/s, MFU with useful FLOPs (attention over the pairs the
  masks allow, with the batch's text padding) and with dense FLOPs (every pair of a channel's rows with the keys),
  both by the model-FLOP convention of `bench.train_speed` (6 per weight per token, frozen weights included), and
  peak memory.
- largest: the peaks of the plain `base` runs at micro-batch 8 and 16 give the memory per sample; the largest
  micro-batch predicted to fit (92% of the card) is run (10% fewer until it runs), beside `bench.memory`'s count.
- check: on the card, the FlexAttention forward against the dense reference (every generator stage, text padding, a
  local temporal window; float32), and 50 AdamW steps of a tiny key-frame stage (float32) with each: the losses must
  not move beyond float rounding.
- sample: a random `small` bundle loaded with `Pipeline.load`, one cached 33-frame video at batch 1 and 8 (float32).
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import base_parser, generator_layout, machine_info, measure, peak_rss_bytes, report, set_threads
from bench.common import text_tokenizer as build_text_tokenizer
from bench.matmul import time_matmul
from bench.memory import GB, activation_elements, parameter_counts
from bench.sample_speed import FULL_ROUNDS, build_random_bundle, frames_after, video
from bench.train_speed import generator_step_flops, random_generator_batch
from cogvideo_lite.model.config import GENERATOR_SIZES, GeneratorConfig
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import GENERATOR_STAGES, IMAGE, KEYFRAME
from cogvideo_lite.model.transformer import Generator, stage_loss
from cogvideo_lite.sample.pipeline import Pipeline
from cogvideo_lite.train import distributed
from cogvideo_lite.train.config import TrainConfig
from cogvideo_lite.train.engine import build_engine, resolve_precision
from cogvideo_lite.train.generator_task import GeneratorObjective

# Nominal dense bf16 tensor-core peaks (NVIDIA data sheets, without sparsity), matched on the device name.
NOMINAL_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12}
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}
HEADROOM = 0.92  # the share of the card a micro-batch may fill: the CUDA context and allocator slack take the rest


@dataclass(frozen=True)
class Run:
    """One timed configuration of the key-frame stage: micro-batch, attention, compiled blocks, and activation
    checkpointing (None: the size's own)."""

    batch: int
    attention: str = "auto"
    compiled: bool = False
    checkpointing: bool | None = None


# The jobs of a run, most important first: ("train", size, Run), ("largest", size) (from the peaks of the plain runs
# of that size at two micro-batches), ("check",), ("sample", size, batches, rounds).
FULL = {"jobs": (("train", "small", Run(16)), ("train", "small", Run(16, "dense")), ("train", "base", Run(8)),
                 ("train", "base", Run(16)), ("largest", "base"), ("check",),
                 ("train", "small", Run(16, compiled=True)), ("train", "base", Run(16, checkpointing=False)),
                 ("sample", "small", (1, 8), FULL_ROUNDS)),
        "steps": 20, "warmup": 5, "check_steps": 50}
SMOKE = {"jobs": (("train", "tiny", Run(2)), ("train", "tiny", Run(2, "dense")), ("check",),
                  ("sample", "tiny", (1, 2), 1)),
         "steps": 1, "warmup": 1, "check_steps": 3}
KINDS = ("train", "largest", "check", "sample")
NEEDS = {"check": 90, "train": 45, "compiled": 120, "largest": 90, "sample": 60}  # about the seconds each takes
CHECK_LAYOUT = SequenceLayout(text_length=16, num_frames=5, grid=(8, 8), text_vocab_size=40, codebook_size=64)
CHECK_CONFIG = GeneratorConfig(dim=64, depth=2, heads=4)
CHECK_BATCH = 4


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
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GB
        return peak_rss_bytes() / GB

    def capacity_gib(self) -> float:
        return torch.cuda.get_device_properties(self.device).total_memory / GB if self.device.type == "cuda" else 0.0


def synchronizer(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------------- check
def check_tokens(layout: SequenceLayout, generator: torch.Generator) -> torch.Tensor:
    """(CHECK_BATCH, S) random captions and codes at 2 fps."""
    codes = torch.randint(0, layout.codebook_size, (CHECK_BATCH, layout.num_frames, *layout.grid), generator=generator)
    texts = torch.randint(0, layout.text_vocab_size, (CHECK_BATCH, layout.text_length), generator=generator)
    return layout.assemble(texts, torch.full((CHECK_BATCH,), 3), codes, 2)


def check_rows(device: torch.device, steps: int) -> list[dict[str, Any]]:
    """FlexAttention ("flex" on the card; "slots" where flex cannot train, on CPU) against the dense reference."""
    new = "flex" if device.type == "cuda" else "slots"
    generator = torch.Generator().manual_seed(0)
    text_pad = torch.zeros(CHECK_BATCH, CHECK_LAYOUT.text_length, dtype=torch.bool)
    text_pad[0, :5], text_pad[1, :15], text_pad[2, :] = True, True, True  # a short, a one-word and an empty caption
    text_pad = text_pad.to(device)
    rows = []
    for stage in GENERATOR_STAGES:
        tokens = check_tokens(CHECK_LAYOUT.with_frames(1) if stage is IMAGE else CHECK_LAYOUT, generator).to(device)
        torch.manual_seed(0)
        model = Generator(replace(CHECK_CONFIG, temporal_window=(1, 2, 2)), CHECK_LAYOUT).to(device).eval()
        logits = {}
        for backend in ("dense", new):
            model.attention = backend
            with torch.no_grad():
                logits[backend] = model(tokens, text_pad, stage)
        rows.append({"phase": "check forward", "size": "check", "stage": stage.name, "attention": new,
                     "max |difference|": (logits[new] - logits["dense"]).abs().max().item(),
                     "max |logit|": logits["dense"].abs().max().item()})
    curves = {backend: loss_curve(backend, text_pad, device, steps) for backend in ("dense", new)}
    differences = [abs(a - b) / abs(b) for a, b in zip(curves[new], curves["dense"])]
    rows.append({"phase": f"check {steps} training steps", "size": "check", "stage": KEYFRAME.name, "attention": new,
                 "first loss": curves["dense"][0], "last loss (dense)": curves["dense"][-1],
                 f"last loss ({new})": curves[new][-1], "max relative difference": max(differences)})
    return rows


def loss_curve(backend: str, text_pad: torch.Tensor, device: torch.device, steps: int) -> list[float]:
    """Losses of `steps` AdamW steps of a fresh key-frame stage (float32, spatial channel frozen) on one batch."""
    torch.manual_seed(0)
    model = Generator(CHECK_CONFIG, CHECK_LAYOUT).to(device).train()
    model.freeze_spatial()
    model.attention = backend
    tokens = check_tokens(CHECK_LAYOUT, torch.Generator().manual_seed(1)).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(steps):
        loss_slots = KEYFRAME.plan(CHECK_LAYOUT).loss_slots
        logits = model(tokens, text_pad, KEYFRAME, CHECK_LAYOUT.prediction_rows(loss_slots, device))
        loss = stage_loss(logits, tokens, CHECK_LAYOUT, loss_slots)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------------- train
class KeyframeTraining:
    """The key-frame stage of one size through DeepSpeed, as `train.py` runs it (random captions and codes)."""

    def __init__(self, size: str, text, device: torch.device):
        self.size, self.text, self.device = size, text, device
        self.config = GENERATOR_SIZES[size]
        self.layout = generator_layout(size, KEYFRAME.name, text.vocab_size)

    def step(self, run: Run) -> tuple[Callable[[], torch.Tensor], dict[str, Any]]:
        """A training step of `run` and its FLOPs (`StepFlops`) with the batch's text padding."""
        torch.manual_seed(0)
        checkpointing = self.config.activation_checkpointing if run.checkpointing is None else run.checkpointing
        model = Generator(replace(self.config, activation_checkpointing=checkpointing), self.layout)
        model.freeze_spatial()
        model.attention = run.attention
        if run.compiled:
            model.compile_blocks()
        batch = run.batch
        module = GeneratorObjective(model, KEYFRAME, self.layout).train().to(self.device)
        train = TrainConfig(micro_batch=batch, grad_accum=1, zero_stage=2, warmup_steps=0)
        engine, _, _ = build_engine(module, [p for p in model.parameters() if p.requires_grad], train,
                                    distributed.world_size(), self.device)
        data = random_generator_batch(self.layout, self.text, batch)
        flops = generator_step_flops(self.config, self.layout, KEYFRAME.name, batch, data["text_pad"])
        data = {name: value.to(self.device) for name, value in data.items()}

        def step() -> torch.Tensor:
            loss = engine(data, 0).loss
            engine.backward(loss)
            engine.step()
            return loss.detach()

        return step, {"flops": flops, "precision": resolve_precision(train, self.device),
                      "checkpointing": checkpointing}


def train_row(training: KeyframeTraining, run: Run, warmup: int, steps: int, matmul_rate: float,
              memory: PeakMemory) -> dict[str, Any]:
    memory.reset()
    before = memory.peak_gib()  # what earlier jobs left allocated
    step, info = training.step(run)
    start = time.perf_counter()
    first_loss = step().item()  # the first step compiles (FlexAttention, and the blocks with `compiled`)
    first = time.perf_counter() - start
    timing = measure(step, max(warmup - 1, 0), steps, synchronizer(training.device))
    flops, seconds = info["flops"], timing.seconds
    row = {"phase": f"train keyframe ({info['precision']}, DeepSpeed ZeRO-2)", "size": training.size,
           **asdict(run), "checkpointing": info["checkpointing"], "first loss": first_loss, "first step s": first,
           "s/step": seconds,
           "tokens/s": run.batch * training.layout.seq_length / seconds,
           "useful TFLOP/s": flops.useful_model / seconds / 1e12,
           "MFU (useful)": flops.useful_model / seconds / matmul_rate,
           "MFU (dense)": flops.model / seconds / matmul_rate,
           "executed MFU (useful)": flops.useful_executed / seconds / matmul_rate, "GiB before": before,
           "peak GiB": memory.peak_gib()}
    peak = nominal_peak(torch.cuda.get_device_name(training.device)) if training.device.type == "cuda" else None
    if peak:
        row["MFU (useful) vs nominal"] = flops.useful_model / seconds / peak
    del info, step
    return row


def fits(training: KeyframeTraining, batch: int, memory: PeakMemory) -> float | None:
    """Peak GiB of two steps at `batch`, or None when the card runs out of memory."""
    memory.reset()
    try:
        step, info = training.step(Run(batch))
        step()
        step()
        synchronizer(training.device)()
        return memory.peak_gib()
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        step = info = None
        memory.reset()


def largest_batch_row(training: KeyframeTraining, peaks: dict[int, float], memory: PeakMemory) -> dict[str, Any]:
    """Memory per sample from the peaks at two micro-batches; the largest micro-batch predicted to fit, run."""
    (small, small_peak), (large, large_peak) = sorted(peaks.items())[:2]
    per_sample = (large_peak - small_peak) / (large - small)
    fixed = small_peak - small * per_sample
    capacity = memory.capacity_gib()
    batch = math.floor((HEADROOM * capacity - fixed) / per_sample)
    counted = count_batch(training.size, training.text.vocab_size, capacity)
    row = {"phase": "largest micro-batch", "size": training.size, "attention": "auto",
           "checkpointing": training.config.activation_checkpointing, "GiB per sample": per_sample,
           "GiB fixed": fixed, "card GiB": capacity, "predicted": batch, "counted (bench.memory)": counted}
    for _ in range(4):
        peak = fits(training, batch, memory)
        if peak is not None:
            return {**row, "batch": batch, "peak GiB": peak}
        batch = math.floor(batch * 0.9)
    return {**row, "batch": None}


def count_batch(size: str, text_vocab_size: int, capacity_gib: float) -> int:
    """The largest micro-batch by `bench.memory`'s counting: bf16 state plus bf16 activations per sample."""
    everything, trainable = parameter_counts(size, KEYFRAME.name, text_vocab_size)
    state = (16 * trainable + 2 * (everything - trainable)) / GB
    per_sample = 2 * activation_elements(size, KEYFRAME.name, text_vocab_size) / GB
    return math.floor((HEADROOM * capacity_gib - state) / per_sample)


# ---------------------------------------------------------------------------------------------------- sample
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


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], warmup=FULL["warmup"], repeats=FULL["steps"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: checks that the script runs")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all phases; later ones are skipped")
    parser.add_argument("--phases", nargs="+", default=list(KINDS), choices=KINDS, help="the kinds of job to run")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else {**FULL, "steps": args.repeats, "warmup": args.warmup}
    if not (args.smoke or torch.cuda.is_available()):
        raise SystemExit("gpu_bench: no CUDA device here; `--smoke` checks the script on CPU at tiny sizes")
    started = time.perf_counter()
    set_threads(args.threads)
    device = distributed.init_distributed("cpu" if args.smoke else "cuda").device
    precision = resolve_precision(TrainConfig(), device)
    matmul_size = MATMUL_SIZE[device.type]
    matmul = time_matmul(matmul_size, torch.bfloat16 if precision == "bf16" else torch.float32, warmup=3, repeats=10,
                         device=device)
    matmul_rate = 2 * matmul_size**3 / matmul.seconds
    memory = PeakMemory(device)
    with tempfile.TemporaryDirectory() as scratch:
        text = build_text_tokenizer(Path(scratch))
    rows = [{"phase": f"matmul {matmul_size}^2 {precision}", "s/step": matmul.seconds,
             "TFLOP/s": matmul_rate / 1e12}]
    notes = ["MFU = model FLOPs (6 per weight per token, frozen weights included; attention 4 x D per query-key pair, "
             "x 3) / the matmul rate above; useful: attention over the pairs the masks allow (with text padding), "
             "dense: every pair of each channel's rows with the keys; executed: frozen weights at 4 per token"]
    if args.smoke:
        notes.append("smoke run: tiny sizes on CPU, not a measurement")
    settings = {"smoke": args.smoke, "steps": plan["steps"], "warmup": plan["warmup"], "precision": precision,
                "jobs": [[asdict(part) if isinstance(part, Run) else part for part in job] for job in plan["jobs"]],
                "budget_s": args.budget, "matmul_flops_per_second": matmul_rate}

    def write() -> dict:
        return report("gpu_bench", "GPU benchmark (key-frame stage)", rows, args.json,
                      {**settings, "seconds": time.perf_counter() - started}, machine_info(), notes)

    def allowed(what: str, needs: float) -> bool:
        """Whether `what` fits the budget left (always in a smoke run); a skip is named in the notes."""
        left = args.budget - (time.perf_counter() - started)
        if left >= needs or args.smoke:
            return True
        notes.append(f"skipped {what}: {left:.0f} s of the budget left, it needs about {needs:.0f} s")
        return False

    trainings, peaks, record = {}, {}, write()  # each job rewrites the record: a cut-off call keeps what it measured
    for kind, *job in plan["jobs"]:
        if kind not in args.phases:
            continue
        try:
            if kind == "train":
                size, run = job
                if args.smoke and run.compiled:  # compiling on CPU takes minutes
                    continue
                if allowed(f"train {size} {run}", NEEDS["compiled" if run.compiled else "train"]):
                    training = trainings.setdefault(size, KeyframeTraining(size, text, device))
                    rows.append(train_row(training, run, plan["warmup"], plan["steps"], matmul_rate, memory))
                    if run == Run(run.batch):  # attention "auto", the size's checkpointing: the memory per sample
                        peaks.setdefault(size, {})[run.batch] = rows[-1]["peak GiB"]
            elif kind == "largest":
                [size] = job
                if len(peaks.get(size, {})) > 1 and allowed(f"largest micro-batch at {size}", NEEDS["largest"]):
                    rows.append(largest_batch_row(trainings[size], peaks[size], memory))
            elif kind == "check" and allowed("check", NEEDS["check"]):
                rows.extend(check_rows(device, plan["check_steps"]))
            elif kind == "sample" and allowed("sample", NEEDS["sample"]):
                size, batches, rounds = job
                rows.extend(sample_rows(size, batches, rounds, device, memory))
        except Exception as error:  # one call on a lent card: a failed job is named, the jobs after it still run
            if args.smoke:
                raise
            traceback.print_exc()
            notes.append(f"failed {kind} {' '.join(map(str, job))}: {type(error).__name__}: {str(error)[:300]}")
        record = write()
    return record


if __name__ == "__main__":
    main()
