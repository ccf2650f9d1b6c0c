"""Evaluate a sampling bundle on the built-in shapes grammar:

    python -m cogvideo_lite.evaluate shapes --ckpt BUNDLE [--prompts FILE] [--seeds 2] [--seed 0] [--rounds N]
        [--batch-size 32] [--temperature/--top-k/--top-p/--cfg ...] [--reference DATASET [--reference-clips N]]
        [--round-trip] [--i3d PATH] [--inception PATH] [--json OUT] [--device auto]
    python -m cogvideo_lite.evaluate first-frames --ckpt BUNDLE [--image DIR] [--seeds 2] [--top-k 20] [--json OUT]
    python -m cogvideo_lite.evaluate stages --ckpt BUNDLE --shards DIR [--count 24] [--top-k 1] [--starts 28]
        [--seed 0] [--json OUT]

`shapes` generates `--seeds` videos per prompt (default prompts: all 168 captions of the grammar) with the pipeline,
key frames at the bundle's lowest rate r and `--rounds` interpolation rounds (default: as many as the rates allow), the
same prompts and seeds with key frames at 2r where the rate set has it (key frames only: they do not depend on the
number of rounds), and measures them (`shapes.py`). `--reference DATASET` measures the ground-truth clips of a
built-in dataset folder read the same way (resized to the bundle's frame size), a clip that cannot be used skipped
with a warning naming it; with a reference, `--i3d` / `--inception` add FVD / frame FID between the generated videos
and the reference clips (local TorchScript files only, `frechet.py`), and `--round-trip` measures the reference clips
after the bundle's tokenizer has encoded and decoded them: what a generator with that tokenizer could show at best.
Without `--ckpt` only the reference is measured (rates DEFAULT_RATES, REFERENCE_KEY_FRAMES key frames). Prints a
table; `--json` writes every number, the counts and the arguments.

`first-frames` and `stages` probe single stages (`probes.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from cogvideo_lite import cli
from cogvideo_lite.data.captions import find_captions_file
from cogvideo_lite.data.shapes import all_captions, parse_caption
from cogvideo_lite.evaluate import probes
from cogvideo_lite.evaluate.frechet import fid, fvd, load_feature_network
from cogvideo_lite.evaluate.shapes import (IDEAL, REFERENCE_KEY_FRAMES, ReferenceClip, evaluate_videos, read_reference,
                                           round_trip)
from cogvideo_lite.prepare.shards import TokenShards
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Pipeline, Request, generate_videos
from cogvideo_lite.text import DEFAULT_RATES

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cogvideo_lite.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    shapes = modes.add_parser("shapes", help="the whole chain on the shapes grammar, beside the reference clips")
    shapes.add_argument("--ckpt", type=Path, help="sampling bundle (python -m cogvideo_lite.bundle)")
    shapes.add_argument("--reference", type=Path, help="built-in dataset folder whose ground-truth clips to measure")
    shapes.add_argument("--prompts", type=Path, help="file with one grammar caption per line (default: all 168)")
    shapes.add_argument("--seeds", type=int, default=2, help="videos per prompt")
    shapes.add_argument("--seed", type=int, default=0, help="random seed of the pipeline")
    shapes.add_argument("--rounds", type=int, help="interpolation rounds (default: as many as the rates allow)")
    shapes.add_argument("--batch-size", type=int, default=32, help="(prompt, sample) pairs generated together")
    shapes.add_argument("--reference-clips", type=int, help="reference clips to read (default: prompts x seeds)")
    shapes.add_argument("--round-trip", action="store_true",
                        help="measure the reference clips encoded (as the key-frame stage's shards were) and decoded "
                             "by the bundle's tokenizer: the best a generator with it can show")
    cli.add_sampling_arguments(shapes)
    shapes.add_argument("--i3d", type=Path, help="I3D TorchScript file for FVD (needs --ckpt and --reference)")
    shapes.add_argument("--inception", type=Path, help="Inception TorchScript file for FID (needs both too)")
    first = modes.add_parser("first-frames", help="per captioned shape, how often frame 0 shows it")
    first.add_argument("--image", type=Path, help="an image export to probe instead of the bundle's (same "
                       "tokenizer, text model and layout)")
    first.add_argument("--seeds", type=int, default=2)
    stages = modes.add_parser("stages", help="key frames from a true frame 0, in-betweens of true key frames")
    stages.add_argument("--shards", type=Path, required=True, help="token shards of the shapes dataset")
    stages.add_argument("--count", type=int, default=24, help="shard samples at the lowest rate")
    stages.add_argument("--starts", type=int, default=28, help="captions for the first-frame check (0: skip)")
    stages.add_argument("--seed", type=int, default=0)
    losses = modes.add_parser("losses", help="a stage export's loss on token shards (training against held-out)")
    losses.add_argument("--export", type=Path, required=True, help="an image, key-frame or interpolation export")
    losses.add_argument("--image", type=Path, help="the image export a video stage extends (default: the one it names)")
    losses.add_argument("--shards", type=Path, nargs="+", required=True, help="token-shard folders to measure it on")
    losses.add_argument("--samples", type=int, default=256, help="examples per shard folder")
    losses.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    for mode, top_k in ((first, 20), (stages, 1)):
        mode.add_argument("--ckpt", type=Path, required=True, help="sampling bundle")
        mode.add_argument("--top-k", type=int, default=top_k)
        mode.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    for mode in (shapes, first, stages, losses):
        mode.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging()
    cli.require_at_least(parser, args, seeds=1, batch_size=1, reference_clips=1, seed=0, top_k=1, count=1, starts=0,
                         samples=1)
    if args.mode == "shapes":
        return shapes(parser, args)
    if args.mode == "losses":
        with cli.user_errors(parser, OSError, ValueError, prefix="losses"):
            result = probes.stage_losses(args.export, args.image, args.shards, args.samples,
                                         str(cli.device(parser, args.device)))
        print(json.dumps(result, indent=2))
        cli.write_json(args.json, result)
        return result
    pipeline = cli.load_pipeline(parser, args.ckpt, args.device)
    knobs = SamplingKnobs(top_k=args.top_k)
    if args.mode == "first-frames":
        if args.image is not None:
            with cli.user_errors(parser, prefix=f"--image {args.image}"):
                probes.swap_image_model(pipeline, args.image)
        result = {"ckpt": str(args.ckpt), "image": args.image and str(args.image), "seeds": args.seeds,
                  "top_k": args.top_k, **probes.first_frame_shapes(pipeline, knobs, args.seeds)}
    else:
        with cli.user_errors(parser, prefix=f"--shards {args.shards}"):
            shards = TokenShards(args.shards)
        result = {"ckpt": str(args.ckpt), **probes.stage_probe(pipeline, shards, knobs, args.count, args.seed)}
        if args.starts:
            result["first_frames"] = probes.first_frame_starts(pipeline, args.starts, args.seed)
    print(json.dumps(result, indent=2))
    cli.write_json(args.json, result)
    return result


# ----------------------------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------------------------

def read_prompts(parser: argparse.ArgumentParser, path: Path | None) -> list[str]:
    """The grammar captions of --prompts (each checked), or all of them."""
    if path is None:
        return all_captions()
    prompts = []
    for where, line in cli.prompt_lines(parser, path):
        with cli.user_errors(parser, ValueError, prefix=where):
            parse_caption(line)
        prompts.append(line)
    return prompts


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.ckpt is None and args.reference is None:
        parser.error("nothing to evaluate: give --ckpt BUNDLE, --reference DATASET, or both")
    if args.reference is not None and not args.reference.is_dir():
        parser.error(f"--reference {args.reference}: no such directory; give a dataset folder with captions.jsonl")
    if args.reference is not None:
        with cli.user_errors(parser, FileNotFoundError, ValueError, prefix="--reference"):
            find_captions_file(args.reference)
    if args.round_trip and (args.ckpt is None or args.reference is None):
        parser.error("--round-trip passes reference clips through the bundle's tokenizer: give --ckpt and --reference")
    for flag, path in (("--i3d", args.i3d), ("--inception", args.inception)):
        if path is not None and (args.ckpt is None or args.reference is None):
            parser.error(f"{flag} compares generated videos with reference clips: give --ckpt and --reference too")
        if path is not None and not path.is_file():
            parser.error(f"{flag} {path}: no such file; give the local TorchScript weights (nothing is downloaded)")


def shapes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    check_arguments(parser, args)
    prompts = read_prompts(parser, args.prompts)
    pipeline = None if args.ckpt is None else cli.load_pipeline(parser, args.ckpt, args.device)
    knobs = cli.sampling_knobs(parser, args, pipeline)
    rates = DEFAULT_RATES if pipeline is None else pipeline.rates
    rate, args.rounds = cli.rate_and_rounds(parser, tuple(rates), None, args.rounds)
    captions = [prompt for prompt in prompts for _ in range(args.seeds)]
    report = {"arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
              "key_rate": rate, "rounds": args.rounds, "fps": rate * 2 ** args.rounds, "generated": None,
              "reference": None, "reference_skipped": [], "reference_round_trip": args.round_trip, "fvd": None,
              "fid": None}
    videos = None
    if pipeline is not None:
        logger.info("%d prompt(s) x %d seed(s): key frames at %d fps, %d round(s)", len(prompts), args.seeds,
                    rate, args.rounds)
        videos = generate_videos(pipeline, Request(prompts, rate, args.rounds, args.seed, args.seeds), *knobs,
                                 args.batch_size)
        doubled = generate_videos(pipeline, Request(prompts, 2 * rate, 0, args.seed, args.seeds), *knobs,
                                  args.batch_size) if 2 * rate in rates else None
        report["generated"] = evaluate_videos(videos, captions, doubled, rate)
    if args.reference is not None:
        key_frames = REFERENCE_KEY_FRAMES if pipeline is None else pipeline.num_key_frames
        size = None if pipeline is None else pipeline.tokenizer.config.image_size
        clips, doubled_clips, report["reference_skipped"] = read_reference(
            args.reference, args.reference_clips or len(captions), key_frames, rate, args.rounds, size,
            doubled=2 * rate in rates)
        if args.round_trip:
            clips = round_trip(pipeline, clips)
            doubled_clips = None if doubled_clips is None else round_trip(pipeline, doubled_clips)
        if clips:
            report["reference"] = evaluate_videos(clips, [clip.caption for clip in clips], doubled_clips, rate)
        if videos is not None and (args.i3d or args.inception):
            report.update(frechet_distances(args, pipeline, videos, clips))
    print(format_table(report["generated"], report["reference"]))
    for name in ("fvd", "fid"):
        if report[name] is not None:
            print(f"{name.upper()}: {report[name]:.3f}")
    cli.write_json(args.json, report)
    return report


def format_table(generated: dict | None, reference: dict | None) -> str:
    rows = [f"{'measure':<22}{'generated':>12}{'reference':>12}{'ideal':>8}"]
    for key, ideal in IDEAL.items():
        cells = [(results or {}).get(key) for results in (generated, reference)]
        rows.append(f"{key:<22}" + "".join(f"{'-' if cell is None else f'{cell:.3f}':>12}" for cell in cells)
                    + f"{ideal:>8g}")
    counts = [(results or {}).get("videos", 0) for results in (generated, reference)]
    rows.append(f"{'videos':<22}{counts[0]:>12}{counts[1]:>12}")
    return "\n".join(rows)


def frechet_distances(args: argparse.Namespace, pipeline: Pipeline, videos: list,
                      clips: list[ReferenceClip]) -> dict:
    """FVD / FID between generated videos and reference clips, for the networks given (2 videos each side at least)."""
    if min(len(videos), len(clips)) < 2:
        logger.warning("FVD / FID skipped: they need at least 2 videos on each side, got %d generated and %d "
                       "reference", len(videos), len(clips))
        return {}
    results = {}
    generated = np.stack([video.frames for video in videos])  # (N, T, H, W, 3)
    reference = np.stack([clip.frames for clip in clips])  # (M, T, H, W, 3)
    if args.i3d is not None:
        results["fvd"] = fvd(load_feature_network(args.i3d, "--i3d", pipeline.device), generated, reference)
    if args.inception is not None:
        network = load_feature_network(args.inception, "--inception", pipeline.device)
        results["fid"] = fid(network, generated.reshape(-1, *generated.shape[2:]),
                             reference.reshape(-1, *reference.shape[2:]))
    return results
