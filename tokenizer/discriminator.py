"""A small PatchGAN discriminator: one real/fake logit per overlapping patch of a frame.

What it is: `PatchDiscriminator`, applied to every frame independently, frames (B, T, 3, H, W) in [-1, 1] ->
logits (B, T, 1, h', w').
What it does not know: losses (hinge_d_loss / generator_adv_loss live in losses.py) or when training turns it on.
Where the idea comes from: pix2pix's NLayerDiscriminator as used by VQGAN; GroupNorm replaces BatchNorm so that
the result does not depend on how a batch is split across ranks.
"""

from __future__ import annotations

import torch
from torch import nn

LEAKY_SLOPE = 0.2          # pix2pix
KERNEL, PADDING = 4, 1     # pix2pix
MAX_WIDTH_MULTIPLIER = 8   # pix2pix caps the width at 8 x the base width
MAX_NORM_GROUPS = 32


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, KERNEL, stride=2, padding=PADDING),
                                   nn.LeakyReLU(LEAKY_SLOPE)]
        width = channels
        for layer in range(1, num_layers + 1):
            next_width = channels * min(2 ** layer, MAX_WIDTH_MULTIPLIER)
            stride = 2 if layer < num_layers else 1                 # the last one keeps the resolution
            layers += [nn.Conv2d(width, next_width, KERNEL, stride=stride, padding=PADDING, bias=False),
                       nn.GroupNorm(min(MAX_NORM_GROUPS, next_width), next_width),
                       nn.LeakyReLU(LEAKY_SLOPE)]
            width = next_width
        layers.append(nn.Conv2d(width, 1, KERNEL, stride=1, padding=PADDING))
        self.layers = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W) -> logits (B, T, 1, h', w')."""
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"discriminator: expected frames (B, T, 3, H, W), got {tuple(frames.shape)}")
        batch, time = frames.shape[:2]
        logits = self.layers(frames.reshape(batch * time, *frames.shape[2:]))   # (B*T, 1, h', w')
        return logits.view(batch, time, *logits.shape[1:])
