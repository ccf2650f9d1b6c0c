"""Frames as files give them and as the model takes them: reading an image file as one RGB frame, and conversion
between decoded frames (uint8, channels last) and model frames (float, channels first).

What it is: `read_image(path) -> uint8 (1, H, W, 3)`, used by `tokenizer.evaluate` and by `cogvideo_lite`'s frame
dataset, so both read a file the same way (grey and palette images become RGB, alpha is dropped, 16-bit greyscale is
scaled to 8 bits, and every reason Pillow refuses a file becomes a ValueError that says why); `to_model_frames`
(resize the shorter side with antialiasing, centre crop, scale to [-1, 1]) and its inverse for display, `to_uint8`.
What it does not know: videos (decord, a generator) or how many frames a clip has.
Where the idea comes from: the usual VQGAN / CogVideo preprocessing (shorter side resize + centre crop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_model_frames(frames_uint8: np.ndarray, size: int) -> torch.Tensor:
    """frames_uint8 (T, H, W, 3) | (T, H, W, 1) | (T, H, W) uint8 -> (T, 3, size, size) float32 in [-1, 1]."""
    frames = _as_rgb(frames_uint8)                                    # (T, H, W, 3) uint8
    pixels = resize_shorter_side(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size)  # (T, 3, H', W')
    top, left = (pixels.shape[-2] - size) // 2, (pixels.shape[-1] - size) // 2
    pixels = pixels[:, :, top:top + size, left:left + size]          # (T, 3, size, size)
    return (pixels / 127.5 - 1.0).clamp(-1.0, 1.0).contiguous()


def resize_shorter_side(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """pixels (T, C, H, W) float -> (T, C, H', W') with min(H', W') == side, aspect kept (antialiased bilinear)."""
    height, width = pixels.shape[-2:]
    scale = side / min(height, width)
    target = (max(side, round(height * scale)), max(side, round(width * scale)))
    if target == (height, width):
        return pixels
    return F.interpolate(pixels, size=target, mode="bilinear", align_corners=False, antialias=True)


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


# Pillow modes holding 16-bit greyscale samples: 16-bit PNGs open as "I;16" (older Pillow versions used "I", its
# 32-bit integer mode). convert("RGB") clips them at 255 (white), so they are scaled by 255 / 65535 instead.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
SIXTEEN_BIT_MAX = 65535


def read_image(path: Path) -> np.ndarray:
    """An image file as one frame: uint8 (1, H, W, 3). Grey and palette images become RGB, alpha is dropped, and
    16-bit greyscale is scaled to 8 bits. ValueError with Pillow's reason when it cannot read the file (not an image,
    truncated, or over its decompression-bomb pixel limit) or the samples are floats (no standard 8-bit scale)."""
    try:
        with Image.open(path) as image:
            return _as_rgb8(image)[None]
    except (OSError, Image.DecompressionBombError) as error:  # the latter is not an OSError
        raise ValueError(str(error)) from error


def _as_rgb8(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of an open Pillow image."""
    if image.mode in SIXTEEN_BIT_MODES:
        samples = np.asarray(image).astype(np.float64)                        # (H, W) in [0, 65535]
        grey = np.round(samples * 255 / SIXTEEN_BIT_MAX).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "F":
        raise ValueError("32-bit float samples (mode 'F'): no standard scale to 8 bits; save it as 8 or 16 bits")
    return np.array(image.convert("RGB"))
