"""Evaluate a sampling bundle on the built-in shapes grammar: does the video show what the caption says?

    python -m cogvideo_lite.evaluate shapes --ckpt BUNDLE [--prompts FILE] [--seeds 2] [--seed 0] [--rounds N]
        [--batch-size 32] [--temperature/--top-k/--top-p/--cfg ...] [--reference DATASET [--reference-clips N]]
        [--round-trip] [--i3d PATH] [--inception PATH] [--json OUT] [--device auto]

generates `--seeds` videos per prompt (default prompts: all 168 captions of the grammar) with the pipeline, key
frames at the bundle's lowest rate r and `--rounds` interpolation rounds (default: as many as the rates allow), and
measures them with the analytic checker (`checker.py`, where every measure is defined):
- colour, shape and direction accuracy against the caption (a video without an object counts as wrong);
- speed ratio: mean key-frame displacement of `quickly` videos / of `slowly` videos (ideal 2, the grammar's
  TRAVEL_FRACTIONS);
- retiming ratio: the same prompts and seeds with key frames at 2r (where the rate set has it): mean key-frame
  displacement at r / at 2r over the pairs where both have one (ideal 2). The 2r run makes key frames only: the
  pipeline's key frames do not depend on the number of rounds;
- interpolation error: mean over the non-key frames of the distance (pixels) to the midpoint of the two frames
  their round interpolated between;
- consistency: mean share of frames keeping the video's majority colour and shape.
`--reference DATASET` measures the ground-truth clips of a built-in dataset folder (captions.jsonl, each mp4 with
its JSON truth beside it) read the same way (the same frame times; resized to the bundle's frame size), so the
checker's own accuracy is on the same table; a clip that cannot be used is skipped with a warning naming it. With a
reference, `--i3d` / `--inception` add FVD / frame FID between the generated videos and the reference clips
(local TorchScript files only, see `frechet.py`). `--round-trip` measures the reference clips after the bundle's
tokenizer has encoded (as the key-frame stage's shards were) and decoded them: what a generator with that tokenizer
could show at best. Without `--ckpt` only the reference is measured (rates
DEFAULT_RATES, REFERENCE_KEY_FRAMES key frames). Prints a table; `--json` writes every number, the counts and the
arguments.

What it does not know: how videos are generated (`pipeline.py`) or found in pixels (`checker.py`).
Where the idea comes from: the text-alignment, retiming and interpolation claims of CogVideo (Hong et al. 2023),
made measurable offline on a synthetic grammar; FVD (Unterthiner et al. 2018) and FID (Heusel et al. 2017).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from tqdm import tqdm

from cogvideo_lite.evaluate.checker import VideoCheck, check_video
from cogvideo_lite.data.captions import find_captions_file, load_entries
from cogvideo_lite.data.shapes import COLOURS, DIRECTIONS, SHAPES, SPEEDS, all_captions
from cogvideo_lite.data.video import BadVideo, read_frames_at
from cogvideo_lite.evaluate.frechet import fid, fvd, load_feature_network
from cogvideo_lite.sample.knobs import (SamplingKnobs, add_knob_arguments, fill_knob_defaults, interpolation_knobs,
                                         knobs_from_arguments, missing_expert)
from cogvideo_lite.sample.pipeline import Pipeline, decode_codes, encode_frames, generate_videos, max_rounds
from cogvideo_lite.text import DEFAULT_RATES, read_prompt_lines
from tokenizer.frames import to_model_frames, to_uint8

logger = logging.getLogger(__name__)

REFERENCE_KEY_FRAMES = 5  # CogVideo's key-frame stage (DESIGN.md section 5), used when no bundle is given
CAPTION_PATTERN = re.compile(r"a (\w+) (\w+) moves (\w+) (\w+)")
IDEAL = {"colour_accuracy": 1.0, "shape_accuracy": 1.0, "direction_accuracy": 1.0, "speed_ratio": 2.0,
         "retiming_ratio": 2.0, "interpolation_error": 0.0, "consistency": 1.0, "detection_rate": 1.0}


@dataclass(frozen=True)
class CaptionWords:
    colour: str
    shape: str
    direction: str
    speed: str


def parse_caption(caption: str) -> CaptionWords:
    """'a red circle moves left slowly' -> its four words; ValueError for a caption outside the grammar."""
    match = CAPTION_PATTERN.fullmatch(caption.strip())
    words = match.groups() if match else ()
    if not match or words[0] not in COLOURS or words[1] not in SHAPES or words[2] not in DIRECTIONS \
            or words[3] not in SPEEDS:
        raise ValueError(f"caption {caption!r} is outside the shapes grammar: expected 'a COLOUR SHAPE moves "
                         f"DIRECTION SPEED' with COLOUR in {list(COLOURS)}, SHAPE in {list(SHAPES)}, DIRECTION in "
                         f"{list(DIRECTIONS)}, SPEED in {list(SPEEDS)}")
    return CaptionWords(*words)


class FramesWithKeys(Protocol):
    """What evaluation reads from a video: `pipeline.Video` or `ReferenceClip`."""

    frames: np.ndarray       # (T, H, W, 3) uint8
    key_indices: list[int]


@dataclass(frozen=True)
class ReferenceClip:
    caption: str
    frames: np.ndarray       # (T, H, W, 3) uint8
    key_indices: list[int]


# ----------------------------------------------------------------------------------------------------------------
# Measures
# ----------------------------------------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _video_entry(check: VideoCheck, words: CaptionWords, caption: str) -> dict:
    return {"caption": caption, "colour": check.colour, "shape": check.shape, "direction": check.direction,
            "key_displacement": check.key_displacement, "consistency": check.consistency,
            "detected": check.detected, "interpolation_error": _mean(check.interpolation_errors),
            "correct": {"colour": check.colour == words.colour, "shape": check.shape == words.shape,
                        "direction": check.direction == words.direction}}


def evaluate_checks(checks: list[VideoCheck], captions: list[str],
                    doubled_rate_checks: list[VideoCheck] | None = None) -> dict:
    """Metrics over checked videos with their captions; doubled_rate_checks[i]: video i's prompt and seed with key
    frames at twice the rate (retiming). A measure that has nothing to average is None."""
    if len(checks) != len(captions) or not checks:
        raise ValueError(f"evaluate: {len(checks)} videos for {len(captions)} captions; expected one caption each")
    words = [parse_caption(caption) for caption in captions]
    entries = [_video_entry(check, word, caption) for check, word, caption in zip(checks, words, captions)]
    displacement = {speed: [check.key_displacement for check, word in zip(checks, words)
                            if word.speed == speed and check.key_displacement is not None] for speed in SPEEDS}
    errors = [error for check in checks for error in check.interpolation_errors]
    results = {
        "videos": len(checks),
        **{f"{word}_accuracy": _mean([entry["correct"][word] for entry in entries])
           for word in ("colour", "shape", "direction")},
        "displacement_quickly": _mean(displacement["quickly"]), "displacement_slowly": _mean(displacement["slowly"]),
        "speed_videos": {speed: len(values) for speed, values in displacement.items()},
        "interpolation_error": _mean(errors), "interpolated_frames": len(errors),
        "interpolation_skipped": sum(check.interpolation_skipped for check in checks),
        "consistency": _mean([check.consistency for check in checks]),
        "detection_rate": _mean([check.detected for check in checks]),
    }
    results["speed_ratio"] = _ratio(results["displacement_quickly"], results["displacement_slowly"])
    results.update(_retiming(checks, doubled_rate_checks))
    results["per_video"] = entries
    return results


def _retiming(checks: list[VideoCheck], doubled_rate_checks: list[VideoCheck] | None) -> dict:
    if doubled_rate_checks is None:
        return {"retiming_ratio": None, "retiming_pairs": 0, "displacement_at_rate": None,
                "displacement_at_double_rate": None}
    if len(doubled_rate_checks) != len(checks):
        raise ValueError(f"evaluate: {len(doubled_rate_checks)} videos at the doubled rate for {len(checks)} videos")
    pairs = [(single.key_displacement, double.key_displacement) for single, double in zip(checks, doubled_rate_checks)
             if single.key_displacement is not None and double.key_displacement is not None]
    at_rate, at_double = _mean([pair[0] for pair in pairs]), _mean([pair[1] for pair in pairs])
    return {"retiming_ratio": _ratio(at_rate, at_double), "retiming_pairs": len(pairs),
            "displacement_at_rate": at_rate, "displacement_at_double_rate": at_double}


def evaluate_videos(videos: Sequence[FramesWithKeys], captions: list[str],
                    doubled_rate_videos: Sequence[FramesWithKeys] | None = None) -> dict:
    """Check every video (frames (T, H, W, 3) uint8 with its key_indices) and measure them against the captions."""
    checks = [check_video(video.frames, video.key_indices) for video in videos]
    doubled = None if doubled_rate_videos is None else [check_video(video.frames, video.key_indices)
                                                        for video in doubled_rate_videos]
    return evaluate_checks(checks, captions, doubled)


# ----------------------------------------------------------------------------------------------------------------
# Reference clips
# ----------------------------------------------------------------------------------------------------------------

def _resized(frames: np.ndarray, size: int | None) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8, resized and centre-cropped as training clips are."""
    return frames if size is None else to_uint8(to_model_frames(frames, size))


