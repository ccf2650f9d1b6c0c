"""Our key-frame generator beside Hugging Face GPT-2 of the same width, depth, heads and sequence length.

    python -m bench.peer_gpt2 [--sizes tiny small] [--batch tiny=4 small=1] [--threads 1] [--json OUT]

Both are random-weight models, timed in one process on one machine:
- training step (forward, backward, AdamW step, zero_grad) on a (B, S) sequence, S = our key-frame sequence;
  ours as the key-frame stage trains it (spatial channel frozen; attention "auto", which skips the key blocks a slot
  cannot see on CPU, and again with the dense reference attention) and with every weight trained, GPT-2 with
  every weight trained (`GPT2LMHeadModel`, `labels` = inputs);
- KV-cached generation of the same number of new tokens (4 frames of codes) after the same prompt length (prefix and
  frame 0): ours through `generate_keyframes`, GPT-2 through `generate(do_sample=True)`, both plain sampling.
GPT-2 gets our code head's output size as its vocabulary, exact GELU, no dropout, PyTorch's fused attention.

What a fair ratio is: one of our layers runs two attentions (spatial and temporal) and two extra projections, so a
forward costs 16 D^2 weight FLOPs per token and layer against GPT-2's 12 D^2, plus a second attention.
The `FLOP ratio` column divides our model FLOPs by GPT-2's for the same step (counted as in `bench.train_speed`);
`time / FLOP ratio` is the time ratio over the FLOP ratio: 1 means we run as fast per FLOP as GPT-2, above 1 slower.
The `useful` columns count attention over the pairs the masks allow only (GPT-2: the causal half; ours: a fifth of the
spatial channel's pairs and half of the temporal one's at `small`), which is what a kernel that skips masked work must
at least compute. With `--json OUT` the record also holds, per size, `time_per_flop_ratio` (time per useful FLOP of
the key-frame stage's step over GPT-2's), `cpu_time_per_flop_ratio` (the same by CPU seconds) and
`time_per_dense_flop_ratio`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import (KEY_FRAMES, Timing, base_parser, generator_layout, machine_info, measure, report,
                          set_threads, write_json)
from bench.common import text_tokenizer as build_text_tokenizer
from bench.train_speed import adamw, generator_step_flops, linear_flops, random_generator_batch
from cogvideo_lite.train.config import TrainConfig
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.config import GENERATOR_SIZES, GeneratorConfig
from cogvideo_lite.model.stages import KEYFRAME
from cogvideo_lite.sample.generate import Condition, Sampler, generate_keyframes
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.train.generator_task import GeneratorObjective

DEFAULT_BATCH = {"tiny": 4, "small": 1, "base": 1}
# What the record says per size, from the key-frame stage's training step as train.py runs it (attention "auto"):
HEADLINE = {"time_per_flop_ratio": "time / useful FLOP ratio",
            "cpu_time_per_flop_ratio": "cpu time / useful FLOP ratio",
            "time_per_dense_flop_ratio": "time / FLOP ratio"}
GIVEN_FRAMES = 1  # the key-frame stage's prompt: prefix and frame 0


def gpt2_step_flops(config: GeneratorConfig, sequence: int, vocabulary: int, batch: int, causal: bool = False) -> float:
    """Model FLOPs of one GPT-2 training step (3 x forward), counted like ours: matmuls, and attention over every
    query-key pair (dense), or with `causal` over the pairs its causal mask allows (useful)."""
    dim, hidden = config.dim, int(config.dim * config.mlp_ratio)
    pairs = sequence * (sequence + 1) // 2 if causal else sequence * sequence
    layer = (linear_flops(sequence, dim, 3 * dim) + linear_flops(sequence, dim, dim)
             + linear_flops(sequence, dim, hidden) + linear_flops(sequence, hidden, dim) + 4.0 * pairs * dim)
    return 3.0 * batch * (config.depth * layer + linear_flops(sequence, dim, vocabulary))


def build_gpt2(config: GeneratorConfig, layout: SequenceLayout):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2_config = GPT2Config(vocab_size=layout.codebook_size, n_positions=layout.seq_length, n_embd=config.dim,
                             n_layer=config.depth, n_head=config.heads, n_inner=int(config.dim * config.mlp_ratio),
                             activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             bos_token_id=None, eos_token_id=None)
    gpt2_config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(gpt2_config)


def training_step(forward: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        forward().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def compare_size(size: str, batch: int, text, warmup: int, repeats: int) -> list[dict[str, Any]]:
    config = GENERATOR_SIZES[size]
    layout = generator_layout(size, KEYFRAME.name, text.vocab_size)
    train = TrainConfig()
    sequence = layout.seq_length
    gpt2 = build_gpt2(config, layout).train()
    ids = torch.randint(0, layout.codebook_size, (batch, sequence), generator=torch.Generator().manual_seed(0))
    data = random_generator_batch(layout, text, batch)
    gpt2_timing = measure(training_step(lambda: gpt2(input_ids=ids, labels=ids).loss,
                                        adamw(list(gpt2.parameters()), train)), warmup, repeats)
    gpt2_flops = {"dense": gpt2_step_flops(config, sequence, layout.codebook_size, batch),
                  "useful": gpt2_step_flops(config, sequence, layout.codebook_size, batch, causal=True)}
    common = {"size": size, "task": "train step", "batch": batch, "S": sequence}
    rows = [{**common, "model": "GPT-2", "attention": "sdpa causal", "s": gpt2_timing.seconds,
             "cpu s": gpt2_timing.cpu_seconds}]
    for label, frozen, attention in (("ours, key-frame stage", True, "auto"),
                                     ("ours, key-frame stage", True, "dense"),
                                     ("ours, all weights trained", False, "auto")):
        model = Generator(config, layout)
        model.attention = attention
        if frozen:
            model.freeze_spatial()
        module = GeneratorObjective(model, KEYFRAME, layout).train()
        timing = measure(training_step(lambda: module(data, 0).loss,
                                       adamw([p for p in model.parameters() if p.requires_grad], train)),
                         warmup, repeats)
        flops = generator_step_flops(config, layout, KEYFRAME.name, batch, data["text_pad"])
        ours = {"dense": flops.executed if frozen else flops.model,
                "useful": flops.useful_executed if frozen else flops.useful_model}
        rows.append({**common, "model": label, "attention": attention, "s": timing.seconds,
                     "cpu s": timing.cpu_seconds, **ratios(timing, gpt2_timing, ours, gpt2_flops)})
    rows += compare_generation(size, config, layout, text, warmup, repeats)
    return rows


def ratios(ours: Timing, gpt2: Timing, our_flops: dict[str, float], gpt2_flops: dict[str, float]) -> dict[str, float]:
    """Ours over GPT-2: time, FLOPs and time per FLOP, with FLOPs counted dense and useful (unmasked pairs only);
    the time per useful FLOP also by CPU seconds, which keeps most of the waiting for a core out on a shared machine."""
    time_ratio = ours.seconds / gpt2.seconds
    dense, useful = (our_flops[kind] / gpt2_flops[kind] for kind in ("dense", "useful"))
    return {"time ratio": time_ratio, "FLOP ratio": dense, "time / FLOP ratio": time_ratio / dense,
            "useful FLOP ratio": useful, "time / useful FLOP ratio": time_ratio / useful,
            "cpu time / useful FLOP ratio": ours.cpu_seconds / gpt2.cpu_seconds / useful}


def compare_generation(size: str, config: GeneratorConfig, layout: SequenceLayout, text, warmup: int,
                       repeats: int) -> list[dict[str, Any]]:
    """Batch-1 cached generation of the codes of KEY_FRAMES - 1 frames after the prefix and frame 0."""
    new_tokens = (KEY_FRAMES - GIVEN_FRAMES) * layout.tokens_per_frame
    prompt_length = layout.prefix_length + GIVEN_FRAMES * layout.slot_length
    model = Generator(config, layout).eval()
    data = random_generator_batch(layout, text, 1)
    condition = Condition(data["tokens"][:, :layout.text_length], data["text_pad"],
                          data["tokens"][:, layout.fps_position], text.boi_id)
    first = layout.extract_codes(data["tokens"])[:, :GIVEN_FRAMES]  # (1, 1, h, w)
    with torch.no_grad():
        ours = measure(lambda: generate_keyframes(model, condition, first, Sampler(SamplingKnobs())), warmup, repeats)
    gpt2 = build_gpt2(config, layout).eval()
    prompt = torch.randint(0, layout.codebook_size, (1, prompt_length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = measure(lambda: gpt2.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                               top_k=None, top_p=None, max_new_tokens=new_tokens,
                                               min_new_tokens=new_tokens, use_cache=True, pad_token_id=0),
                         warmup, repeats)
    weight_ratio = (16 * config.dim**2 * config.depth + config.dim * layout.codebook_size) / (
        12 * config.dim**2 * config.depth + config.dim * layout.codebook_size)
    common = {"size": size, "task": f"generate {new_tokens} tokens", "batch": 1, "S": layout.seq_length}
    return [{**common, "model": "GPT-2", "s": theirs.seconds, "time ratio": 1.0, "FLOP ratio": 1.0,
             "time / FLOP ratio": 1.0},
            {**common, "model": "ours, key-frame stage", "s": ours.seconds, "time ratio": ours.seconds / theirs.seconds,
             "FLOP ratio": weight_ratio, "time / FLOP ratio": ours.seconds / theirs.seconds / weight_ratio}]


def parse_batches(items: list[str]) -> dict[str, int]:
    batches = dict(DEFAULT_BATCH)
    for item in items:
        size, _, value = item.partition("=")
        if size not in GENERATOR_SIZES or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"--batch {item!r}: expected SIZE=N with SIZE one of "
                                             f"{tuple(GENERATOR_SIZES)} and N >= 1")
        batches[size] = int(value)
    return batches


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], warmup=1, repeats=2)
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=list(GENERATOR_SIZES))
    parser.add_argument("--batch", nargs="*", default=[], metavar="SIZE=N", help="training batch per size")
    args = parser.parse_args(argv)
    batches = parse_batches(args.batch)
    set_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        text = build_text_tokenizer(Path(scratch))
        for size in args.sizes:
            rows += compare_size(size, batches[size], text, args.warmup, args.repeats)
    import transformers

    notes = [f"transformers {transformers.__version__}; ratios are ours / GPT-2; the generation FLOP ratio is the "
             "per-token weight FLOP ratio (16 D^2 vs 12 D^2 per layer, plus the head)",
             "our key-frame stage trains only the temporal channel: its FLOP ratio uses executed FLOPs "
             "(frozen weights get no weight gradient)",
             "useful FLOPs count attention over the pairs the masks allow (GPT-2: causal), dense over every pair"]
    record = report("peer_gpt2", f"ours vs GPT-2 (median of {args.repeats})", rows, None,
                    {"sizes": args.sizes, "batches": {s: batches[s] for s in args.sizes}, "warmup": args.warmup,
                     "repeats": args.repeats, "transformers": transformers.__version__}, machine_info(), notes)
    headline = [row for row in rows if row["task"] == "train step" and row["model"] == "ours, key-frame stage"
                and row["attention"] == "auto"]
    for key, column in HEADLINE.items():
        record[key] = {row["size"]: row[column] for row in headline}
        print(f"  {key}: " + ", ".join(f"{size} {value:.3f}" for size, value in record[key].items()))
    write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
