"""Generate videos from text with a sampling bundle.

    python sample.py --ckpt BUNDLE --prompt "a red circle moves left slowly" --out outputs/demo
    python sample.py --ckpt BUNDLE --prompts prompts.txt --num-samples 4 --cfg 3 --top-k 100 --out outputs/demo
    python sample.py --ckpt BUNDLE --prompt "..." --init-video clip.mp4 --init-frames 2 --out outputs/continued
    python sample.py --ckpt BUNDLE --prompt "..." --interpolate-video clip.mp4 --fps 2 --out outputs/smooth

Writes per sample `<slug>_<seed>_<i>.mp4` (at the final frame rate), `.gif` and `<slug>_<seed>_<i>_sheet.png` (key
frames on the first row, then all frames in rows of up to 9, or 17 for videos of more than 18 frames), and a
`samples.json` listing them. An --out that already holds a `samples.json` (an earlier run) is refused unless
--overwrite is given, which replaces that run: its listed files that this run does not rewrite are removed once the
new listing is written. Every user error (a knob out of range, an unknown frame rate, too many rounds, an empty,
invisible or over-long prompt, a prompts file that is not UTF-8, an --out that cannot be a directory or holds an
earlier run, a missing or mismatched bundle, an unreadable video) stops the run before any generation with exit code 2
and a one-line message naming the problem, its allowed range and the fix (`cogvideo_lite/cli.py`).

Takes a bundle directory and sampling knobs only (`cogvideo_lite/bundle/`); everything else is rebuilt from it.
Knobs left out take the bundle's recommended values (its `sampling.json`, if any), else the built-in defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cogvideo_lite import cli
from cogvideo_lite.data.media import contact_sheet, write_gif, write_mp4, write_png
from cogvideo_lite.data.video import BadVideo, read_clip
from cogvideo_lite.model.stages import INTERPOLATE, KEYFRAME, Stage
from cogvideo_lite.provenance import write_atomic
from cogvideo_lite.sample.pipeline import Pipeline, Request, Video, encode_frames, generate_videos
from cogvideo_lite.sample.schedule import parse_mode
from cogvideo_lite.text import EXAMPLE_PROMPT, blank_prompt_problem, prompt_token_problem

logger = logging.getLogger("sample")

SHEET_ROW_LENGTHS = (9, 17)  # a contact sheet row holds the frames of one 8 fps second (+1), or of two
SLUG_LENGTH = 48  # characters of the prompt kept in file names
LISTING = "samples.json"  # what a run writes last; its presence marks --out as holding an earlier run
OUTPUT_KINDS = ("mp4", "gif", "sheet")  # the files written per video, keys of its samples.json entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sample.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="sampling bundle (python -m cogvideo_lite.bundle)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace the earlier run in --out (its {LISTING} and the files listed there)")
    parser.add_argument("--prompt", action="append", default=[], help="a caption (repeatable)")
    parser.add_argument("--prompts", type=Path, help="file with one caption per line (blank lines ignored)")
    parser.add_argument("--fps", type=int, help="key-frame rate (default: the lowest configured rate)")
    parser.add_argument("--rounds", type=int, help="interpolation rounds (default: as many as the rates allow)")
    parser.add_argument("--num-samples", type=int, default=1, help="videos per prompt")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same arguments -> same videos)")
    cli.add_sampling_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="(prompt, sample) pairs generated together")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole sequence every pass (slow reference path; exact decode modes)")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--init-video", type=Path, help="its first --init-frames frames become the first key frames")
    given.add_argument("--interpolate-video", type=Path,
                       help="read its key frames at --fps and only run the interpolation rounds")
    parser.add_argument("--init-frames", type=int, help="frames taken from --init-video (default 1)")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Checks: every one runs before any generation
# ----------------------------------------------------------------------------------------------------------------

def read_prompts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str]]:
    """(where, caption) per prompt; `where` names it in messages: '--prompt number 2', '--prompts FILE line 5'."""
    prompts = []
    for number, prompt in enumerate(args.prompt, start=1):
        if error := blank_prompt_problem(prompt, f"--prompt number {number}", f"--prompt '{EXAMPLE_PROMPT}'"):
            parser.error(error)
        prompts.append((f"--prompt number {number}", prompt))
    if args.prompts is not None:
        prompts += cli.prompt_lines(parser, args.prompts)
    if not prompts:
        parser.error(f"no prompt given; add --prompt '{EXAMPLE_PROMPT}' or --prompts FILE")
    return prompts


def check_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--out must be a directory, or creatable as one, that we may write in and that holds no earlier run (its
    samples.json) unless --overwrite is given. Nothing is created here: see make_out."""
    existing = next(path for path in (args.out, *args.out.parents) if path.exists())  # '.' or '/' at the latest
    if not existing.is_dir():
        parser.error(f"--out {args.out}: {existing} is not a directory; give a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"--out {args.out}: no permission to write in {existing}; choose another --out")
    if (args.out / LISTING).exists() and not args.overwrite:
        parser.error(f"--out {args.out}: already holds an earlier run's samples ({LISTING}); choose another --out, "
                     "or pass --overwrite to replace them")


def make_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Create --out after every check has passed (so a refused run leaves nothing) and before any generation."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {out}: cannot create it ({error.strerror}); choose another --out")


