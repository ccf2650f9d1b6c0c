"""Does the key-frame model move the object when it starts from a real first frame?

    python -m bench.keyframe_probe --ckpt checkpoints/shapes-tiny --shards runs/shards-tiny [--count 24] [--top-k 1]

Takes shard samples at 1 fps, gives the key-frame model their true frame 0 (and caption), generates frames 1..4, and
compares the direction found by the analytic checker with the true clip's. Separates the key-frame model's motion from
the image model's first frame: `python -m cogvideo_lite.evaluate shapes` measures the two together.
"""

from __future__ import annotations

import argparse

import torch

from cogvideo_lite.checker import check_video
from cogvideo_lite.model.generate import generate_keyframes
from cogvideo_lite.model.sampling import SamplingKnobs
from cogvideo_lite.pipeline import Pipeline, decode_codes
from cogvideo_lite.shards import TokenShards


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pipeline = Pipeline.load(args.ckpt)
    shards = TokenShards(args.shards)
    rate = min(pipeline.rates)
    indices = shards.indices_with_rate([rate])[:args.count]
    items = [shards[i] for i in indices]
    codes = torch.stack([item["codes"] for item in items])  # (B, 5, h, w)
    text = torch.stack([item["text"] for item in items])
    fps = torch.full((len(items),), pipeline.text.fps_id(rate))
    generated = generate_keyframes(pipeline.keyframe, text, text == pipeline.text.pad_id, fps, pipeline.text.boi_id,
                                   codes[:, :1], codes.shape[1], SamplingKnobs(top_k=args.top_k), args.seed)
    truth_frames, fake_frames = decode_codes(pipeline, codes), decode_codes(pipeline, generated)
    agree = 0
    for row, index in enumerate(indices):
        truth, fake = check_video(truth_frames[row]), check_video(fake_frames[row])
        agree += truth.direction == fake.direction
        print(f"{shards.source(index)['caption']:40s} truth {truth.direction:6s} generated {fake.direction}")
    result = {"samples": len(indices), "direction_agreement": agree / max(1, len(indices))}
    print(f"direction of generated key frames = direction of the real clip: {agree}/{len(indices)}")
    return result


if __name__ == "__main__":
    main()
