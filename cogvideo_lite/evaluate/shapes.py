"""Measures of videos of the built-in shapes grammar: does a video show what its caption says?

Each video is checked by the analytic checker (`checker.py`, where every measure is defined), and measured against
its caption:
- colour, shape and direction accuracy (a video without an object counts as wrong);
- speed ratio: mean key-frame displacement of `quickly` videos / of `slowly` videos (ideal 2, the grammar's
  TRAVEL_FRACTIONS);
- retiming ratio: the same prompts and seeds with key frames at twice the rate: mean key-frame displacement at r / at
  2r over the pairs where both have one (ideal 2);
- the checker's interpolation error (mean over every checked non-key frame) and consistency, colour and shape
  consistency (means over the videos);
- speed error: per video, |measured - caption speed| / caption speed, averaged; measured = key-frame displacement x
  key rate (pixels per second), caption speed = the grammar's (`ClipSpec(size).speed(word)`, default clip length);
  a video with fewer than 2 key frames showing an object counts as error 1 (no motion measured).
The reference clips of a built-in dataset folder (each mp4 with its JSON truth beside it) are read at the same frame
times, so the checker's own accuracy can stand on the same table; `round_trip` passes them through a bundle's frame
tokenizer. The command that generates and measures is `command.py` (`python -m cogvideo_lite.evaluate shapes`).

What it does not know: how videos are generated (`sample/pipeline.py`) or found in pixels (`checker.py`).
Where the idea comes from: the text-alignment, retiming and interpolation claims of CogVideo (Hong et al. 2023),
made measurable offline on a synthetic grammar.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from cogvideo_lite.data.captions import load_entries
from cogvideo_lite.data.shapes import SPEEDS, CaptionWords, ClipSpec, parse_caption
from cogvideo_lite.data.video import BadVideo, read_frames_at
from cogvideo_lite.evaluate.checker import VideoCheck, check_video
from cogvideo_lite.model.stages import KEYFRAME
from cogvideo_lite.sample.pipeline import Pipeline, decode_codes, encode_frames
from tokenizer.frames import to_model_frames, to_uint8

logger = logging.getLogger(__name__)

REFERENCE_KEY_FRAMES = 5  # CogVideo's key-frame stage, used when no bundle is given
IDEAL = {"colour_accuracy": 1.0, "shape_accuracy": 1.0, "direction_accuracy": 1.0, "speed_ratio": 2.0,
         "retiming_ratio": 2.0, "speed_error": 0.0, "interpolation_error": 0.0, "consistency": 1.0,
         "colour_consistency": 1.0, "shape_consistency": 1.0, "detection_rate": 1.0}


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


def speed_error(check: VideoCheck, speed: str, key_rate: int) -> float:
    """|measured - caption speed| / caption speed of one video (pixels per second); 1 when no motion was measured."""
    wanted = ClipSpec(size=check.size).speed(speed)
    if check.key_displacement is None:
        return 1.0
    return abs(check.key_displacement * key_rate - wanted) / wanted


def _video_entry(check: VideoCheck, words: CaptionWords, caption: str, key_rate: int) -> dict:
    return {"caption": caption, "colour": check.colour, "shape": check.shape, "direction": check.direction,
            "key_displacement": check.key_displacement, "speed_error": speed_error(check, words.speed, key_rate),
            "consistency": check.consistency, "colour_consistency": check.colour_consistency,
            "shape_consistency": check.shape_consistency,
            "detected": check.detected, "interpolation_error": _mean(check.interpolation_errors),
            "correct": {"colour": check.colour == words.colour, "shape": check.shape == words.shape,
                        "direction": check.direction == words.direction}}


def evaluate_checks(checks: list[VideoCheck], captions: list[str],
                    doubled_rate_checks: list[VideoCheck] | None = None, key_rate: int = 1) -> dict:
    """Metrics over checked videos with their captions, key frames at `key_rate` fps; doubled_rate_checks[i]: video
    i's prompt and seed with key frames at twice the rate (retiming). A measure that has nothing to average is None."""
    if len(checks) != len(captions) or not checks:
        raise ValueError(f"evaluate: {len(checks)} videos for {len(captions)} captions; expected one caption each")
    words = [parse_caption(caption) for caption in captions]
    entries = [_video_entry(check, word, caption, key_rate) for check, word, caption in zip(checks, words, captions)]
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
        **{key: _mean([entry[key] for entry in entries])
           for key in ("speed_error", "consistency", "colour_consistency", "shape_consistency")},
        "speed_unmeasured": sum(check.key_displacement is None for check in checks),
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
                    doubled_rate_videos: Sequence[FramesWithKeys] | None = None, key_rate: int = 1) -> dict:
    """Check every video (frames (T, H, W, 3) uint8 with its key_indices, key frames at `key_rate` fps) and measure
    them against the captions."""
    checks = [check_video(video.frames, video.key_indices) for video in videos]
    doubled = None if doubled_rate_videos is None else [check_video(video.frames, video.key_indices)
                                                        for video in doubled_rate_videos]
    return evaluate_checks(checks, captions, doubled, key_rate)


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
            decoded = decode_codes(pipeline, encode_frames(pipeline, frames, KEYFRAME))[0]  # (T, H, W, 3) uint8
        out.append(ReferenceClip(clip.caption, decoded, clip.key_indices))
    return out