def check_prompt_tokens(parser: argparse.ArgumentParser, pipeline: Pipeline, prompts: list[tuple[str, str]]) -> None:
    """Each caption must give 1..text_length text tokens and hold no special token's text."""
    for where, prompt in prompts:
        if error := prompt_token_problem(pipeline.text, prompt, pipeline.text_length, where):
            parser.error(error)


def read_given_codes(parser: argparse.ArgumentParser, args: argparse.Namespace, pipeline: Pipeline,
                     rate: int) -> torch.Tensor | None:
    """Codes (1, k, h, w) of the frames taken from --init-video or --interpolate-video, or None."""
    if args.init_video is not None:
        flag, path, stage = "--init-video", args.init_video, KEYFRAME
        num_frames = 1 if args.init_frames is None else args.init_frames
        if not 1 <= num_frames <= pipeline.num_key_frames:
            parser.error(f"--init-frames {num_frames}: must be in 1..{pipeline.num_key_frames} "
                         "(the key frames of one video)")
    elif args.interpolate_video is not None:
        flag, path, stage = "--interpolate-video", args.interpolate_video, INTERPOLATE
        num_frames = pipeline.num_key_frames
    else:
        return None
    with cli.user_errors(parser, BadVideo, ValueError, prefix=f"{flag} {path}",
                         hint=f"pass a readable video lasting more than {(num_frames - 1) / rate:g} s (or a higher "
                              "--fps)"):
        return read_video_codes(pipeline, path, num_frames, rate, stage)


def read_video_codes(pipeline: Pipeline, path: Path, num_frames: int, rate: int, stage: Stage) -> torch.Tensor:
    """The first `num_frames` frames of a video at `rate` fps, encoded as the shards of `stage` (the stage they are
    given to) were: (1, num_frames, h, w) int64."""
    frames = read_clip(path, num_frames, rate, pipeline.tokenizer.config.image_size, start=0.0)  # (k, 3, S, S)
    return encode_frames(pipeline, frames, stage)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------

