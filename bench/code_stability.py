"""How stable are a frame tokenizer's codes? Flicker makes the video stages model noise instead of motion.

    python -m bench.code_stability --ckpt checkpoints/shapes-tiny/tokenizer --data data/shapes [--clips 20]

On `--clips` built-in clips (5 frames at 1 fps, static background, one moving object) it reports the share of codes
that change under invisible Gaussian noise (sigma 0.5, 1, 2 / 255), under a one-pixel shift of the whole frame, and
between consecutive key frames, the latter for several `steady_margin`s of `VQVAE.encode` (`prepare --steady-margin`)
together with the PSNR of decoding those codes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.common import write_json
from cogvideo_lite.data.video import read_clip
from tokenizer.io import load_tokenizer
from tokenizer.metrics import psnr

MARGINS = (0.0, 0.01, 0.02, 0.05, 0.1)
NOISE_LEVELS = (0.5, 1.0, 2.0)  # sigma in 1/255 steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", default="data/shapes", help="a built-in dataset folder (clips/*.mp4)")
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    model = load_tokenizer(args.ckpt).eval()
    paths = sorted((Path(args.data) / "clips").glob("*.mp4"))[:args.clips]
    if not paths:
        raise SystemExit(f"no clips under {args.data}/clips: make some with python -m cogvideo_lite.data.shapes")
    size = model.config.image_size
    frames = torch.stack([read_clip(path, 5, 1, size, 0.0) for path in paths])  # (N, 5, 3, S, S)
    codes = model.encode(frames)
    generator = torch.Generator().manual_seed(0)
    result = {"clips": len(paths), "noise_flips": {}, "steady": {}}
    for sigma in NOISE_LEVELS:
        noisy = (frames + torch.randn(frames.shape, generator=generator) * sigma * 2 / 255).clamp(-1, 1)
        result["noise_flips"][str(sigma)] = (model.encode(noisy) != codes).float().mean().item()
    result["shift_one_pixel"] = (model.encode(torch.roll(frames, 1, dims=-1)) != codes).float().mean().item()
    for margin in MARGINS:
        steady = model.encode(frames, steady_margin=margin)
        decoded = model.decode(steady).clamp(-1, 1)
        result["steady"][str(margin)] = {
            "changed_between_key_frames": (steady[:, 1:] != steady[:, :-1]).float().mean().item(),
            "psnr": psnr(decoded.flatten(0, 1), frames.flatten(0, 1))}
    print(json.dumps(result, indent=2))
    write_json(Path(args.json) if args.json else None, {"ckpt": args.ckpt, **result})
    return result


if __name__ == "__main__":
    main()
