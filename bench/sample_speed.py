"""Sampling speed per decode mode: passes and seconds for one 33-frame video (frame 0, 4 key frames, 3 interpolation
rounds, decode), cached at batch 1 and 8 (with and without an image expert), uncached at batch 1, and the cost per code
beside Hugging Face GPT-2's `generate` with a static cache at the same shape.

    python -m bench.sample_speed [--size tiny] [--device cpu] [--modes sequential exact diagonal-2-2]
                                 [--window F R C] [--batches 1 8] [--expert-weight 0.3] [--uncached-rounds 0]
                                 [--no-graphs] [--fp32] [--threads 1] [--json OUT]

The bundle is random (built in seconds, no training): a real sentencepiece model on the built-in captions, a random
frame tokenizer, random generator stages of the registered size (`--window`: the video stages with that temporal
window, which the exact mode turns into fewer passes) and a random image expert of the same size, saved and loaded
through `Pipeline.load` as `sample.py` does (bfloat16 generators on a GPU unless `--fp32`; cached passes replayed as
CUDA graphs unless `--no-graphs`). Speed does not depend on the weight values. A batch of B is B samples of one prompt
in one `generate_videos` call (batch_size = B).

Passes per video are the decoding passes of the mode's schedules (`sample/schedule.py`): frame 0, the key frames and
each round, plus one prefill per call, not counted. Uncached decoding (the whole sequence rerun every pass) is timed for
the exact modes at batch 1 on `--uncached-rounds` rounds (0: the key frames only; nothing is extrapolated).

Per code: `generate_keyframes` of 4 frames after a given frame 0 (batch 1, no expert) in each mode, against GPT-2
(`GPT2LMHeadModel`, random weights, our width, depth, heads and code vocabulary, PyTorch SDPA) generating the same
number of tokens after a prompt of the same length, with `cache_implementation="static"` (and the dynamic cache, for
reference; left out where transformers is not installed). One of our layers costs 16 D^2 weight FLOPs per token
against GPT-2's 12 D^2 (`FLOP ratio`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import (KEY_FRAMES, base_parser, generator_layout, machine_info, measure, report, set_threads,
                          write_json)
from bench.common import text_tokenizer as build_text_tokenizer
from bench.peer_gpt2 import build_gpt2
from cogvideo_lite.bundle.exports import load_image_model, save_stage
from cogvideo_lite.model.config import GENERATOR_SIZES
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, VIDEO_STAGES
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.provenance import sha256_file
from cogvideo_lite.sample.generate import Condition, Sampler, generate_image, generate_keyframes, interpolate
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Pipeline, Request, decode_codes, generate_videos
from cogvideo_lite.sample.schedule import parse_mode, schedule
from tokenizer.config import TOKENIZER_SIZES
from tokenizer.io import WEIGHTS_FILE, save_tokenizer
from tokenizer.model import VQVAE

PROMPT = "a red circle moves left slowly"
KEY_RATE = 1  # CogVideo's hierarchy: key frames at 1 fps, then 2, 4 and 8 fps
FULL_ROUNDS = 3  # 5 -> 9 -> 17 -> 33 frames
KNOBS = SamplingKnobs()  # temperature 1, no top-k / top-p, no guidance, no expert; exact decoding
MODES = ("sequential", "exact", "diagonal-2-2", "diagonal-4-2")
GIVEN_FRAMES = 1  # the per-code comparison: key frames after a given frame 0


def frames_after(rounds: int) -> int:
    return (KEY_FRAMES - 1) * 2**rounds + 1


def build_random_bundle(root: Path, size: str, window: tuple[int, int, int] | None = None) -> Path:
    """Write tokenizer/, text/, image/, keyframe/, interpolate/ and expert/ of random weights at `size` into `root`;
    the video stages with temporal `window`."""
    root = Path(root)
    text = build_text_tokenizer(root / "text")
    tokenizer_config = TOKENIZER_SIZES[size]
    save_tokenizer(VQVAE(tokenizer_config).eval(), root / "tokenizer")
    contracts = {"text": text.spec, "rates": list(text.rates),
                 "frame_tokenizer": {"config": tokenizer_config.to_dict(),
                                     "weights_sha256": sha256_file(root / "tokenizer" / WEIGHTS_FILE)}}
    layout = generator_layout(size, "image", text.vocab_size)
    image = Generator(GENERATOR_SIZES[size], layout).eval()
    save_stage(image, root / "image", IMAGE, json.loads(json.dumps(contracts)))
    expert = Generator(GENERATOR_SIZES[size], layout).eval()  # other random weights, the same contracts
    save_stage(expert, root / "expert", IMAGE, json.loads(json.dumps(contracts)))
    for stage in VIDEO_STAGES:
        model, _ = load_image_model(root / "image")
        model.layout = layout.with_frames(KEY_FRAMES)
        model.config = replace(model.config, temporal_window=window)
        model.initialise_temporal_from_spatial()
        save_stage(model, root / stage.name, stage, json.loads(json.dumps(contracts)), image_dir=root / "image")
    return root


def video(pipeline: Pipeline, batch: int, rounds: int, use_cache: bool, knobs: SamplingKnobs = KNOBS) -> None:
    generate_videos(pipeline, Request([PROMPT], KEY_RATE, rounds, num_samples=batch), knobs, batch_size=batch,
                    use_cache=use_cache, progress=False)


def video_passes(pipeline: Pipeline, mode: str, rounds: int) -> int:
    """Decoding passes of one video in `mode`: frame 0 (image model, unless the key-frame model makes it), the key
    frames and each interpolation round (prefills not counted)."""
    decode = parse_mode(mode)
    keyframe, between = pipeline.keyframe, pipeline.interpolate
    passes = 0 if pipeline.keyframe_makes_first_frame else len(
        schedule(pipeline.image.layout, IMAGE, None, 0, decode).passes)
    passes += len(schedule(keyframe.layout, KEYFRAME, keyframe.config.temporal_window,
                           0 if pipeline.keyframe_makes_first_frame else 1, decode).passes)
    given = len(INTERPOLATE.plan(between.layout).given_slots)
    return passes + rounds * len(schedule(between.layout, INTERPOLATE, between.config.temporal_window, given,
                                          decode).passes)


def breakdown(pipeline: Pipeline, knobs: SamplingKnobs, sync) -> dict[str, float]:
    """Seconds of each step of one cached batch-1 video, run one by one with the pipeline's models."""
    condition = pipeline.condition([PROMPT], KEY_RATE)  # (1, L)
    seconds: dict[str, float] = {}

    def timed(name: str, call):
        start = time.perf_counter()
        out = call()
        sync()
        seconds[name] = time.perf_counter() - start
        return out

    first = timed("frame 0", lambda: generate_image(pipeline.image, condition, Sampler(knobs, 0)))
    codes = timed("key frames", lambda: generate_keyframes(pipeline.keyframe, condition, first, Sampler(knobs, 1)))
    for round_index in range(FULL_ROUNDS):
        rate = condition.with_rate(pipeline.text.fps_id(KEY_RATE * 2 ** (round_index + 1)))
        codes = timed(f"round {round_index + 1}", lambda: interpolate(pipeline.interpolate, rate, codes,
                                                                      Sampler(knobs, 2 + round_index)))
    timed("decode", lambda: decode_codes(pipeline, codes))
    return seconds