def slugify(prompt: str) -> str:
    """'A red circle, moving!' -> 'a_red_circle_moving' (at most SLUG_LENGTH characters)."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:SLUG_LENGTH].rstrip("_")
    return slug or "prompt"


def sheet_rows(video: Video) -> list[np.ndarray]:
    """Key frames, then all frames in rows of SHEET_ROW_LENGTHS[0], or [1] when two short rows cannot hold them."""
    frames = video.frames
    length = next((row for row in SHEET_ROW_LENGTHS if 2 * row >= len(frames)), SHEET_ROW_LENGTHS[-1])
    return [frames[video.key_indices]] + [frames[start:start + length] for start in range(0, len(frames), length)]


def write_videos(out: Path, videos: list[Video], prompts: list[str]) -> list[dict]:
    """Write mp4, gif and contact sheet per video; returns their samples.json entries."""
    slugs: dict[int, str] = {}
    for index, prompt in enumerate(prompts):  # a prompt whose slug an earlier prompt took gets its index appended
        slug = slugify(prompt)
        slugs[index] = slug if slug not in slugs.values() else f"{slug}-{index}"
    num_samples = len(videos) // len(prompts)
    entries = []
    for number, video in enumerate(videos):
        stem = f"{slugs[number // num_samples]}_{video.seed}_{video.sample_index}"
        paths = dict(zip(OUTPUT_KINDS, (out / f"{stem}.mp4", out / f"{stem}.gif", out / f"{stem}_sheet.png")))
        write_mp4(paths["mp4"], video.frames, video.fps)
        write_gif(paths["gif"], video.frames, video.fps)
        write_png(paths["sheet"], contact_sheet(sheet_rows(video)))
        entries.append({"prompt": video.prompt, "seed": video.seed, "sample_index": video.sample_index,
                        "fps": video.fps, "key_rate": video.key_rate, "num_frames": len(video.frames),
                        "key_indices": video.key_indices, **{key: path.name for key, path in paths.items()}})
        print(f"{paths['mp4']}  ({len(video.frames)} frames at {video.fps} fps: {video.prompt!r})")
    return entries


def listed_files(out: Path) -> set[str]:
    """Names of the files that an earlier run's samples.json in `out` lists: what --overwrite replaces."""
    try:
        samples = json.loads((out / LISTING).read_text())["samples"]
        names = {sample[kind] for sample in samples for kind in OUTPUT_KINDS}
    except (OSError, ValueError, KeyError, TypeError):  # none, or not one this script wrote: remove nothing
        return set()
    return {name for name in names if isinstance(name, str) and Path(name).name == name}  # bare names, in `out`


def write_listing(out: Path, listing: dict, replaced: set[str]) -> None:
    """Write samples.json (whole, or not at all), then remove the `replaced` files this run did not rewrite."""
    write_atomic(out / LISTING, json.dumps(listing, indent=2) + "\n")
    written = {sample[kind] for sample in listing["samples"] for kind in OUTPUT_KINDS}
    for name in sorted(replaced - written):
        if (out / name).is_file():  # not '..' nor a directory
            (out / name).unlink()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging()
    prompts = read_prompts(parser, args)
    check_out(parser, args)
    pipeline = cli.load_pipeline(parser, args.ckpt, args.device)
    knobs, rounds_knobs = cli.sampling_knobs(parser, args, pipeline)
    cli.require_at_least(parser, args, num_samples=1, batch_size=1, seed=0)
    if args.no_cache and not parse_mode(knobs.decode).is_exact:
        parser.error(f"--no-cache with --decode {knobs.decode}: an approximate mode decodes through the KV cache only; "
                     "pass --decode exact (or sequential) to run the uncached reference")
    if args.init_frames is not None and args.init_video is None:
        parser.error("--init-frames has no effect without --init-video; add --init-video PATH or drop it")
    rate, rounds = cli.rate_and_rounds(parser, pipeline.rates, args.fps, args.rounds)
    check_prompt_tokens(parser, pipeline, prompts)
    given = read_given_codes(parser, args, pipeline, rate)
    make_out(parser, args.out)
    captions = [prompt for _, prompt in prompts]

    logger.info("%d prompt(s) x %d sample(s): key frames at %d fps, %d round(s) -> %d fps, on %s", len(prompts),
                args.num_samples, rate, rounds, rate * 2 ** rounds, pipeline.device)
    request = Request(captions, rate, rounds, args.seed, args.num_samples, given)
    videos = generate_videos(pipeline, request, knobs, rounds_knobs, args.batch_size, use_cache=not args.no_cache)
    replaced = listed_files(args.out)  # empty unless --overwrite let an earlier run's listing through check_out
    entries = write_videos(args.out, videos, captions)
    listing = {"bundle": str(args.ckpt.resolve()), "knobs": asdict(knobs),
               "interpolation_knobs": asdict(rounds_knobs), "key_rate": rate, "rounds": rounds,
               "seed": args.seed, "use_cache": not args.no_cache, "samples": entries}
    write_listing(args.out, listing, replaced)
    print(f"wrote {len(entries)} video(s) to {args.out} (listed in {args.out / LISTING})")
    return entries


if __name__ == "__main__":
    main()
