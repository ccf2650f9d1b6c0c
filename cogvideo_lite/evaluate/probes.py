"""Probes of single stages (`python -m cogvideo_lite.evaluate first-frames | stages | losses`).

`first-frames`: where a shape is lost. For every caption of the grammar (56 per shape) and seed, frame 0 is drawn from
text alone by the image model (the frozen spatial channel every video stage builds on) and, where the bundle's
key-frame stage was trained with `learn_first_frame`, by the key-frame model; with `--image DIR` the image model is
that export instead (it must fit the bundle's frame tokenizer, text model and layout; the key-frame model is then left
out, as it was trained on other image weights). The share of decoded frames whose checked shape is the captioned one
is reported per shape. The tokenizer's own share is `shapes --reference DATASET --round-trip`.

`stages`: each video stage on real inputs, apart from the others. Shard samples at the lowest rate give
- key frames: the key-frame model gets the true frame 0 and caption and generates frames 1..4; the direction it
  shows is compared with the true clip's, and the speed ratio of the generated key frames is measured;
- interpolation: the interpolation model fills the TRUE key frames to 33 frames (3 rounds), measured as by `shapes`;
- first frames (`--starts N` captions, `random.Random(0).sample` of the grammar): key frames sampled from text alone
  by the pipeline at temperature 1: the share whose frame 0 puts the object where clips of that caption can start at
  1 fps (room left for the captioned travel), and the direction the key frames show.
Both take their knobs from `--top-k` alone (no image expert), so that they measure the stages themselves.

`losses`: a stage export's loss on token shards made with its text model and frame tokenizer, e.g. the shards it was
trained on beside shards of clips it never saw: a stage far better on the first has memorised its clips (any data,
not only the shapes grammar).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from cogvideo_lite.bundle.exports import SPEC_FILE, load_image_model, load_stage, read_spec
from cogvideo_lite.bundle.parts import check_image_fits, resolve_parts
from cogvideo_lite.data.shapes import SHAPES, TRAVEL_FRACTIONS, ClipSpec, all_captions, parse_caption
from cogvideo_lite.evaluate.checker import check_frames, check_video
from cogvideo_lite.evaluate.shapes import evaluate_checks, evaluate_videos
from cogvideo_lite.model.stages import IMAGE, KEYFRAME, Stage, stage_named
from cogvideo_lite.prepare.shards import META_FILE, TEXT_COPY, TokenShards
from cogvideo_lite.provenance import Provenance
from cogvideo_lite.sample.generate import Condition, Sampler, generate_image, generate_keyframes
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Pipeline, Request, decode_codes, generate_videos
from cogvideo_lite.text import TextTokenizer
from cogvideo_lite.train.examples import StageExamples

BATCH = 56  # captions per generation call of first-frames
ROUNDS = 3  # stages: the true key frames are filled to (5 - 1) * 2**3 + 1 = 33 frames


# ----------------------------------------------------------------------------------------------------------------
# first-frames
# ----------------------------------------------------------------------------------------------------------------

def first_frame_shapes(pipeline: Pipeline, knobs: SamplingKnobs, seeds: int) -> dict:
    """Per model that draws frame 0 (the image model; the key-frame model where it learnt frame 0), the share of
    each captioned shape that frame 0 shows, over all captions and `seeds` seeds."""
    captions = all_captions()
    result = {"captions": len(captions)}
    for stage in (IMAGE, KEYFRAME) if pipeline.keyframe_makes_first_frame else (IMAGE,):
        codes = torch.cat([frame_zero(pipeline, stage, captions, knobs, 1000 * seed) for seed in range(seeds)])
        result[f"{stage.name}_model"] = shape_shares(decode_codes(pipeline, codes)[:, 0], captions * seeds)
    return result


def frame_zero(pipeline: Pipeline, stage: Stage, captions: list[str], knobs: SamplingKnobs,
               seed: int) -> torch.Tensor:
    """Codes (N, 1, h, w) of frame 0 for each caption, drawn by the `stage` model (image / keyframe) at the lowest
    rate, batch b of BATCH captions from seed + b * BATCH."""
    pieces = []
    for start in range(0, len(captions), BATCH):
        condition = pipeline.condition(captions[start:start + BATCH], min(pipeline.rates))
        sampler = Sampler(knobs, seed + start)
        if stage is IMAGE:
            pieces.append(generate_image(pipeline.image, condition, sampler))
        else:  # the stage needs 2 slots: keep frame 0
            none = torch.zeros(len(condition.fps_ids), 0, *pipeline.image.layout.grid, dtype=torch.long,
                               device=pipeline.device)
            pieces.append(generate_keyframes(pipeline.keyframe, condition, none, sampler, num_frames=2)[:, :1])
    return torch.cat(pieces)


def shape_shares(frames: np.ndarray, captions: list[str]) -> dict[str, float]:
    """frames (N, H, W, 3) uint8, one per caption -> per captioned shape, the share the checker reads as that shape."""
    right, total = Counter(), Counter()
    for caption, check in zip(captions, check_frames(frames)):
        wanted = parse_caption(caption).shape
        total[wanted] += 1
        right[wanted] += check.shape == wanted
    return {shape: right[shape] / total[shape] for shape in SHAPES if total[shape]}


def swap_image_model(pipeline: Pipeline, directory: Path) -> None:
    """Put the image export at `directory` in place of the bundle's (and so leave out a key-frame model trained on
    the bundle's); CheckpointMismatch names a contract it breaks."""
    bundle_image = resolve_parts(pipeline.directory)[IMAGE.name]
    check_image_fits(directory, read_spec(bundle_image), str(bundle_image / SPEC_FILE), "probed in its place")
    pipeline.image, _ = load_image_model(directory, pipeline.device)
    pipeline.keyframe_makes_first_frame = False


