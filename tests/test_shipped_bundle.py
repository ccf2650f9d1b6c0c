"""The shipped bundle samples the same video, bit for bit: one prompt, seed 0, its recommended knobs (sampling.json),
key frames at 1 fps and three interpolation rounds (33 frames), batch 1, cached decoding. The codes are pinned by
their sha256, so any change to the model, the masks, the sampling loop or the seeding shows here."""

import hashlib
from pathlib import Path

import numpy as np
import torch

from cogvideo_lite.sample.knobs import SamplingKnobs, interpolation_knobs
from cogvideo_lite.sample.pipeline import Pipeline, Request, generate_videos

BUNDLE = Path(__file__).resolve().parent.parent / "checkpoints" / "shapes-tiny"
PROMPT = "a red circle moves left slowly"
CODES_SHA256 = "d4f83dc0370858ad0018b374330e7f6e62bfe95bf604c9e4bdd0066a17dbd202"  # (33, 8, 8) int64
KEY_FRAME_CODES_SHA256 = "1a903a58e6a4ea1489c0baefc3d0fcc56a617f000686f6ef8eb5dbd4b5749e9e"  # frames 0, 8, ..., 32


def sha256(codes: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(codes.numpy().astype(np.int64)).tobytes()).hexdigest()


def test_shipped_bundle_samples_the_pinned_codes():
    torch.set_num_threads(1)
    pipeline = Pipeline.load(BUNDLE)
    recommended = pipeline.recommended_knobs
    knobs = SamplingKnobs(top_k=recommended["top_k"], expert_weight=recommended["expert_weight"])
    rounds_knobs = interpolation_knobs(knobs, recommended["interp_top_k"], recommended["interp_expert_weight"])
    [video] = generate_videos(pipeline, Request([PROMPT], key_rate=1, rounds=3, seed=0), knobs, rounds_knobs,
                              progress=False)
    assert tuple(video.codes.shape) == (33, 8, 8) and video.key_indices == [0, 8, 16, 24, 32]
    assert sha256(video.codes[video.key_indices]) == KEY_FRAME_CODES_SHA256
    assert sha256(video.codes) == CODES_SHA256
