"""Frozen perceptual distances between frames: ST-LPIPS (weights shipped in its wheel) or a local timm network.

What it is: `STLPIPS`, the shift-tolerant LPIPS of Ghildyal & Liu (ECCV 2022) from the `stlpips-pytorch` package,
and `TimmFeatureDistance`, an unweighted LPIPS-style distance over the feature pyramid of any timm network whose
weights the user has on disk. Both take frames (..., 3, H, W) in [-1, 1] and return one distance per frame; both are
frozen and stay in eval mode whatever `train()` is called with.
What it does not know: loss weights, or how to fetch anything: nothing here downloads.
Where the idea comes from: LPIPS (Zhang et al. 2018) as the perceptual loss of VQGAN; ST-LPIPS for robustness to
small shifts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tokenizer.config import PERCEPTUAL_CHOICES

FEATURE_EPSILON = 1e-10   # LPIPS's normalize_tensor epsilon
ST_LPIPS_NETWORKS = ("alex", "vgg")
ST_LPIPS_VARIANT = "shift_tolerant"
ST_LPIPS_MIN_SIZE = 48    # the alex trunk's last max-pool needs at least 3x3 features, from 48x48 input on


class FrozenDistance(nn.Module):
    """Base: frozen parameters, eval mode kept, frames flattened to (N, 3, H, W)."""

    def freeze(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenDistance:
        return super().train(False)

    @staticmethod
    def _flatten(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if a.shape != b.shape or a.ndim < 4 or a.shape[-3] != 3:
            raise ValueError(f"perceptual: expected two frame tensors (..., 3, H, W) of equal shape, "
                             f"got {tuple(a.shape)} and {tuple(b.shape)}")
        return a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])


class STLPIPS(FrozenDistance):
    def __init__(self, network: str = "alex") -> None:
        super().__init__()
        if network not in ST_LPIPS_NETWORKS:
            raise ValueError(f"STLPIPS: network={network!r}, expected one of {ST_LPIPS_NETWORKS}")
        from stlpips_pytorch import stlpips   # the package imports IPython and torchsummary at import time

        self.metric = stlpips.LPIPS(net=network, variant=ST_LPIPS_VARIANT, pretrained=False, verbose=False)
        weights_path = Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{network}_{ST_LPIPS_VARIANT}.pth"
        _load_complete(self.metric, weights_path)
        self.freeze()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b (..., 3, H, W) in [-1, 1] -> distances (N,), N the product of the leading dimensions."""
        a, b = self._flatten(a, b)
        if min(a.shape[-2:]) < ST_LPIPS_MIN_SIZE:
            raise ValueError(f"STLPIPS: frames of {tuple(a.shape[-2:])} pixels; at least {ST_LPIPS_MIN_SIZE}")
        dtype = self.metric.lin0.model[1].weight.dtype
        return self.metric(a.to(dtype), b.to(dtype)).reshape(-1)


class TimmFeatureDistance(FrozenDistance):
    """sum over feature levels of the mean squared difference of channel-normalised features."""

    def __init__(self, model_name: str, weights_path: str | Path) -> None:
        super().__init__()
        import timm
        from safetensors.torch import load_file

        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise FileNotFoundError(f"TimmFeatureDistance: no weights file at {weights_path}")
        self.network = timm.create_model(model_name, pretrained=False, features_only=True)
        if weights_path.suffix == ".safetensors":
            state = load_file(str(weights_path))
        else:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        self._load_backbone(state, weights_path)
        config = self.network.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1))
        self.freeze()

    def _load_backbone(self, state: dict[str, torch.Tensor], weights_path: Path) -> None:
        """Accepts the full classifier's state dict: keys the feature extractor lacks (its head) are dropped."""
        expected = set(self.network.state_dict())
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"{weights_path}: missing {len(missing)} key(s) of the feature network, e.g. {missing[:5]}")
        self.network.load_state_dict({key: state[key] for key in expected}, strict=True)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self._flatten(a, b)
        first = self.network(((a + 1) / 2 - self.mean) / self.std)     # list of (N, C_l, H_l, W_l)
        second = self.network(((b + 1) / 2 - self.mean) / self.std)
        distance = torch.zeros(a.shape[0], device=a.device)
        for x, y in zip(first, second):
            x = x / (x.norm(dim=1, keepdim=True) + FEATURE_EPSILON)
            y = y / (y.norm(dim=1, keepdim=True) + FEATURE_EPSILON)
            distance = distance + (x - y).pow(2).sum(dim=1).mean(dim=(1, 2))
        return distance


def build_perceptual(name: str) -> FrozenDistance | None:
    """The module named by TokenizerConfig.perceptual: STLPIPS for "st_lpips", None for "none"."""
    if name not in PERCEPTUAL_CHOICES:
        raise ValueError(f"perceptual={name!r}: expected one of {PERCEPTUAL_CHOICES}")
    return STLPIPS() if name == "st_lpips" else None


def _load_complete(metric: nn.Module, weights_path: Path) -> None:
    """Load, checking that every weight is present: the package itself loads with strict=False."""
    if not weights_path.is_file():
        raise FileNotFoundError(f"ST-LPIPS weights not found at {weights_path} (stlpips-pytorch installation)")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    result = metric.load_state_dict(state, strict=False)
    # `lins.i` are aliases of `lin{i}` (same modules in a ModuleList); the file stores each once.
    missing = [key for key in result.missing_keys if not key.startswith("lins.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{weights_path}: missing keys {missing}, unexpected keys {result.unexpected_keys}")