# ----------------------------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------------------------

def stage_probe(pipeline: Pipeline, shards: TokenShards, knobs: SamplingKnobs, count: int, seed: int) -> dict:
    """The key-frame stage from the true frame 0 and the interpolation stage on the true key frames of the first
    `count` shard samples at the lowest rate."""
    rate = min(pipeline.rates)
    indices = shards.indices_with_rate([rate])[:count]
    items = [shards[index] for index in indices]
    captions = [shards.source(index)["caption"] for index in indices]
    codes = torch.stack([item["codes"] for item in items]).to(pipeline.device)  # (B, 5, h, w)
    condition = pipeline.condition(captions, rate)
    generated = generate_keyframes(pipeline.keyframe, condition, codes[:, :1], Sampler(knobs, seed))
    truth = [check_video(frames) for frames in decode_codes(pipeline, codes)]
    fake = [check_video(frames) for frames in decode_codes(pipeline, generated)]
    for caption, true_check, fake_check in zip(captions, truth, fake):
        print(f"{caption:40s} truth {true_check.direction:6s} generated {fake_check.direction}")
    filled = generate_videos(pipeline, Request(captions, rate, ROUNDS, seed, init_codes=codes), knobs,
                             batch_size=len(captions), progress=False)  # the true key frames, interpolated
    between = evaluate_videos(filled, captions)
    return {"samples": len(indices),
            "direction_agreement": sum(a.direction == b.direction for a, b in zip(truth, fake)) / max(1, len(indices)),
            "speed_ratio": evaluate_checks(fake, captions)["speed_ratio"],
            "interpolation_error_on_true_key_frames": between["interpolation_error"],
            "interpolated_frames": between["interpolated_frames"]}


def can_start_here(caption: str, centre: tuple[float, float], spec: ClipSpec = ClipSpec()) -> bool:
    """Whether a 1 fps clip of `caption` can begin with the object centred at `centre` (x, y): clips start within
    the first second of a clip whose object leaves room for the travel of its speed (data/shapes.py)."""
    words = parse_caption(caption)
    low, high = spec.centre_range
    travel = TRAVEL_FRACTIONS[words.speed] * (high - low)
    slack = spec.speed(words.speed) * (spec.seconds - 4)  # how far the object moves before the latest 1 fps start
    along = centre[0] if words.direction in ("left", "right") else centre[1]
    if words.direction in ("right", "down"):
        return low <= along <= high - travel + slack
    return low + travel - slack <= along <= high


def first_frame_starts(pipeline: Pipeline, count: int, seed: int) -> dict:
    """Key frames from text alone for `count` captions: where frame 0 puts the object, and the direction shown."""
    captions = random.Random(0).sample(all_captions(), count)
    videos = generate_videos(pipeline, Request(captions, 1, 0, seed), SamplingKnobs(), batch_size=count,
                             progress=False)
    starts = directions = found = 0
    for caption, video in zip(captions, videos):
        check = check_video(video.frames)
        if check.frames[0].centre is None:
            continue
        found += 1
        starts += can_start_here(caption, check.frames[0].centre)
        directions += check.direction == parse_caption(caption).direction
    return {"first_frame_model": (KEYFRAME if pipeline.keyframe_makes_first_frame else IMAGE).name,
            "captions": count, "object_in_frame_0": found, "feasible_start_share": starts / max(1, found),
            "direction_from_text_alone": directions / max(1, found)}


# ----------------------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------------------

def stage_losses(export: Path, image: Path | None, shard_dirs: list[Path], samples: int, device: str) -> dict:
    """The export's mean stage loss on each shard folder (`samples` evenly spaced examples, captions kept, the clip
    rates the stage trains on). A folder made with another text model or frame tokenizer is refused naming both."""
    model, spec = load_stage(export, image, device)
    stage = stage_named(spec["stage"])
    plan = stage.plan(model.layout, bool(spec.get("learns_first_frame", False)))
    result = {"export": str(export), "stage": stage.name, "samples": samples, "losses": {}}
    for directory in shard_dirs:
        shards = TokenShards(directory)
        Provenance.of_export(spec).check(Provenance.of_shards(shards.meta), str(export / SPEC_FILE),
                                         str(directory / META_FILE))
        text = TextTokenizer.load(directory / TEXT_COPY)
        examples = StageExamples(shards, stage, plan, model.layout, text, stage.clip_rates(text.rates))
        result["losses"][str(directory)] = examples.mean_loss(model, samples)
    return result
