"""Sampling speed: seconds for one full 33-frame video (frame 0, 5 key frames, 3 interpolation rounds, decode),
with and without the KV cache, at batch 1 and batch 8, and with an image expert joined to every frame loop.

    python -m bench.sample_speed [--size tiny] [--batches 1 8] [--expert-weight 0.3] [--uncached-rounds 3]
                                 [--threads 1] [--json OUT]

The bundle is random (built in seconds, no training): a real sentencepiece model on the built-in captions, a random
frame tokenizer, random generator stages of the registered size and a random image expert of the same size (a second
image stage), saved and loaded through `Pipeline.load` as `sample.py` does. Speed does not depend on the weight
values. A batch of B is B samples of one prompt in one `generate_videos` call (batch_size = B). The uncached path
reruns the whole sequence for every token; it is measured once at batch 1. The cached batches are timed again with
`--expert-weight` on the key frames and the in-betweens (0 skips those rows); `--uncached-rounds` below 3 measures a
shorter video (fewer frames), which the table shows in its `frames` column; nothing is extrapolated.
A per-step breakdown (frame 0, key frames, each round, decode) of the cached batch-1 video comes from timing the
same calls one by one.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import KEY_FRAMES, base_parser, generator_layout, machine_info, measure, report, set_threads
from bench.common import text_tokenizer as build_text_tokenizer
from cogvideo_lite.bundle.exports import load_image_model, save_stage
from cogvideo_lite.model.config import GENERATOR_SIZES
from cogvideo_lite.model.stages import IMAGE, VIDEO_STAGES
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.provenance import sha256_file
from cogvideo_lite.sample.generate import Sampler, generate_image, generate_keyframes, interpolate
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Pipeline, Request, decode_codes, generate_videos
from tokenizer.config import TOKENIZER_SIZES
from tokenizer.io import WEIGHTS_FILE, save_tokenizer
from tokenizer.model import VQVAE

PROMPT = "a red circle moves left slowly"
KEY_RATE = 1  # CogVideo's hierarchy: key frames at 1 fps, then 2, 4 and 8 fps
FULL_ROUNDS = 3  # 5 -> 9 -> 17 -> 33 frames
KNOBS = SamplingKnobs()  # temperature 1, no top-k / top-p, no guidance, no expert


def frames_after(rounds: int) -> int:
    return (KEY_FRAMES - 1) * 2**rounds + 1


def build_random_bundle(root: Path, size: str) -> Path:
    """Write tokenizer/, text/, image/, keyframe/, interpolate/ and expert/ of random weights at `size` into `root`."""
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
        model.initialise_temporal_from_spatial()
        save_stage(model, root / stage.name, stage, json.loads(json.dumps(contracts)), image_dir=root / "image")
    return root


def video(pipeline: Pipeline, batch: int, rounds: int, use_cache: bool, knobs: SamplingKnobs = KNOBS) -> None:
    generate_videos(pipeline, Request([PROMPT], KEY_RATE, rounds, num_samples=batch), knobs, batch_size=batch,
                    use_cache=use_cache, progress=False)


def breakdown(pipeline: Pipeline) -> dict[str, float]:
    """Seconds of each step of one cached batch-1 video, run one by one with the pipeline's models."""
    condition = pipeline.condition([PROMPT], KEY_RATE)  # (1, L)
    seconds: dict[str, float] = {}

    def timed(name: str, call):
        start = time.perf_counter()
        out = call()
        seconds[name] = time.perf_counter() - start
        return out

    first = timed("frame 0", lambda: generate_image(pipeline.image, condition, Sampler(KNOBS, 0)))
    codes = timed("key frames", lambda: generate_keyframes(pipeline.keyframe, condition, first, Sampler(KNOBS, 1)))
    for round_index in range(FULL_ROUNDS):
        rate = condition.with_rate(pipeline.text.fps_id(KEY_RATE * 2 ** (round_index + 1)))
        codes = timed(f"round {round_index + 1}", lambda: interpolate(pipeline.interpolate, rate, codes,
                                                                      Sampler(KNOBS, 2 + round_index)))
    timed("decode", lambda: decode_codes(pipeline, codes))
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], warmup=1, repeats=2)
    parser.add_argument("--size", default="tiny", choices=list(GENERATOR_SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="cached batch sizes")
    parser.add_argument("--expert-weight", type=float, default=0.3,
                        help="weight of the image expert in the expert rows (0: no expert rows)")
    parser.add_argument("--uncached-rounds", type=int, default=0, choices=range(FULL_ROUNDS + 1),
                        help="interpolation rounds of the uncached batch-1 video (3 = the full 33 frames; slow)")
    parser.add_argument("--uncached-repeats", type=int, default=1, help="timed runs of the uncached video")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = Pipeline.load(build_random_bundle(Path(scratch), args.size))
        with_expert = SamplingKnobs(expert_weight=args.expert_weight)
        cases = [(batch, FULL_ROUNDS, True, args.warmup, args.repeats, KNOBS) for batch in args.batches]
        if args.expert_weight > 0:
            cases += [(batch, FULL_ROUNDS, True, args.warmup, args.repeats, with_expert) for batch in args.batches]
        cases.append((1, args.uncached_rounds, False, 0, args.uncached_repeats, KNOBS))
        for batch, rounds, use_cache, warmup, repeats, knobs in cases:
            timing = measure(lambda: video(pipeline, batch, rounds, use_cache, knobs), warmup, repeats)
            rows.append({"cache": "yes" if use_cache else "no", "expert": knobs.expert_weight, "batch": batch,
                         "frames": frames_after(rounds),
                         "repeats": repeats, "s/call": timing.seconds, "s/video": timing.seconds / batch,
                         "CPU s/call": timing.cpu_seconds})
        steps = breakdown(pipeline)
    notes = [f"size {args.size}; one prompt, B samples per call; cached batch-1 breakdown (s): "
             + ", ".join(f"{name} {value:.2f}" for name, value in steps.items())]
    return report("sample_speed", "one video from the prompt (median of repeats)", rows, args.json,
                  {"size": args.size, "batches": args.batches, "expert_weight": args.expert_weight,
                   "uncached_rounds": args.uncached_rounds,
                   "warmup": args.warmup, "repeats": args.repeats, "breakdown_seconds": steps},
                  machine_info(), notes)


if __name__ == "__main__":
    main()
