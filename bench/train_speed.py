"""Training throughput per stage (tokenizer, image, keyframe, interpolate) and model FLOP utilisation (MFU).

    python -m bench.train_speed [--size tiny] [--stages tokenizer image keyframe interpolate] [--batch N]
                                [--deepspeed] [--threads 1] [--json OUT]

Each stage is built as `train.py` builds it, from the real `configs/<stage>_tiny.yaml` (model size, micro-batch,
AdamW settings; `--size` swaps in another registered size with the same overrides), on random data of the right
shape: random codes and real captions for the generator stages (weights are random; speed does not depend on
them), random frames for the tokenizer. One timed step = forward + backward + AdamW step + zero_grad of the plain
PyTorch module that DeepSpeed would wrap (`--deepspeed` also times the same step through
`cogvideo_lite.train.engine.build_engine`, ZeRO-2, as `train.py` runs it).

FLOP counting convention (matmuls only; norms, softmax, embeddings lookups and the optimizer are not counted):
- forward, per sequence of S tokens with a prefix of P = L + 1: every linear layer 2 x fan_in x fan_out per token
  it is applied to (the temporal QKV runs on all S tokens, the temporal projection on the S - P frame tokens), the
  code head on all S tokens; attention 4 x D per query-key pair, counted two ways: dense = every pair of a channel's
  rows (S spatial, S - P temporal) with the S keys, as masked dense attention computes them; useful = only the pairs
  the stage's masks allow, with the batch's text padding (what block-sparse attention needs at the least).
- model FLOPs (the MFU numerator, PaLM's convention): 3 x forward, i.e. 6 x weight FLOPs as if every weight trained,
  plus 3 x attention.
- executed FLOPs: frozen weights (the spatial channel, embeddings, feed-forward blocks and head of the video
  stages) need the input gradient but no weight gradient: 2 x their forward instead of 3 x.
- tokenizer (the VQVAE alone: the tiny config has no perceptual loss and no discriminator): 3 x the forward FLOPs
  of every convolution and linear layer, plus the (forward-only) cosine similarity of each code vector to the
  codebook.
MFU = model FLOPs per second (dense attention; "useful MFU": useful attention) / the float32 matmul rate measured in
the same run at the same thread count
(`bench.matmul.measured_matmul_flops`); "MFU (cpu time)" divides both by CPU seconds instead of wall seconds, which
keeps most of the waiting for a core out of both when other jobs share the machine.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.common import Timing, base_parser, generator_layout, machine_info, measure, report, set_threads
from bench.common import text_tokenizer as build_text_tokenizer
from bench.matmul import REFERENCE_SIZE, measured_matmul_flops
from cogvideo_lite.train.config import RunConfig, TrainConfig, load_config
from cogvideo_lite.data.shapes import all_captions
from cogvideo_lite.train.engine import PROJECT_ROOT
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.masks import stage_masks, with_text_padding
from cogvideo_lite.model.config import GENERATOR_SIZES, GeneratorConfig
from cogvideo_lite.model.stages import STAGES as REGISTRY
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.train.generator_task import GeneratorObjective
from cogvideo_lite.train.tokenizer_task import TokenizerObjective
from cogvideo_lite.text import TextTokenizer
from tokenizer.config import TOKENIZER_SIZES
from tokenizer.model import VQVAE

STAGES = tuple(REGISTRY)  # the stage names: tokenizer, image, keyframe, interpolate
STAGE_CONFIGS = {stage: PROJECT_ROOT / "configs" / f"{stage}_tiny.yaml" for stage in STAGES}
DATA_SEED = 0


# ---------------------------------------------------------------------------------------------------- FLOPs
@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step (see the module docstring for the convention); `useful_*` count attention over the
    pairs the masks allow only, the others over every pair a channel's rows make with the keys (dense)."""

    forward: float
    model: float
    executed: float
    useful_model: float
    useful_executed: float


def linear_flops(tokens: int, fan_in: int, fan_out: int) -> float:
    return 2.0 * tokens * fan_in * fan_out


