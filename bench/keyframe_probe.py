"""Each video stage on real inputs, apart from the others.

    python -m bench.keyframe_probe --ckpt checkpoints/shapes-tiny --shards runs/shards-tiny [--count 24] [--top-k 1]

Takes shard samples at the lowest rate (1 fps) and measures, with the analytic checker:
- key frames: the key-frame model gets the true frame 0 and caption and generates frames 1..4; the direction it
  shows is compared with the true clip's, and the speed ratio (mean key-frame displacement of `quickly` over
  `slowly` captions, ideal 2) is computed from the generated frames;
- interpolation: the interpolation model fills the TRUE key frames to 33 frames (3 rounds); the interpolation
  error is that of `python -m cogvideo_lite.evaluate shapes` (pixels between each in-between's object and where
  its neighbours put it).
- first frames (`--starts N`, default 28 captions, `random.Random(0).sample` of the grammar): key frames sampled
  from text alone by the bundle's pipeline (frame 0 from the image model, or from the key-frame model when it was
  trained with `learn_first_frame`), temperature 1: the share whose frame 0 puts the object where clips of that
  caption can start at 1 fps (room left for the captioned travel), and the direction the key frames show.
`python -m cogvideo_lite.evaluate shapes` measures the whole chain (frame 0 -> key frames -> interpolation).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from bench.common import write_json
from cogvideo_lite.evaluate.checker import check_video
from cogvideo_lite.data.shapes import TRAVEL_FRACTIONS, ClipSpec, all_captions
from cogvideo_lite.sample.generate import generate_keyframes
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Pipeline, decode_codes, generate_videos, interpolate_codes
from cogvideo_lite.prepare.shards import TokenShards

ROUNDS = 3


def _speed_ratio(checks, captions) -> float | None:
    by_speed = {"slowly": [], "quickly": []}
    for check, caption in zip(checks, captions):
        if check.key_displacement is not None:
            by_speed[caption.split()[-1]].append(check.key_displacement)
    if not by_speed["slowly"] or not by_speed["quickly"]:
        return None
    return float(np.mean(by_speed["quickly"]) / np.mean(by_speed["slowly"]))


def can_start_here(caption: str, centre: tuple[float, float], spec: ClipSpec = ClipSpec()) -> bool:
    """Whether a 1 fps clip of `caption` can begin with the object centred at `centre` (x, y): clips start within
    the first second of a clip whose object leaves room for the travel of its speed (data/shapes.py)."""
    direction, speed = caption.split()[-2:]
    low, high = spec.centre_range
    travel = TRAVEL_FRACTIONS[speed] * (high - low)
    slack = spec.speed(speed) * (spec.seconds - 4)  # how far the object moves before the latest 1 fps start
    along = centre[0] if direction in ("left", "right") else centre[1]
    if direction in ("right", "down"):
        return low <= along <= high - travel + slack
    return low + travel - slack <= along <= high


def first_frames(pipeline: Pipeline, count: int, seed: int) -> dict:
    captions = random.Random(0).sample(all_captions(), count)
    videos = generate_videos(pipeline, captions, SamplingKnobs(), key_rate=1, rounds=0, seed=seed,
                             batch_size=count, progress=False)
    starts = directions = found = 0
    for caption, video in zip(captions, videos):
        check = check_video(video.frames)
        if check.frames[0].centre is None:
            continue
        found += 1
        starts += can_start_here(caption, check.frames[0].centre)
        directions += check.direction == caption.split()[-2]
    return {"first_frame_model": "keyframe" if pipeline.keyframe_makes_first_frame else "image",
            "captions": count, "object_in_frame_0": found, "feasible_start_share": starts / max(1, found),
            "direction_from_text_alone": directions / max(1, found)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--starts", type=int, default=28, help="captions for the first-frame check (0: skip)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    pipeline = Pipeline.load(args.ckpt)
    shards = TokenShards(args.shards)
    rate = min(pipeline.rates)
    indices = shards.indices_with_rate([rate])[:args.count]
    items = [shards[i] for i in indices]
    captions = [shards.source(index)["caption"] for index in indices]
    codes = torch.stack([item["codes"] for item in items])  # (B, 5, h, w)
    text = torch.stack([item["text"] for item in items])
    fps = torch.full((len(items),), pipeline.text.fps_id(rate))
    knobs = SamplingKnobs(top_k=args.top_k)
    generated = generate_keyframes(pipeline.keyframe, text, text == pipeline.text.pad_id, fps, pipeline.text.boi_id,
                                   codes[:, :1], codes.shape[1], knobs, args.seed)
    truth_frames, fake_frames = decode_codes(pipeline, codes), decode_codes(pipeline, generated)
    filled = interpolate_codes(pipeline, codes, captions, rate, ROUNDS, knobs, args.seed)  # (B, 33, h, w)
    filled_frames = decode_codes(pipeline, filled)
    stride = 2 ** ROUNDS
    agree, fake_checks, errors = 0, [], []
    for row, caption in enumerate(captions):
        truth, fake = check_video(truth_frames[row]), check_video(fake_frames[row])
        fake_checks.append(fake)
        agree += truth.direction == fake.direction
        errors += check_video(filled_frames[row], list(range(0, filled.shape[1], stride))).interpolation_errors
        print(f"{caption:40s} truth {truth.direction:6s} generated {fake.direction}")
    result = {"samples": len(indices), "direction_agreement": agree / max(1, len(indices)),
              "speed_ratio": _speed_ratio(fake_checks, captions),
              "interpolation_error_on_true_key_frames": float(np.mean(errors)) if errors else None,
              "interpolated_frames": len(errors)}
    if args.starts:
        result["first_frames"] = first_frames(pipeline, args.starts, args.seed)
    print(f"direction of generated key frames = direction of the real clip: {agree}/{len(indices)}")
    print(json.dumps(result, indent=2))
    write_json(Path(args.json) if args.json else None, {"ckpt": args.ckpt, **result})
    return result


if __name__ == "__main__":
    main()
