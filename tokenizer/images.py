"""Reading an image file as one RGB frame, whatever its Pillow mode.

What it is: `read_image(path) -> uint8 (1, H, W, 3)`, used by `tokenizer.evaluate` and by `cogvideo_lite`'s frame
dataset, so both read a file the same way: grey and palette images become RGB, alpha is dropped, 16-bit greyscale is
scaled to 8 bits, and every reason Pillow refuses a file becomes a ValueError that says why.
What it does not know: videos, sizes or the [-1, 1] model range (`tokenizer.frames` does that).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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