def attention_pairs(config: GeneratorConfig, layout: SequenceLayout, stage: str,
                    text_pad: torch.Tensor | None = None) -> dict[str, int]:
    """Query-key pairs of one forward pass over the channels of `stage`, summed over the sequences of text_pad (B, L)
    (one sequence without padding when None): "dense", every row a channel computes (all S in the spatial channel,
    the S - P frame positions in the temporal one) against every key; "useful", the pairs its mask allows."""
    text_pad = torch.zeros(1, layout.text_length, dtype=torch.bool) if text_pad is None else text_pad.cpu()
    masks = stage_masks(layout, REGISTRY[stage], config.temporal_window)
    channels = [(masks.spatial, 0)] + ([(masks.temporal, layout.prefix_length)] if masks.temporal is not None else [])
    pairs = {"dense": 0, "useful": 0}
    for mask, first_row in channels:
        pairs["dense"] += mask[first_row:].numel() * len(text_pad)
        pairs["useful"] += int(with_text_padding(mask[first_row:], text_pad, first_row).sum())
    return pairs


def generator_forward_flops(config: GeneratorConfig, layout: SequenceLayout, stage: str,
                            pairs: int | None = None) -> dict[str, float]:
    """Forward FLOPs of one sequence, split into spatial-group weights (the head at the stage's loss rows, where
    training runs it), temporal-group weights and attention over `pairs` query-key pairs (default: dense,
    `attention_pairs`)."""
    dim, hidden, total, prefix = config.dim, int(config.dim * config.mlp_ratio), layout.seq_length, layout.prefix_length
    frame_tokens = total - prefix
    spatial_layer = (linear_flops(total, dim, 3 * dim) + linear_flops(total, dim, dim)
                     + linear_flops(total, dim, hidden) + linear_flops(total, hidden, dim))
    temporal_layer = 0.0
    if REGISTRY[stage].is_video:
        temporal_layer = linear_flops(total, dim, 3 * dim) + linear_flops(frame_tokens, dim, dim)
    pairs = attention_pairs(config, layout, stage)["dense"] if pairs is None else pairs
    loss_rows = len(REGISTRY[stage].plan(layout).loss_slots) * layout.tokens_per_frame
    return {"spatial": config.depth * spatial_layer + linear_flops(loss_rows, dim, layout.codebook_size),
            "temporal": config.depth * temporal_layer,
            "attention": config.depth * 4.0 * pairs * dim}  # q k^T and the weighted sum of values: 2 + 2 per pair


def generator_step_flops(config: GeneratorConfig, layout: SequenceLayout, stage: str, batch: int,
                         text_pad: torch.Tensor | None = None) -> StepFlops:
    """One training step of `batch` sequences (the useful pairs with the text padding text_pad (B, L), or none); the
    video stages train the temporal group alone."""
    weights = generator_forward_flops(config, layout, stage, pairs=0)
    spatial, temporal = batch * weights["spatial"], batch * weights["temporal"]
    frozen_factor = 2.0 if REGISTRY[stage].is_video else 3.0  # no weight gradient for frozen weights
    pairs = attention_pairs(config, layout, stage, text_pad)
    scale = batch if text_pad is None else 1
    attention = {kind: generator_forward_flops(config, layout, stage, scale * count)["attention"]
                 for kind, count in pairs.items()}
    forward = spatial + temporal + attention["dense"]
    return StepFlops(forward=forward, model=3.0 * forward,
                     executed=frozen_factor * spatial + 3.0 * (temporal + attention["dense"]),
                     useful_model=3.0 * (spatial + temporal + attention["useful"]),
                     useful_executed=frozen_factor * spatial + 3.0 * (temporal + attention["useful"]))


def tokenizer_forward_flops(model: VQVAE) -> float:
    """Forward FLOPs of one frame: every Conv2d / Linear (counted from the shapes of a real forward pass) plus
    the cosine similarity of each code vector to the codebook."""
    total = 0.0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        total += 2.0 * output.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    size = model.config.image_size
    try:
        with torch.no_grad():
            model.decode(model.encode(torch.zeros(1, 1, 3, size, size)))
    finally:
        for hook in hooks:
            hook.remove()
    tokens = model.config.tokens_per_frame
    return total + 2.0 * tokens * model.config.codebook_size * model.config.code_dim


