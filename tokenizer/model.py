"""The per-frame VQVAE: a convolutional encoder, the vector quantizer and a convolutional decoder.

What it is: `Encoder` and `Decoder` (VQGAN-style residual blocks with GroupNorm + SiLU, stride-2 convolutions down,
nearest upsampling + convolution up; no attention, to stay small) and `VQVAE`, which tokenizes every frame of a clip
independently: frames (B, T, 3, H, W) in [-1, 1] <-> codes (B, T, h, w) int64.
What it does not know: losses, discriminators, optimizers, files (see losses.py, discriminator.py, io.py).
Where the idea comes from: VQGAN (Esser et al. 2021) at a small size; CogVideo tokenizes frames one by one so
that images and videos share one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.config import NORM_GROUPS, TokenizerConfig
from tokenizer.quantizer import VectorQuantizer


@dataclass
class TokenizerOutput:
    recon: torch.Tensor                  # (B, T, 3, H, W), unclamped, about [-1, 1]
    codes: torch.Tensor                  # (B, T, h, w) int64
    commitment_loss: torch.Tensor        # scalar, unweighted
    perplexity: torch.Tensor             # scalar, of this batch's codes
    entropy_loss: torch.Tensor | None    # scalar when config.entropy_weight > 0, else None


# ---------------------------------------------------------------------------- building blocks
class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)                                           # (N, C, H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))   # (N, C, 2H, 2W)


def _level_widths(config: TokenizerConfig) -> list[int]:
    return [config.channels * multiplier for multiplier in config.channel_mult]


# ---------------------------------------------------------------------------- encoder / decoder
class Trunk(nn.Module):
    """conv_in -> residual blocks (and resampling) -> GroupNorm -> SiLU -> conv_out: the shape of both halves."""

    def __init__(self, conv_in: nn.Conv2d, layers: list[nn.Module], width: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = conv_in
        self.blocks = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(NORM_GROUPS, width)
        self.conv_out = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class Encoder(Trunk):
    """(N, 3, H, W) -> features (N, C, h, w), C = channels * channel_mult[-1]."""

    def __init__(self, config: TokenizerConfig) -> None:
        widths = _level_widths(config)
        conv_in = nn.Conv2d(3, widths[0], kernel_size=3, padding=1)
        layers: list[nn.Module] = []
        previous = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers.append(ResidualBlock(previous, width))
                previous = width
            if level < len(widths) - 1:
                layers.append(Downsample(width))
        layers += [ResidualBlock(previous, previous), ResidualBlock(previous, previous)]   # middle
        super().__init__(conv_in, layers, previous, previous)
        self.out_channels = previous


class Decoder(Trunk):
    """unit code vectors (N, code_dim, h, w) -> frames (N, 3, H, W)."""

    def __init__(self, config: TokenizerConfig) -> None:
        widths = _level_widths(config)
        conv_in = nn.Conv2d(config.code_dim, widths[-1], kernel_size=3, padding=1)
        previous = widths[-1]
        layers: list[nn.Module] = [ResidualBlock(previous, previous), ResidualBlock(previous, previous)]  # middle
        for level in reversed(range(len(widths))):
            for _ in range(config.num_res_blocks):
                layers.append(ResidualBlock(previous, widths[level]))
                previous = widths[level]
            if level > 0:
                layers.append(Upsample(previous))
        super().__init__(conv_in, layers, previous, 3)


# ---------------------------------------------------------------------------- VQVAE
class VQVAE(nn.Module):
    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(
            self.encoder.out_channels, config.codebook_size, config.code_dim, config.ema_decay,
            config.dead_code_threshold, config.usage_window, compute_entropy_loss=config.entropy_weight > 0)
        self.decoder = Decoder(config)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, where VQGAN's adaptive adversarial weight compares gradients."""
        return self.decoder.conv_out.weight

    def forward(self, frames: torch.Tensor) -> TokenizerOutput:
        """frames (B, T, 3, H, W) in [-1, 1] -> TokenizerOutput; training mode also updates the codebook."""
        batch, time = self._check_frames(frames)
        flat = frames.reshape(batch * time, *frames.shape[2:])               # (B*T, 3, H, W)
        quantized = self.quantizer(self.encoder(flat))
        recon = self.decoder(quantized.quantized)                            # (B*T, 3, H, W)
        return TokenizerOutput(
            recon=recon.view(batch, time, *recon.shape[1:]),
            codes=quantized.codes.view(batch, time, *quantized.codes.shape[1:]),
            commitment_loss=quantized.commitment_loss,
            perplexity=quantized.perplexity,
            entropy_loss=quantized.entropy_loss)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, steady_margin: float = 0.0) -> torch.Tensor:
        """frames (B, T, 3, H, W) in [-1, 1] -> codes (B, T, h, w) int64; never changes the codebook.

        steady_margin > 0 (for clips): frame t keeps frame t-1's code at a position wherever that code's cosine
        similarity is within the margin of the nearest code's (`VectorQuantizer.lookup_steady`)."""
        batch, time = self._check_frames(frames)
        if steady_margin < 0:
            raise ValueError(f"steady_margin={steady_margin}: expected >= 0")
        features = self.encoder(frames.reshape(batch * time, *frames.shape[2:]))
        if steady_margin == 0:
            return self.quantizer.lookup(features).view(batch, time, *self.config.grid)  # (B, T, h, w)
        features = features.view(batch, time, *features.shape[1:])
        codes = [self.quantizer.lookup(features[:, 0])]  # each (B, h, w)
        for t in range(1, time):
            codes.append(self.quantizer.lookup_steady(features[:, t], codes[-1], steady_margin))
        return torch.stack(codes, dim=1)  # (B, T, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T, h, w) int64 -> frames (B, T, 3, H, W), unclamped."""
        if codes.ndim != 4 or tuple(codes.shape[2:]) != self.config.grid:
            raise ValueError(f"decode: expected codes (B, T, {self.config.grid[0]}, {self.config.grid[1]}), "
                             f"got {tuple(codes.shape)}")
        batch, time = codes.shape[:2]
        recon = self.decoder(self.quantizer.embed(codes.reshape(batch * time, *codes.shape[2:])))
        return recon.view(batch, time, *recon.shape[1:])

    def _check_frames(self, frames: torch.Tensor) -> tuple[int, int]:
        size = self.config.image_size
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (3, size, size):
            raise ValueError(f"expected frames (B, T, 3, {size}, {size}), got {tuple(frames.shape)}")
        return frames.shape[0], frames.shape[1]
