"""Conversion between decoded video frames (uint8, channels last) and model frames (float, channels first).

What it is: `to_model_frames` (resize the shorter side with antialiasing, centre crop, scale to [-1, 1]) and its
inverse for display, `to_uint8`.
What it does not know: where frames come from (decord, Pillow, a generator) or how many a clip has.
Where the idea comes from: the usual VQGAN / CogVideo preprocessing (shorter side resize + centre crop).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_model_frames(frames_uint8: np.ndarray, size: int) -> torch.Tensor:
    """frames_uint8 (T, H, W, 3) | (T, H, W, 1) | (T, H, W) uint8 -> (T, 3, size, size) float32 in [-1, 1]."""
    frames = _as_rgb(frames_uint8)                                    # (T, H, W, 3) uint8
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()     # (T, 3, H, W) in [0, 255]
    height, width = pixels.shape[-2:]
    scale = size / min(height, width)
    resized_height, resized_width = max(size, round(height * scale)), max(size, round(width * scale))
    if (resized_height, resized_width) != (height, width):
        pixels = F.interpolate(pixels, size=(resized_height, resized_width), mode="bilinear",
                               align_corners=False, antialias=True)
    top, left = (resized_height - size) // 2, (resized_width - size) // 2
    pixels = pixels[:, :, top:top + size, left:left + size]          # (T, 3, size, size)
    return (pixels / 127.5 - 1.0).clamp(-1.0, 1.0).contiguous()


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """frames (..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8 (rounded, clamped)."""
    pixels = ((frames.detach().float() + 1.0) * 127.5).round().clamp(0, 255)
    return pixels.to(torch.uint8).movedim(-3, -1).cpu().numpy()


def _as_rgb(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected a uint8 numpy array, got {type(frames).__name__} "
                         f"{getattr(frames, 'dtype', '')}")
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or 0 in frames.shape:
        raise ValueError(f"frames: expected shape (T, H, W, 3), (T, H, W, 1) or (T, H, W), got {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if not frames.flags.writeable:   # e.g. np.asarray of a Pillow image; torch wants writable memory
        frames = frames.copy()
    return np.ascontiguousarray(frames)