def tokenizer_step_flops(model: VQVAE, frames: int) -> StepFlops:
    similarity = 2.0 * model.config.tokens_per_frame * model.config.codebook_size * model.config.code_dim
    forward = frames * tokenizer_forward_flops(model)
    weights = forward - frames * similarity
    step = 3.0 * weights + frames * similarity  # no attention: every count is the same
    return StepFlops(forward=forward, model=step, executed=step, useful_model=step, useful_executed=step)


# ---------------------------------------------------------------------------------------------------- stages
@dataclass
class StageSetup:
    """A stage ready to time: what DeepSpeed would wrap, its trainable parameters, one batch, and counts."""

    name: str
    module: nn.Module
    parameters: list[nn.Parameter]
    batch: dict[str, Any]
    train: TrainConfig
    flops: StepFlops
    units: dict[str, float]  # per step: "tokens", or "frames" and "pixels"
    parameter_count: int


def stage_config(stage: str, size: str) -> RunConfig:
    """The stage's tiny YAML; another size keeps the YAML's overrides of the tiny entry of the size registry."""
    config = load_config(STAGE_CONFIGS[stage])
    if size == "tiny":
        return config
    section = REGISTRY[stage].section  # `tokenizer` or `model`
    sizes = GENERATOR_SIZES if REGISTRY[stage].is_generator else TOKENIZER_SIZES
    return dataclasses.replace(config, **{section: _resized(getattr(config, section), sizes, size)})


def _resized(current, registry: dict, size: str):
    tiny = registry["tiny"]
    overrides = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)
                 if getattr(current, f.name) != getattr(tiny, f.name)}
    return dataclasses.replace(registry[size], **overrides)