def read_reference(root: Path, count: int, key_frames: int, key_rate: int, rounds: int, size: int | None,
                   doubled: bool) -> tuple[list[ReferenceClip], list[ReferenceClip] | None, list[str]]:
    """The first `count` usable clips of a dataset folder at key rate r with `rounds` rounds of frames between
    (times k / (r 2**rounds) s), and, when `doubled`, their key frames at 2r. Returns clips, doubled clips and one
    line per skipped clip (also logged as a warning)."""
    entries, problems = load_entries(root)
    skipped = [f"{problem.path}: {problem.reason}" for problem in problems]
    clips, doubled_clips = [], []
    stride = 2 ** rounds
    times = np.arange((key_frames - 1) * stride + 1) / (key_rate * stride)
    for entry in entries:
        if len(clips) == count:
            break
        truth_path = entry.video.with_suffix(".json")
        try:
            caption = json.loads(truth_path.read_text())["caption"]
            parse_caption(caption)
            frames = _resized(read_frames_at(entry.video, times), size)
            if doubled:
                keys = _resized(read_frames_at(entry.video, np.arange(key_frames) / (2 * key_rate)), size)
        except (OSError, KeyError, TypeError, json.JSONDecodeError, ValueError, BadVideo) as error:
            skipped.append(f"{entry.video}: {type(error).__name__}: {error}")
            continue
        clips.append(ReferenceClip(caption, frames, list(range(0, len(times), stride))))
        if doubled:
            doubled_clips.append(ReferenceClip(caption, keys, list(range(key_frames))))
    for line in skipped:
        logger.warning("reference clip skipped: %s", line)
    return clips, doubled_clips if doubled else None, skipped


