"""Where a shape is lost: the checker's shape of frame 0, per captioned shape, from each part of a bundle.

    python -m bench.shape_probe --ckpt checkpoints/shapes-tiny [--seeds 2] [--top-k 20] [--json OUT]
    python -m bench.shape_probe --ckpt checkpoints/shapes-tiny --image runs/img-long/model   # another image export

For every caption of the built-in grammar (56 per shape) and seed, frame 0 is drawn from text alone by
- the image model (the frozen spatial channel every video stage builds on), and
- the key-frame model, where the bundle's key-frame stage was trained with `learn_first_frame`;
with `--image DIR`, the image model is that export instead (it must fit the bundle's frame tokenizer, text model and
layout; the key-frame model is then left out, as it was trained on other image weights). Each decoded frame goes
through the analytic checker (`checker.check_frames`), and the share whose shape is the captioned one is reported
per shape. The tokenizer's own share (true clips encoded and decoded) is
`python -m cogvideo_lite.evaluate shapes --reference DATASET --round-trip`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench.common import write_json
from cogvideo_lite.bundle.make import check_image_fits, resolve_parts
from cogvideo_lite.evaluate.checker import check_frames
from cogvideo_lite.data.shapes import SHAPES, all_captions
from cogvideo_lite.bundle.exports import SPEC_FILE, load_image_model, read_spec
from cogvideo_lite.sample.generate import generate_image, generate_keyframes
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Pipeline, decode_codes, encode_prompts

BATCH = 56


def frame_zero(pipeline: Pipeline, source: str, captions: list[str], knobs: SamplingKnobs, seed: int) -> torch.Tensor:
    """Codes (N, 1, h, w) of frame 0 for each caption, drawn by `source` (image / keyframe) at the lowest rate."""
    pieces = []
    for start in range(0, len(captions), BATCH):
        text_ids, text_pad = encode_prompts(pipeline, captions[start:start + BATCH])
        fps = torch.full((text_ids.shape[0],), pipeline.text.fps_id(min(pipeline.rates)), device=pipeline.device)
        if source == "image":
            codes = generate_image(pipeline.image, text_ids, text_pad, fps, pipeline.text.boi_id, knobs, seed + start)
        else:
            none = torch.zeros(text_ids.shape[0], 0, *pipeline.image.layout.grid, dtype=torch.long,
                               device=pipeline.device)
            codes = generate_keyframes(pipeline.keyframe, text_ids, text_pad, fps, pipeline.text.boi_id, none,
                                       2, knobs, seed + start)[:, :1]  # the stage needs 2 slots: keep frame 0
        pieces.append(codes)
    return torch.cat(pieces)


def shape_shares(frames: np.ndarray, captions: list[str]) -> dict[str, float]:
    """frames (N, H, W, 3) uint8, one per caption -> per captioned shape, the share the checker reads as that shape."""
    right, total = Counter(), Counter()
    for caption, check in zip(captions, check_frames(frames)):
        wanted = caption.split()[2]  # "a <colour> <shape> moves ..."
        total[wanted] += 1
        right[wanted] += check.shape == wanted
    return {shape: right[shape] / total[shape] for shape in SHAPES if total[shape]}


def swap_image_model(pipeline: Pipeline, directory: Path) -> None:
    """Put the image export at `directory` in place of the bundle's; CheckpointMismatch names a contract it breaks."""
    bundle_image = resolve_parts(pipeline.directory)["image"]
    check_image_fits(directory, read_spec(bundle_image), str(bundle_image / SPEC_FILE), "probed in its place")
    pipeline.image, _ = load_image_model(directory, pipeline.device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--image", help="an image export to probe instead of the bundle's (same tokenizer and text)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    pipeline = Pipeline.load(args.ckpt, args.device)
    if args.image:
        swap_image_model(pipeline, Path(args.image))
    knobs = SamplingKnobs(top_k=args.top_k)
    captions = all_captions()
    sources = ["image"] + (["keyframe"] if pipeline.keyframe_makes_first_frame and not args.image else [])
    result = {"ckpt": args.ckpt, "image": args.image, "seeds": args.seeds, "top_k": args.top_k,
              "captions": len(captions)}
    for source in sources:
        codes = torch.cat([frame_zero(pipeline, source, captions, knobs, 1000 * seed) for seed in range(args.seeds)])
        shares = shape_shares(decode_codes(pipeline, codes)[:, 0], captions * args.seeds)
        result[f"{source}_model"] = shares
        print(f"frame 0 from the {source} model: " + ", ".join(f"{s} {v:.3f}" for s, v in shares.items()))
    write_json(Path(args.json) if args.json else None, result)
    return result


if __name__ == "__main__":
    main()
