"""Frame tokenizer: a per-frame VQVAE turning frames (B, T, 3, H, W) in [-1, 1] into codes (B, T, h, w) and back.

This package imports nothing from `cogvideo_lite`; the generator imports it, never the other way round.
"""

from tokenizer.config import TOKENIZER_SIZES, TokenizerConfig
from tokenizer.frames import to_model_frames, to_uint8
from tokenizer.io import load_tokenizer, save_tokenizer
from tokenizer.model import TokenizerOutput, VQVAE

__all__ = ["TOKENIZER_SIZES", "TokenizerConfig", "TokenizerOutput", "VQVAE", "load_tokenizer", "save_tokenizer",
           "to_model_frames", "to_uint8"]