def round_trip(pipeline: Pipeline, clips: list[ReferenceClip]) -> list[ReferenceClip]:
    """Each clip's frames encoded as the key-frame stage's shards were (its steady margin) and decoded again."""
    out = []
    size = pipeline.tokenizer.config.image_size  # the clips are read at it: no resizing here
    for clip in tqdm(clips, desc="reference through the tokenizer", unit="clip"):
        frames = to_model_frames(clip.frames, size)  # (T, 3, H, W) in [-1, 1]
        with torch.no_grad():
            decoded = decode_codes(pipeline, encode_frames(pipeline, frames, "keyframe"))[0]  # (T, H, W, 3) uint8
        out.append(ReferenceClip(clip.caption, decoded, clip.key_indices))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cogvideo_lite.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=("shapes",), help="prompt grammar and checker to use")
    parser.add_argument("--ckpt", type=Path, help="sampling bundle (python -m cogvideo_lite.bundle)")
    parser.add_argument("--reference", type=Path, help="built-in dataset folder whose ground-truth clips to measure")
    parser.add_argument("--prompts", type=Path, help="file with one grammar caption per line (default: all 168)")
    parser.add_argument("--seeds", type=int, default=2, help="videos per prompt")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the pipeline")
    parser.add_argument("--rounds", type=int, help="interpolation rounds (default: as many as the rates allow)")
    parser.add_argument("--batch-size", type=int, default=32, help="(prompt, sample) pairs generated together")
    parser.add_argument("--reference-clips", type=int, help="reference clips to read (default: prompts x seeds)")
    parser.add_argument("--round-trip", action="store_true",
                        help="measure the reference clips encoded (as the key-frame stage's shards were) and decoded "
                             "by the bundle's tokenizer: the best a generator with it can show")
    add_knob_arguments(parser)
    parser.add_argument("--i3d", type=Path, help="I3D TorchScript file for FVD (needs --ckpt and --reference)")
    parser.add_argument("--inception", type=Path, help="Inception TorchScript file for FID (needs both too)")
    parser.add_argument("--json", type=Path, help="write all numbers, counts and arguments here")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def read_prompts(parser: argparse.ArgumentParser, path: Path | None) -> list[str]:
    if path is None:
        return all_captions()
    try:
        lines = read_prompt_lines(path)
    except ValueError as error:
        parser.error(f"--prompts {path}: {error}")
    prompts = []
    for number, line in lines:
        if line.strip():
            try:
                parse_caption(line)
            except ValueError as error:
                parser.error(f"--prompts {path}:{number}: {error}")
            prompts.append(line.strip())
    if not prompts:
        parser.error(f"--prompts {path}: no captions (only blank lines)")
    return prompts


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.ckpt is None and args.reference is None:
        parser.error("nothing to evaluate: give --ckpt BUNDLE, --reference DATASET, or both")
    for name, least in (("seeds", 1), ("batch_size", 1), ("reference_clips", 1), ("seed", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name.replace('_', '-')} {value}: must be >= {least}")
    if args.reference is not None and not args.reference.is_dir():
        parser.error(f"--reference {args.reference}: no such directory; give a dataset folder with captions.jsonl")
    if args.reference is not None:
        try:
            find_captions_file(args.reference)
        except (FileNotFoundError, ValueError) as error:
            parser.error(f"--reference: {error}")
    if args.round_trip and (args.ckpt is None or args.reference is None):
        parser.error("--round-trip passes reference clips through the bundle's tokenizer: give --ckpt and --reference")
    for flag, path in (("--i3d", args.i3d), ("--inception", args.inception)):
        if path is not None and (args.ckpt is None or args.reference is None):
            parser.error(f"{flag} compares generated videos with reference clips: give --ckpt and --reference too")
        if path is not None and not path.is_file():
            parser.error(f"{flag} {path}: no such file; give the local TorchScript weights (nothing is downloaded)")


def check_knob_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace,
                         pipeline: Pipeline | None) -> SamplingKnobs:
    """The sampling knobs: those given, the rest from the bundle's sampling.json, else built in; then checked."""
    fill_knob_defaults(args, {} if pipeline is None else pipeline.recommended_knobs)
    knobs = knobs_from_arguments(parser, args)
    if pipeline is not None and (error := missing_expert(args, pipeline.expert is not None)):
        parser.error(error)
    return knobs