def random_generator_batch(layout: SequenceLayout, text: TextTokenizer, batch: int, rate: int = 1) -> dict[str, Any]:
    """Real captions (cycled), the fps token of `rate`, uniform random codes; the batch `GeneratorTask.batch` makes."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    captions = [all_captions()[i % len(all_captions())] for i in range(batch)]
    text_ids, text_pad = text.encode_batch(captions, layout.text_length)  # (B, L)
    codes = torch.randint(0, layout.codebook_size, (batch, layout.num_frames, *layout.grid), generator=generator)
    fps_ids = torch.full((batch,), text.fps_id(rate))
    return {"tokens": layout.assemble(text_ids, fps_ids, codes, text.boi_id), "text_pad": text_pad}


def build_generator_stage(stage: str, size: str, batch: int | None, text: TextTokenizer) -> StageSetup:
    config = stage_config(stage, size)
    batch = batch or config.train.micro_batch
    layout = generator_layout(size, stage, text.vocab_size)
    model = Generator(config.model, layout)
    if REGISTRY[stage].is_video:
        model.freeze_spatial()  # as GeneratorTask does after loading the image export
    module = GeneratorObjective(model, REGISTRY[stage], layout).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    data = random_generator_batch(layout, text, batch)
    return StageSetup(stage, module, parameters, data, config.train,
                      generator_step_flops(config.model, layout, stage, batch, data["text_pad"]),
                      {"tokens": batch * layout.seq_length}, sum(p.numel() for p in parameters))


def build_tokenizer_stage(size: str, batch: int | None) -> StageSetup:
    config = stage_config("tokenizer", size)
    batch = batch or config.train.micro_batch
    if config.tokenizer.perceptual_weight > 0 or config.tokenizer.disc_weight > 0:
        raise ValueError(f"{STAGE_CONFIGS['tokenizer']}: train_speed times the VQVAE alone, without a perceptual "
                         "network or a discriminator (their FLOPs are not counted); this config turns one on")
    model = VQVAE(config.tokenizer)
    module = TokenizerObjective(model, perceptual=None, discriminator=None).train()
    side = config.tokenizer.image_size
    frames = torch.rand(batch, 1, 3, side, side, generator=torch.Generator().manual_seed(DATA_SEED)) * 2 - 1
    parameters = [p for p in model.parameters() if p.requires_grad]
    return StageSetup("tokenizer", module, parameters, {"frames": frames}, config.train,
                      tokenizer_step_flops(model, batch), {"frames": batch, "pixels": batch * side * side},
                      sum(p.numel() for p in parameters))


def adamw(parameters: list[nn.Parameter], train: TrainConfig) -> torch.optim.AdamW:
    """The optimizer of `cogvideo_lite.train.engine.build_engine`: AdamW, no weight decay on vectors."""
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": train.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


def plain_step(setup: StageSetup) -> Callable[[], None]:
    optimizer = adamw(setup.parameters, setup.train)
    counter = iter(range(10**9))

    def step() -> None:
        loss = setup.module(setup.batch, next(counter)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def deepspeed_step(setup: StageSetup) -> Callable[[], None]:
    """The same step through the DeepSpeed engine that train.py uses (ZeRO-2, float32 on CPU)."""
    from cogvideo_lite.train import distributed
    from cogvideo_lite.train.engine import build_engine

    info = distributed.init_distributed()
    train = dataclasses.replace(setup.train, micro_batch=next(iter(setup.batch.values())).shape[0], grad_accum=1)
    engine, _, _ = build_engine(setup.module, setup.parameters, train, info.world_size, info.device)
    counter = iter(range(10**9))

    def step() -> None:
        loss = engine(setup.batch, next(counter)).loss
        engine.backward(loss)
        engine.step()

    return step


def result_row(setup: StageSetup, path: str, timing: Timing, matmul: dict[str, float]) -> dict[str, Any]:
    """Throughput and MFU by the wall clock, and the MFU by CPU time (step and matmul rate both in CPU seconds)."""
    step_time = timing.seconds
    row = {"stage": setup.name, "path": path, "batch": next(iter(setup.batch.values())).shape[0],
           "trainable": setup.parameter_count, "s/step": step_time, "cpu s/step": timing.cpu_seconds}
    if "tokens" in setup.units:
        row["tokens/s"] = setup.units["tokens"] / step_time
    else:
        row["frames/s"] = setup.units["frames"] / step_time
        row["Mpixels/s"] = setup.units["pixels"] / step_time / 1e6
    row["model GFLOP/step"] = setup.flops.model / 1e9
    row["GFLOP/s"] = setup.flops.model / step_time / 1e9
    row["MFU"] = setup.flops.model / step_time / matmul["wall"]
    row["useful MFU"] = setup.flops.useful_model / step_time / matmul["wall"]
    row["executed MFU"] = setup.flops.executed / step_time / matmul["wall"]
    row["MFU (cpu time)"] = setup.flops.model / timing.cpu_seconds / matmul["cpu"]
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], warmup=1, repeats=3)
    parser.add_argument("--size", default="tiny", choices=list(GENERATOR_SIZES))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--batch", type=int, default=None, help="micro-batch (default: the stage config's)")
    parser.add_argument("--deepspeed", action="store_true", help="also time the step through the DeepSpeed engine")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    matmul = {clock: measured_matmul_flops(args.threads, clock=clock) for clock in ("wall", "cpu")}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        text = build_text_tokenizer(Path(scratch))
        for stage in args.stages:
            setup = (build_generator_stage(stage, args.size, args.batch, text) if REGISTRY[stage].is_generator
                     else build_tokenizer_stage(args.size, args.batch))
            rows.append(result_row(setup, "torch", measure(plain_step(setup), args.warmup, args.repeats), matmul))
            if args.deepspeed:
                rows.append(result_row(setup, "deepspeed", measure(deepspeed_step(setup), args.warmup, args.repeats),
                                       matmul))
    notes = [f"matmul reference: float32 {REFERENCE_SIZE}^2 at {args.threads} thread(s) = {matmul['wall'] / 1e9:.1f} "
             f"GFLOP/s by the wall clock, {matmul['cpu'] / 1e9:.1f} per CPU-second, measured in this run",
             "MFU counts 6 FLOPs per weight per token (+3x attention) even for frozen weights; executed MFU counts "
             "4 for frozen weights (no weight gradient)"]
    return report("train_speed", f"training step, size {args.size} (median of {args.repeats})", rows, args.json,
                  {"size": args.size, "batch": args.batch, "warmup": args.warmup, "repeats": args.repeats,
                   "matmul_flops_per_second": matmul}, machine_info(), notes)


if __name__ == "__main__":
    main()
