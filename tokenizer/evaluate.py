"""Evaluate a saved tokenizer on real footage: PSNR, SSIM, ST-LPIPS, codebook usage and perplexity.

What it is: `evaluate_frames(model, frames)` (also called by the training loop on a held-out clip) and the command
`python -m tokenizer.evaluate --ckpt DIR --data PATH [--json OUT] [--max-frames N]`, where PATH is a video, an image,
or a folder of them. Videos are read with decord, images with Pillow (`read_image`, which `cogvideo_lite`'s frame
dataset uses too: any Pillow mode, 16-bit grey scaled to 8 bits); a file that cannot be read is skipped with a
warning that names it and the reason.
What it does not know: datasets, captions or frame rates (it reads files directly; `cogvideo_lite` is not imported).
Where the idea comes from: the usual tokenizer report (LlamaGen, MAGVIT): reconstruction quality plus codebook use.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tokenizer.frames import read_image, to_model_frames
from tokenizer.io import load_tokenizer
from tokenizer.metrics import codebook_usage, perplexity, psnr_per_frame, ssim_per_frame
from tokenizer.model import VQVAE

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
FRAMES_PER_CHUNK = 16     # frames through the model at once, to bound memory
DEFAULT_MAX_FRAMES = 64   # frames per video, evenly spaced


@torch.no_grad()
def evaluate_frames(model: VQVAE, frames: torch.Tensor, perceptual: nn.Module | None = None) -> dict[str, float | int | None]:
    """frames (B, T, 3, H, W) or (T, 3, H, W) in [-1, 1] -> metrics of encode -> decode.

    Returns psnr (dB, mean per frame), ssim, st_lpips (None without a perceptual module), usage (distinct codes /
    codebook size over the evaluated tokens), perplexity and frames. The model's train/eval mode is restored.
    """
    clip = frames.reshape(-1, *frames.shape[-3:])                          # (N, 3, H, W)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    psnrs, ssims, distances, all_codes = [], [], [], []
    for start in range(0, clip.shape[0], FRAMES_PER_CHUNK):
        chunk = clip[start:start + FRAMES_PER_CHUNK].to(device).unsqueeze(0)    # (1, n, 3, H, W)
        codes = model.encode(chunk)                                        # (1, n, h, w)
        recon = model.decode(codes).float().clamp(-1.0, 1.0)
        psnrs.append(psnr_per_frame(recon, chunk))
        ssims.append(ssim_per_frame(recon, chunk))
        if perceptual is not None:
            distances.append(perceptual(recon, chunk).float().cpu())
        all_codes.append(codes.reshape(-1).cpu())
    model.train(was_training)
    codes = torch.cat(all_codes)
    codebook_size = model.config.codebook_size
    return {
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "st_lpips": float(torch.cat(distances).mean()) if distances else None,
        "usage": codebook_usage(codes, codebook_size),
        "perplexity": float(perplexity(codes, codebook_size)),
        "frames": int(clip.shape[0]),
    }


# ---------------------------------------------------------------------------- reading files
def media_files(path: Path) -> list[Path]:
    """The video and image files at `path` (a file, or a folder searched recursively, sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    files = []
    for candidate in sorted(path.rglob("*")):
        if candidate.is_file() and candidate.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES:
            files.append(candidate)
        elif candidate.is_file():
            logger.warning("skipping %s: not a video or image file (suffix %r)", candidate, candidate.suffix)
    return files


def read_video(path: Path, max_frames: int) -> np.ndarray:
    """At most max_frames of a video, evenly spaced: uint8 (T, H, W, 3). RuntimeError when decord cannot open it,
    ValueError when it has no frames or decord fails on it otherwise."""
    import decord  # here: reading images needs no decord

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        if len(reader) == 0:
            raise ValueError("video has no frames")
        indices = np.linspace(0, len(reader) - 1, min(len(reader), max_frames)).round().astype(np.int64)
        return reader.get_batch(indices.tolist()).asnumpy()
    except decord.DECORDError as error:  # not a RuntimeError; e.g. decord 0.6 cannot copy out frames of a few widths
        raise ValueError(f"decord cannot decode it: {str(error).splitlines()[0]}") from error


def read_frames(path: Path, max_frames: int) -> np.ndarray:
    """A video's frames (at most max_frames, evenly spaced) or an image as one frame: uint8 (T, H, W, 3)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"unknown suffix {path.suffix!r}")
    return read_video(path, max_frames)


def load_dataset_frames(path: Path, size: int, max_frames: int) -> torch.Tensor:
    """All readable frames under `path` as (N, 3, size, size) in [-1, 1]; unreadable files are skipped by name."""
    clips = []
    for file in media_files(path):
        try:
            clips.append(to_model_frames(read_frames(file, max_frames), size))
        except (RuntimeError, OSError, ValueError) as error:
            logger.warning("skipping %s: %s", file, error)
    if not clips:
        raise ValueError(f"--data {path}: no readable video or image")
    return torch.cat(clips)


# ---------------------------------------------------------------------------- command line
def format_table(results: dict[str, float | int | None]) -> str:
    lines = [f"{'metric':<12}{'value':>12}"]
    for name, value in results.items():
        shown = "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
        lines.append(f"{name:<12}{shown:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float | int | None]:
    parser = argparse.ArgumentParser(prog="python -m tokenizer.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="tokenizer directory (config.json, model.safetensors)")
    parser.add_argument("--data", type=Path, required=True, help="a video, an image, or a folder of them")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help="frames per video, evenly spaced")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.max_frames < 1:
        parser.error(f"--max-frames {args.max_frames}: expected >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.data.exists():
        parser.error(f"--data {args.data}: no such file or folder")
    if not media_files(args.data):
        parser.error(f"--data {args.data}: no video or image file in it (suffixes "
                     f"{', '.join(sorted(VIDEO_SUFFIXES | IMAGE_SUFFIXES))})")

    from tokenizer.perceptual import STLPIPS

    try:
        model = load_tokenizer(args.ckpt, device=args.device)
    except (OSError, ValueError) as error:  # a missing or malformed config.json / model.safetensors, named
        parser.error(f"--ckpt {args.ckpt}: not a tokenizer directory: {' '.join(str(error).split())}")
    try:
        frames = load_dataset_frames(args.data, model.config.image_size, args.max_frames)
    except ValueError as error:  # every file was unreadable (each one was named in a warning)
        parser.error(str(error))
    results = evaluate_frames(model, frames, perceptual=STLPIPS().to(args.device))
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
