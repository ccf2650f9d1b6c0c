"""Loss terms of the frame tokenizer, each a small function with a closed form, and their weighted sum.

What it is: reconstruction (L1, L2), commitment, codebook entropy penalty, hinge discriminator loss, generator
adversarial loss, VQGAN's adaptive adversarial weight, and `tokenizer_loss`, which combines them as the config says.
What it does not know: optimizers, DeepSpeed, or how the discriminator is stepped (the training loop calls
`hinge_d_loss` for that with real and fake logits, in that order).
Where the idea comes from: VQ-VAE (commitment, beta 0.25), VQGAN (hinge loss, adaptive weight, delayed start),
LlamaGen / MAGVIT (entropy penalty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.config import TokenizerConfig

if TYPE_CHECKING:
    from tokenizer.model import TokenizerOutput

ADAPTIVE_WEIGHT_EPSILON = 1e-4   # VQGAN: keeps the ratio finite when the adversarial gradient vanishes
ADAPTIVE_WEIGHT_MAX = 1e4        # VQGAN's clamp


@dataclass
class LossTerms:
    total: torch.Tensor              # scalar to back-propagate
    logs: dict[str, float]           # every term, unweighted, plus "total"


def l1_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |recon - target|"""
    return (recon - target).abs().mean()


def l2_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean (recon - target)^2"""
    return (recon - target).pow(2).mean()


def commitment_loss(encoded: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """mean (encoded - sg[quantized])^2: pulls the encoder towards its codes, never the codes (EMA moves those)."""
    return (encoded - quantized.detach()).pow(2).mean()


def codebook_entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """logits (M, K) over codes -> mean per-token entropy - entropy of the mean distribution.

    Low per-token entropy makes each assignment confident; high entropy of the batch average spreads use over the
    codebook. Minimising the difference does both.
    """
    probabilities = logits.float().softmax(dim=-1)                             # (M, K)
    log_probabilities = logits.float().log_softmax(dim=-1)
    per_token_entropy = -(probabilities * log_probabilities).sum(dim=-1).mean()
    mean_probabilities = probabilities.mean(dim=0)                             # (K,)
    batch_entropy = -(mean_probabilities * torch.log(mean_probabilities.clamp(min=1e-30))).sum()
    return per_token_entropy - batch_entropy


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake)); real first, fake second."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(fake logits): the generator raises the discriminator's score of its reconstructions."""
    return -fake_logits.mean()


def adaptive_adversarial_weight(reconstruction: torch.Tensor, adversarial: torch.Tensor,
                                last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN: |grad of reconstruction loss| / (|grad of adversarial loss| + eps) at the decoder's last weight."""
    reconstruction_grad, = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
    adversarial_grad, = torch.autograd.grad(adversarial, last_layer, retain_graph=True)
    ratio = reconstruction_grad.norm() / (adversarial_grad.norm() + ADAPTIVE_WEIGHT_EPSILON)
    return ratio.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()


def tokenizer_loss(output: TokenizerOutput, frames: torch.Tensor, config: TokenizerConfig, step: int,
                   perceptual: nn.Module | None = None, disc_logits: torch.Tensor | None = None,
                   last_layer: torch.Tensor | None = None) -> LossTerms:
    """Weighted sum of the enabled terms for one training step of the VQVAE (the generator side).

    output: the VQVAE's training forward on `frames` (B, T, 3, H, W) in [-1, 1].
    perceptual: a frozen module (recon, frames) -> per-frame distances; required when perceptual_weight > 0.
    disc_logits: the discriminator's logits on `output.recon`; required when disc_weight > 0 and step >= disc_start.
    last_layer: the decoder's last weight; when given, the adversarial weight is VQGAN's adaptive weight times
    disc_weight, otherwise disc_weight alone.
    """
    terms = {"l1": l1_loss(output.recon, frames), "l2": l2_loss(output.recon, frames)}
    reconstruction = config.l1_weight * terms["l1"] + config.l2_weight * terms["l2"]
    if config.perceptual_weight > 0:
        if perceptual is None:
            raise ValueError(f"tokenizer_loss: perceptual_weight={config.perceptual_weight} needs a perceptual module")
        terms["perceptual"] = perceptual(output.recon, frames).mean()
        reconstruction = reconstruction + config.perceptual_weight * terms["perceptual"]
    terms["commitment"] = output.commitment_loss
    total = reconstruction + config.commitment_weight * output.commitment_loss
    if config.entropy_weight > 0:
        if output.entropy_loss is None:
            raise ValueError("tokenizer_loss: entropy_weight > 0 but the model output carries no entropy_loss")
        terms["entropy"] = output.entropy_loss
        total = total + config.entropy_weight * output.entropy_loss
    if config.disc_weight > 0 and step >= config.disc_start:
        if disc_logits is None:
            raise ValueError(f"tokenizer_loss: disc_weight={config.disc_weight} and step {step} >= disc_start "
                             f"{config.disc_start} need disc_logits")
        terms["adversarial"] = generator_adv_loss(disc_logits)
        weight = config.disc_weight
        if last_layer is not None:
            weight = weight * adaptive_adversarial_weight(reconstruction, terms["adversarial"], last_layer)
        terms["adversarial_weight"] = torch.as_tensor(weight)
        total = total + weight * terms["adversarial"]
    logs = {name: float(value.detach()) for name, value in terms.items()}
    logs["perplexity"] = float(output.perplexity)
    logs["total"] = float(total.detach())
    return LossTerms(total=total, logs=logs)
