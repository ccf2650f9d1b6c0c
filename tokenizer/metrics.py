"""Reconstruction and codebook metrics: PSNR, SSIM, code perplexity and codebook usage.

What it is: plain functions on tensors. Frames are float tensors (..., 3, H, W) (data range 2 for [-1, 1]) or
uint8 numpy arrays (..., H, W, 3) as decoded (data range 255); each frame is scored alone and the scores averaged.
What it does not know: models, files, or how the frames were made.
Where the idea comes from: `ssim` reproduces scikit-image's `structural_similarity` with the settings of Wang et al.
2004 (gaussian weights, sigma 1.5, population covariance, 11-tap window, border of 5 pixels cropped).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

UINT8_RANGE = 255.0
MODEL_RANGE = 2.0              # frames in [-1, 1]
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5            # scikit-image: gives an 11-tap window for sigma 1.5


def psnr_per_frame(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                   data_range: float | None = None) -> torch.Tensor:
    """PSNR of each frame, float64 (N,) where N is the product of the leading dimensions."""
    first, second, data_range = _as_frames(a, b, data_range)         # (N, 3, H, W) float64
    mse = (first - second).pow(2).mean(dim=(1, 2, 3))                 # (N,)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, data_range: float | None = None) -> float:
    """Mean over frames of the per-frame PSNR in dB (inf for identical frames)."""
    return float(psnr_per_frame(a, b, data_range).mean())


def ssim_per_frame(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                   data_range: float | None = None) -> torch.Tensor:
    """SSIM of each frame (mean over channels of the cropped SSIM map), float64 (N,)."""
    first, second, data_range = _as_frames(a, b, data_range)         # (N, 3, H, W) float64
    kernel = _gaussian_kernel(first.device)                           # (taps,)
    if min(first.shape[-2:]) < kernel.numel():
        raise ValueError(f"ssim: frames of {tuple(first.shape[-2:])} pixels are smaller than the "
                         f"{kernel.numel()}-pixel window")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mean_a, mean_b = _blur(first, kernel), _blur(second, kernel)
    var_a = _blur(first * first, kernel) - mean_a * mean_a
    var_b = _blur(second * second, kernel) - mean_b * mean_b
    covariance = _blur(first * second, kernel) - mean_a * mean_b
    ssim_map = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))      # (N, 3, H - 10, W - 10)
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)                      # per channel, then over channels


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, data_range: float | None = None) -> float:
    """Mean over frames of the per-frame SSIM."""
    return float(ssim_per_frame(a, b, data_range).mean())


def perplexity(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy of the code histogram): 1 when one code is used, codebook_size when all are used equally."""
    return perplexity_of_counts(torch.bincount(codes.reshape(-1), minlength=codebook_size))


def perplexity_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """counts (K,) of each code -> exp(entropy of the normalised histogram), float32 scalar."""
    counts = counts.double()
    probabilities = counts / counts.sum().clamp(min=1.0)
    entropy = -(probabilities * torch.log(probabilities.clamp(min=1e-300))).sum()  # 0 log 0 = 0
    return torch.exp(entropy).float()


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> float:
    """Distinct codes among `codes` / codebook_size."""
    return torch.unique(codes.reshape(-1)).numel() / codebook_size


# ---------------------------------------------------------------------------- helpers
def _as_frames(a, b, data_range: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Both inputs as float64 (N, 3, H, W) tensors, with the data range their type implies."""
    if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
        raise ValueError("metrics: compare two numpy arrays or two tensors, not one of each")
    if isinstance(a, np.ndarray):
        if a.dtype != np.uint8 or b.dtype != np.uint8:
            raise ValueError(f"metrics: numpy frames must be uint8 (..., H, W, 3), got {a.dtype} and {b.dtype}")
        a, b = (torch.from_numpy(np.ascontiguousarray(x)).movedim(-1, -3) for x in (a, b))
        data_range = UINT8_RANGE if data_range is None else data_range
    if a.shape != b.shape or a.ndim < 3 or a.shape[-3] != 3:
        raise ValueError(f"metrics: expected two frame tensors of equal shape (..., 3, H, W), "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    data_range = MODEL_RANGE if data_range is None else data_range
    first = a.detach().reshape(-1, *a.shape[-3:]).double()
    second = b.detach().reshape(-1, *b.shape[-3:]).double().to(first.device)
    return first, second, float(data_range)


def _gaussian_kernel(device: torch.device) -> torch.Tensor:
    """scipy.ndimage's 1-D gaussian: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    weights = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return weights / weights.sum()


def _blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable gaussian filter, valid region only: (N, C, H, W) -> (N, C, H - taps + 1, W - taps + 1).

    scikit-image filters with reflection and then crops (taps - 1) / 2 pixels from each border, which removes exactly
    the pixels that reflection touched; the valid convolution computes the same numbers directly.
    """
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    return F.conv2d(F.conv2d(images, horizontal, groups=channels), vertical, groups=channels)