def load_pipeline(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Pipeline | None:
    if args.ckpt is None:
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu or auto")
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return Pipeline.load(args.ckpt, device)
    except (ValueError, OSError, KeyError, SafetensorError) as error:
        parser.error(f"--ckpt {args.ckpt}: {' '.join(str(error).split())}; pass a bundle made by "
                     "python -m cogvideo_lite.bundle")


def choose_rounds(parser: argparse.ArgumentParser, rates: tuple[int, ...], rounds: int | None) -> tuple[int, int]:
    """The key rate (the lowest of the set) and the number of rounds."""
    rate = min(rates)
    allowed = max_rounds(rates, rate)
    rounds = allowed if rounds is None else rounds
    if not 0 <= rounds <= allowed:
        parser.error(f"--rounds {rounds}: from {rate} fps the rates {rates} allow 0..{allowed} interpolation rounds")
    return rate, rounds


def generate(pipeline: Pipeline, prompts: list[str], knobs: SamplingKnobs, rate: int, rounds: int,
             args: argparse.Namespace) -> tuple[list, list | None]:
    """Videos at key rate r with `rounds` rounds and, where 2r is a configured rate, key frames at 2r."""
    common = dict(knobs=knobs, seed=args.seed, num_samples=args.seeds, batch_size=args.batch_size,
                  interpolation_knobs=interpolation_knobs(knobs, args.interp_top_k, args.interp_expert_weight))
    videos = generate_videos(pipeline, prompts, key_rate=rate, rounds=rounds, **common)
    doubled = generate_videos(pipeline, prompts, key_rate=2 * rate, rounds=0, **common) \
        if 2 * rate in pipeline.rates else None
    return videos, doubled


def format_table(generated: dict | None, reference: dict | None) -> str:
    rows = [f"{'measure':<22}{'generated':>12}{'reference':>12}{'ideal':>8}"]
    for key, ideal in IDEAL.items():
        cells = [(results or {}).get(key) for results in (generated, reference)]
        rows.append(f"{key:<22}" + "".join(f"{'-' if cell is None else f'{cell:.3f}':>12}" for cell in cells)
                    + f"{ideal:>8g}")
    counts = [(results or {}).get("videos", 0) for results in (generated, reference)]
    rows.append(f"{'videos':<22}{counts[0]:>12}{counts[1]:>12}")
    return "\n".join(rows)


def frechet_distances(args: argparse.Namespace, device: torch.device, videos: list,
                      clips: list[ReferenceClip]) -> dict:
    """FVD / FID between generated videos and reference clips, for the networks given."""
    results = {"fvd": None, "fid": None}
    generated = np.stack([video.frames for video in videos])  # (N, T, H, W, 3)
    reference = np.stack([clip.frames for clip in clips])  # (M, T, H, W, 3)
    if args.i3d is not None:
        results["fvd"] = fvd(load_feature_network(args.i3d, "--i3d", device), generated, reference)
    if args.inception is not None:
        network = load_feature_network(args.inception, "--inception", device)
        results["fid"] = fid(network, generated.reshape(-1, *generated.shape[2:]),
                             reference.reshape(-1, *reference.shape[2:]))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_arguments(parser, args)
    prompts = read_prompts(parser, args.prompts)
    pipeline = load_pipeline(parser, args)
    knobs = check_knob_arguments(parser, args, pipeline)
    rates = DEFAULT_RATES if pipeline is None else pipeline.rates
    rate, rounds = choose_rounds(parser, tuple(rates), args.rounds)
    captions = [prompt for prompt in prompts for _ in range(args.seeds)]
    report = {"arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
              "key_rate": rate, "rounds": rounds, "fps": rate * 2 ** rounds, "generated": None, "reference": None,
              "reference_skipped": [], "reference_round_trip": args.round_trip, "fvd": None, "fid": None}

    videos = None
    if pipeline is not None:
        logger.info("%d prompt(s) x %d seed(s): key frames at %d fps, %d round(s)", len(prompts), args.seeds,
                    rate, rounds)
        videos, doubled = generate(pipeline, prompts, knobs, rate, rounds, args)
        report["generated"] = evaluate_videos(videos, captions, doubled)
    if args.reference is not None:
        key_frames = REFERENCE_KEY_FRAMES if pipeline is None else pipeline.num_key_frames
        size = None if pipeline is None else pipeline.tokenizer.config.image_size
        count = args.reference_clips or len(captions)
        clips, doubled_clips, report["reference_skipped"] = read_reference(
            args.reference, count, key_frames, rate, rounds, size, doubled=2 * rate in rates)
        if args.round_trip:
            clips = round_trip(pipeline, clips)
            doubled_clips = None if doubled_clips is None else round_trip(pipeline, doubled_clips)
        if clips:
            report["reference"] = evaluate_videos(clips, [clip.caption for clip in clips], doubled_clips)
        if videos is not None and (args.i3d or args.inception):
            if min(len(videos), len(clips)) < 2:
                logger.warning("FVD / FID skipped: they need at least 2 videos on each side, got %d generated and "
                               "%d reference", len(videos), len(clips))
            else:
                report.update(frechet_distances(args, pipeline.device, videos, clips))

    print(format_table(report["generated"], report["reference"]))
    for name in ("fvd", "fid"):
        if report[name] is not None:
            print(f"{name.upper()}: {report[name]:.3f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
