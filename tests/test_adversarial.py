"""The tokenizer's adversarial game in one optimizer step: each side's gradient equals that of its own loss alone."""

import torch

from cogvideo_lite.train.tokenizer_task import TokenizerObjective
from tokenizer.config import TokenizerConfig
from tokenizer.discriminator import PatchDiscriminator
from tokenizer.losses import hinge_d_loss, tokenizer_loss
from tokenizer.model import VQVAE


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_each_side_gets_only_its_own_gradient():
    torch.manual_seed(0)
    config = TokenizerConfig(image_size=32, codebook_size=16, channels=16, channel_mult=(1, 1, 1, 1),
                             disc_weight=0.5, disc_start=0)
    model, disc = VQVAE(config).eval(), PatchDiscriminator(channels=16, num_layers=2)  # eval: codebook fixed
    frames = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    objective = TokenizerObjective(model, None, disc)
    objective(dict(frames=frames), step=5).loss.backward()
    combined_model, combined_disc = grads(model), grads(disc)

    # reference generator gradient: the tokenizer loss with a frozen copy of the discriminator
    model.zero_grad(), disc.zero_grad()
    frozen = PatchDiscriminator(channels=16, num_layers=2)
    frozen.load_state_dict(disc.state_dict())
    frozen.requires_grad_(False)
    output = model(frames)
    tokenizer_loss(output, frames, config, 5, disc_logits=frozen(output.recon), last_layer=model.last_layer).total.backward()
    reference_model = grads(model)
    # reference discriminator gradient: the hinge loss on a constant reconstruction
    disc.zero_grad()
    hinge_d_loss(disc(frames), disc(model(frames).recon.detach())).backward()
    reference_disc = grads(disc)

    assert combined_model.keys() == reference_model.keys() and combined_disc.keys() == reference_disc.keys()
    for name in reference_model:
        assert torch.allclose(combined_model[name], reference_model[name], atol=1e-6, rtol=1e-4), name
    for name in reference_disc:
        assert torch.allclose(combined_disc[name], reference_disc[name], atol=1e-6, rtol=1e-4), name


def test_before_disc_start_there_is_no_adversarial_term():
    torch.manual_seed(0)
    config = TokenizerConfig(image_size=32, codebook_size=16, channels=16, channel_mult=(1, 1, 1, 1),
                             disc_weight=0.5, disc_start=10)
    model, disc = VQVAE(config).eval(), PatchDiscriminator(channels=16, num_layers=2)
    out = TokenizerObjective(model, None, disc)(dict(frames=torch.zeros(1, 1, 3, 32, 32)), step=3)
    assert "adversarial" not in out.metrics and "disc" not in out.metrics
