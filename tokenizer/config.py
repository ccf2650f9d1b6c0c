"""Typed configuration of the frame tokenizer (a per-frame VQVAE) and its registered sizes.

What it is: `TokenizerConfig`, a frozen dataclass that every other tokenizer module reads, validated once in
`__post_init__` (all problems gathered into one `ValueError` naming field, value and expectation), plus the size
registry `TOKENIZER_SIZES` whose keys are the names a user picks from.
What it does not know: YAML, command lines or training schedules; `from_dict` takes a plain mapping (the saved
`config.json`, complete, or what a YAML loader produced, partial).
Where the idea comes from: nanoGPT's `GPTConfig`, litgpt's validated configs, DiT's size registry; the sizes follow
CogVideo (160x160 frames -> 20x20 codes) and LlamaGen (low-dimensional code lookup, 16,384 codes).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

# GroupNorm groups in every encoder/decoder block; every width must be a multiple of it. VQGAN uses 32; 16 keeps two
# channels per group at width 32, where one channel per group would leave the bias of the decoder's last block with a
# zero gradient (a per-channel constant that the following norm removes), which Adam turns into noise-driven drift.
NORM_GROUPS = 16
DOWNSAMPLE_CHOICES = (4, 8, 16)
PERCEPTUAL_CHOICES = ("st_lpips", "none")

_INTEGER_FIELDS = ("image_size", "downsample", "codebook_size", "code_dim", "channels", "num_res_blocks",
                   "usage_window", "disc_start")
_WEIGHT_FIELDS = ("l1_weight", "l2_weight", "commitment_weight", "perceptual_weight", "entropy_weight", "disc_weight")
_FLOAT_FIELDS = ("ema_decay", "dead_code_threshold") + _WEIGHT_FIELDS


@dataclass(frozen=True)
class TokenizerConfig:
    image_size: int = 64                  # frames are image_size x image_size pixels
    downsample: int = 8                   # pixels per code along each side (CogVideo: 8)
    codebook_size: int = 1024             # number of codes K
    code_dim: int = 8                     # dimension of the l2-normalised lookup space (LlamaGen: 8)
    channels: int = 64                    # base width of encoder and decoder
    # One width multiplier per resolution level: log2(downsample) downsamplings give log2(downsample) + 1 levels.
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 1               # residual blocks per resolution level
    ema_decay: float = 0.99               # decay of the EMA codebook statistics (VQ-VAE-2)
    # A code whose EMA assignment count (per training step) falls under this is restarted from an encoder vector.
    # Keep it well below tokens_per_step / codebook_size, the count of a code in uniform use.
    dead_code_threshold: float = 0.05
    usage_window: int = 65536             # tokens in the rolling window that codebook usage is measured over
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    commitment_weight: float = 0.25       # beta of VQ-VAE
    perceptual_weight: float = 0.0        # 0 = off
    perceptual: str = "none"              # "st_lpips" | "none"
    entropy_weight: float = 0.0           # 0 = off; codebook entropy penalty (LlamaGen / MAGVIT)
    disc_weight: float = 0.0              # 0 = off; PatchGAN generator loss weight
    disc_start: int = 0                   # training step from which the adversarial loss is on

    def __post_init__(self) -> None:
        problems = self._type_problems()
        if not problems:
            problems = self._value_problems()
        if problems:
            raise ValueError("invalid TokenizerConfig: " + "; ".join(problems))

    # ---------------------------------------------------------------- validation
    def _type_problems(self) -> list[str]:
        integer = lambda value: isinstance(value, int) and not isinstance(value, bool)  # noqa: E731
        expected = {**{name: (integer, "an integer") for name in _INTEGER_FIELDS},
                    **{name: (lambda v: integer(v) or isinstance(v, float), "a number") for name in _FLOAT_FIELDS},
                    "channel_mult": (lambda v: isinstance(v, tuple) and all(map(integer, v)), "a tuple of integers"),
                    "perceptual": (lambda v: isinstance(v, str), f"one of {PERCEPTUAL_CHOICES}")}
        return [f"{name}={getattr(self, name)!r}: expected {what}" for name, (accepts, what) in expected.items()
                if not accepts(getattr(self, name))]

    def _value_problems(self) -> list[str]:
        problems = []
        if self.downsample not in DOWNSAMPLE_CHOICES:
            problems.append(f"downsample={self.downsample}: expected one of {DOWNSAMPLE_CHOICES}")
        elif self.image_size <= 0 or self.image_size % self.downsample:
            problems.append(f"image_size={self.image_size}: expected a positive multiple of downsample "
                            f"({self.downsample})")
        elif len(self.channel_mult) != int(math.log2(self.downsample)) + 1:
            problems.append(f"channel_mult={self.channel_mult}: expected {int(math.log2(self.downsample)) + 1} "
                            f"entries (log2(downsample) + 1)")
        for name in ("codebook_size", "code_dim", "channels", "num_res_blocks", "usage_window"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: expected >= 1")
        if any(m < 1 for m in self.channel_mult):
            problems.append(f"channel_mult={self.channel_mult}: expected entries >= 1")
        elif self.channels >= 1 and any((self.channels * m) % NORM_GROUPS for m in self.channel_mult):
            problems.append(f"channels={self.channels}: expected channels * each channel_mult to be a multiple "
                            f"of {NORM_GROUPS} (GroupNorm groups)")
        if not 0.0 < self.ema_decay < 1.0:
            problems.append(f"ema_decay={self.ema_decay}: expected 0 < ema_decay < 1")
        for name in ("dead_code_threshold",) + _WEIGHT_FIELDS:
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)}: expected >= 0")
        if self.disc_start < 0:
            problems.append(f"disc_start={self.disc_start}: expected >= 0")
        if self.perceptual not in PERCEPTUAL_CHOICES:
            problems.append(f"perceptual={self.perceptual!r}: expected one of {PERCEPTUAL_CHOICES}")
        elif self.perceptual_weight > 0 and self.perceptual == "none":
            problems.append(f"perceptual_weight={self.perceptual_weight}: expected 0 when perceptual='none'")
        return problems

    # ---------------------------------------------------------------- derived numbers
    @property
    def grid(self) -> tuple[int, int]:
        """Code grid (h, w) of one frame."""
        side = self.image_size // self.downsample
        return side, side

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.grid
        return h * w

    # ---------------------------------------------------------------- plain-mapping round trip
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], where: str = "tokenizer config",
                  complete: bool = False) -> TokenizerConfig:
        """Build from a plain mapping; unknown keys are an error naming them and `where` they came from.

        `complete=True` (a saved tokenizer's config.json) also refuses missing keys: a default would silently describe
        another tokenizer than the one trained (image_size changes no weight shape, so the weights would still load).
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        missing = sorted(known - set(mapping))
        if complete and missing:
            raise ValueError(f"{where}: missing key(s) {missing}; a saved tokenizer config must give every field")
        values = dict(mapping)
        if isinstance(values.get("channel_mult"), list):
            values["channel_mult"] = tuple(values["channel_mult"])
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None


TOKENIZER_SIZES: dict[str, TokenizerConfig] = {
    # CPU tests and the demo: 64x64 frames -> 8x8 codes.
    "tiny": TokenizerConfig(image_size=64, downsample=8, codebook_size=1024, code_dim=8, channels=32,
                            channel_mult=(1, 2, 2, 4), num_res_blocks=1),
    # One GPU: 128x128 frames -> 16x16 codes.
    "small": TokenizerConfig(image_size=128, downsample=8, codebook_size=8192, code_dim=8, channels=64,
                             channel_mult=(1, 2, 2, 4), num_res_blocks=2),
    # CogVideo's frames: 160x160 -> 20x20 codes; LlamaGen's 16,384 codes.
    "base": TokenizerConfig(image_size=160, downsample=8, codebook_size=16384, code_dim=8, channels=128,
                            channel_mult=(1, 1, 2, 4), num_res_blocks=2),
}
