"""Fréchet distances between feature sets: the distance itself, FVD over I3D features and FID over Inception features.

What it is: `statistics(features)` (mean and covariance), `frechet_distance(mu1, sigma1, mu2, sigma2)`, the
squared 2-Wasserstein distance between two Gaussians,

    d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^1/2 sigma2 sigma1^1/2)^1/2),

and `fvd` / `fid`, which run a feature network over two sets of uint8 videos / frames and compare them.
The trace term is computed in a symmetric eigen form (float64): sigma1^1/2 from an eigendecomposition, then the
eigenvalues of the symmetric positive semi-definite sigma1^1/2 sigma2 sigma1^1/2, whose square roots sum to the
trace. Unlike scipy.linalg.sqrtm of the non-symmetric sigma1 sigma2 (same eigenvalues), it yields no imaginary
parts; eigenvalues that round-off pushes below zero are clipped to zero.

Feature networks are TorchScript files on the user's disk, loaded only from the path given (`--i3d PATH`,
`--inception PATH`); nothing here downloads, and the project ships no weights (they cannot be fetched here, so the
tests use a tiny random TorchScript network with the same calling convention). A TorchScript archive contains code:
load only files from a source you trust. The calling conventions are those of the files the published numbers use:
- I3D: `i3d_torchscript.pt` (StyleGAN-V, Skorokhodov et al. 2022; the Kinetics-400 I3D of the original FVD,
  Unterthiner et al. 2018), called as `network(videos, rescale=True, resize=True, return_features=True)` on float
  videos (N, 3, T, H, W) in [0, 255]; it rescales to [-1, 1] and resizes to 224 itself; returns (N, 400).
- Inception: `inception-2015-12-05.pt` (StyleGAN2-ADA, Karras et al. 2020; the TensorFlow FID network of Heusel
  et al. 2017), called as `network(images, return_features=True)` on uint8 images (N, 3, H, W); it resizes to 299
  itself; returns (N, 2048).

What it does not know: where videos come from or what they show (see `shapes.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

I3D_ARGUMENTS = {"rescale": True, "resize": True, "return_features": True}
INCEPTION_ARGUMENTS = {"return_features": True}


# ----------------------------------------------------------------------------------------------------------------
# The distance
# ----------------------------------------------------------------------------------------------------------------

def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (N, F), N >= 2 -> (mu (F,), sigma (F, F)) float64, sigma the unbiased covariance."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"statistics: expected features (N, F) with N >= 2, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("statistics: features contain NaN or infinity")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _symmetric_square_root(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (F, F) (negative round-off eigenvalues -> 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); mu (F,), sigma (F, F)."""
    mu1, mu2 = (np.atleast_1d(np.asarray(mu, dtype=np.float64)) for mu in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(sigma, dtype=np.float64)) for sigma in (sigma1, sigma2))
    size = mu1.shape[0]
    if mu1.shape != (size,) or mu2.shape != (size,) or sigma1.shape != (size, size) or sigma2.shape != (size, size):
        raise ValueError(f"frechet_distance: expected mu (F,) and sigma (F, F) for one F, got mu1 {mu1.shape}, "
                         f"sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    root = _symmetric_square_root(sigma1)
    middle = root @ sigma2 @ root  # (F, F) symmetric positive semi-definite
    trace_of_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_of_root
    return float(max(distance, 0.0))


# ----------------------------------------------------------------------------------------------------------------
# Feature networks
# ----------------------------------------------------------------------------------------------------------------

def load_feature_network(path: str | Path | None, flag: str,
                         device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript network at `path` in eval mode; FileNotFoundError naming `flag` when there is no such file."""
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; give the local TorchScript weights file (see "
                                "cogvideo_lite/evaluate/frechet.py for which one): nothing is downloaded")
    try:
        network = torch.jit.load(str(path), map_location=device)
    except RuntimeError as error:
        raise ValueError(f"{flag} {path}: not a TorchScript archive ({str(error).splitlines()[0]})") from error
    return network.eval()


@torch.no_grad()
def _features(network: torch.jit.ScriptModule, arrays: np.ndarray, batch_size: int, to_input, arguments: dict,
              what: str) -> np.ndarray:
    """Run the network over `arrays` in batches of `batch_size`, each made its input by `to_input`: (N, F) float64."""
    device = next(iter(network.parameters()), torch.empty(0)).device
    outputs = []
    for start in range(0, len(arrays), batch_size):
        batch = to_input(torch.from_numpy(arrays[start:start + batch_size]).to(device))
        features = network(batch, **arguments)
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != batch.shape[0]:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"{what} network: expected features ({batch.shape[0]}, F) for a batch of "
                             f"{batch.shape[0]}, got {shape}")
        outputs.append(features.double().cpu().numpy())
    return np.concatenate(outputs)


def video_features(network: torch.jit.ScriptModule, videos: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """videos (N, T, H, W, 3) uint8 -> I3D features (N, F) float64."""
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"video_features: expected uint8 videos (N, T, H, W, 3), got {videos.dtype} {videos.shape}")
    return _features(network, videos, batch_size, lambda batch: batch.permute(0, 4, 1, 2, 3).float(),  # (b, 3, T, H, W)
                     I3D_ARGUMENTS, "I3D")


def frame_features(network: torch.jit.ScriptModule, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """frames (N, H, W, 3) uint8 -> Inception features (N, F) float64."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frame_features: expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
    return _features(network, frames, batch_size, lambda batch: batch.permute(0, 3, 1, 2).contiguous(),  # (b, 3, H, W)
                     INCEPTION_ARGUMENTS, "Inception")


def fvd(network: torch.jit.ScriptModule, videos: np.ndarray, reference: np.ndarray, batch_size: int = 8) -> float:
    """FVD between two sets of videos (N, T, H, W, 3) uint8 (the same T; N >= 2 each)."""
    first, second = video_features(network, videos, batch_size), video_features(network, reference, batch_size)
    return frechet_distance(*statistics(first), *statistics(second))


def fid(network: torch.jit.ScriptModule, frames: np.ndarray, reference: np.ndarray, batch_size: int = 64) -> float:
    """Frame-level FID between two sets of frames (N, H, W, 3) uint8 (N >= 2 each)."""
    first, second = frame_features(network, frames, batch_size), frame_features(network, reference, batch_size)
    return frechet_distance(*statistics(first), *statistics(second))