def per_code_rows(pipeline: Pipeline, modes: list[str], warmup: int, repeats: int, sync,
                  cuda_graphs: bool) -> list[dict[str, Any]]:
    """Seconds per code of 4 key frames after a given frame 0, ours per mode and GPT-2 at the same shape."""
    model, layout = pipeline.keyframe, pipeline.keyframe.layout
    new_tokens = (KEY_FRAMES - GIVEN_FRAMES) * layout.tokens_per_frame
    prompt_length = layout.prefix_length + GIVEN_FRAMES * layout.slot_length
    condition = pipeline.condition([PROMPT], KEY_RATE)
    first = torch.zeros(1, GIVEN_FRAMES, *layout.grid, dtype=torch.long, device=pipeline.device)
    config = model.config
    flop_ratio = (16 * config.dim**2 * config.depth + config.dim * layout.codebook_size) / (
        12 * config.dim**2 * config.depth + config.dim * layout.codebook_size)
    rows, reference = [], None
    try:
        gpt2 = build_gpt2(config, layout).eval().to(pipeline.device, next(model.parameters()).dtype)
    except ImportError:  # the `bench` extra (transformers) is not installed: our rows alone
        gpt2, reference = None, float("nan")
    prompt = torch.randint(0, layout.codebook_size, (1, prompt_length), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(pipeline.device)
    for cache in ("static", "dynamic") if gpt2 is not None else ():
        with torch.no_grad():
            timing = measure(lambda: gpt2.generate(
                prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=None, top_p=None,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                **({"cache_implementation": "static"} if cache == "static" else {})), warmup, repeats, sync)
        reference = reference or timing.seconds / new_tokens
        rows.append({"model": f"GPT-2, {cache} cache", "codes": new_tokens, "passes": new_tokens,
                     "s": timing.seconds, "ms/code": 1e3 * timing.seconds / new_tokens,
                     "time ratio": timing.seconds / new_tokens / reference, "FLOP ratio": 1.0})
    for mode in modes:
        sampler = Sampler(replace(KNOBS, decode=mode), cuda_graphs=cuda_graphs)
        timing = measure(lambda: generate_keyframes(model, condition, first, sampler), warmup, repeats, sync)
        passes = len(schedule(layout, KEYFRAME, config.temporal_window, GIVEN_FRAMES, parse_mode(mode)).passes)
        rows.append({"model": f"ours, key-frame stage, {mode}", "codes": new_tokens, "passes": passes,
                     "s": timing.seconds, "ms/code": 1e3 * timing.seconds / new_tokens,
                     "time ratio": timing.seconds / new_tokens / reference, "FLOP ratio": flop_ratio})
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__.splitlines()[0], warmup=1, repeats=2)
    parser.add_argument("--size", default="tiny", choices=list(GENERATOR_SIZES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--modes", nargs="+", default=list(MODES), help="decode modes to time")
    parser.add_argument("--window", type=int, nargs=3, metavar=("F", "R", "C"),
                        help="temporal window (frames, rows, cols radii) of the video stages (default: none)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="cached batch sizes")
    parser.add_argument("--expert-weight", type=float, default=0.3,
                        help="weight of the image expert in the expert rows (0: no expert rows)")
    parser.add_argument("--uncached-rounds", type=int, default=0, choices=range(FULL_ROUNDS + 1),
                        help="interpolation rounds of the uncached batch-1 video (3 = the full 33 frames; slow)")
    parser.add_argument("--uncached-repeats", type=int, default=1, help="timed runs of the uncached video")
    parser.add_argument("--no-graphs", action="store_true", help="on a GPU, decode eagerly (no CUDA graphs)")
    parser.add_argument("--fp32", action="store_true", help="on a GPU, float32 generators (default bfloat16)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    for mode in args.modes:
        parse_mode(mode)  # a bad mode fails before anything is built
    set_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    graphs = not args.no_graphs
    window = tuple(args.window) if args.window else None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = Pipeline.load(build_random_bundle(Path(scratch), args.size, window), device,
                                 torch.float32 if args.fp32 else None)
        pipeline.cuda_graphs = graphs
        for mode in args.modes:
            knobs = replace(KNOBS, decode=mode)
            cases = [(batch, FULL_ROUNDS, True, args.warmup, args.repeats, knobs) for batch in args.batches]
            if args.expert_weight > 0:
                cases += [(batch, FULL_ROUNDS, True, args.warmup, args.repeats,
                           replace(knobs, expert_weight=args.expert_weight)) for batch in args.batches]
            if parse_mode(mode).is_exact:
                cases.append((1, args.uncached_rounds, False, 0, args.uncached_repeats, knobs))
            for batch, rounds, use_cache, warmup, repeats, case in cases:
                timing = measure(lambda: video(pipeline, batch, rounds, use_cache, case), warmup, repeats,
                                 sync)
                rows.append({"mode": mode, "cache": "yes" if use_cache else "no", "expert": case.expert_weight,
                             "batch": batch, "frames": frames_after(rounds),
                             "passes": video_passes(pipeline, mode, rounds), "repeats": repeats,
                             "s/call": timing.seconds, "s/video": timing.seconds / batch,
                             "CPU s/call": timing.cpu_seconds})
        steps = breakdown(pipeline, replace(KNOBS, decode=args.modes[0]), sync)
        peers = per_code_rows(pipeline, args.modes, args.warmup, args.repeats, sync, graphs)
    dtype = str(next(pipeline.keyframe.parameters()).dtype).removeprefix("torch.")
    graphed = ", CUDA graphs" if graphs and device.type == "cuda" else ""
    notes = [f"size {args.size} on {device} ({dtype} generators{graphed}), temporal window {window}; one prompt, B "
             "samples per call; passes: decoding passes per video (one prefill per call besides)",
             f"cached batch-1 breakdown in mode {args.modes[0]} (s): "
             + ", ".join(f"{name} {value:.2f}" for name, value in steps.items())]
    record = report("sample_speed", "one video from the prompt (median of repeats)", rows, None,
                    {"size": args.size, "device": args.device, "modes": args.modes, "window": window,
                     "batches": args.batches, "expert_weight": args.expert_weight,
                     "uncached_rounds": args.uncached_rounds, "cuda_graphs": graphs, "dtype": dtype,
                     "warmup": args.warmup, "repeats": args.repeats, "breakdown_seconds": steps},
                    machine_info(), notes)
    peer = report("sample_speed_per_code", f"per code: {KEY_FRAMES - GIVEN_FRAMES} key frames after frame 0, batch 1",
                  peers, None, {}, machine_info())
    record["per_code"] = peer["rows"]
    write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
