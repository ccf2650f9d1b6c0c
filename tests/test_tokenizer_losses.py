"""Loss terms against their closed forms on hand-made tensors; discriminator shapes; perceptual distances."""

import math

import pytest
import torch
from safetensors.torch import save_file

from tokenizer.config import TokenizerConfig
from tokenizer.discriminator import PatchDiscriminator
from tokenizer.losses import (adaptive_adversarial_weight, codebook_entropy_loss, commitment_loss,
                              generator_adv_loss, hinge_d_loss, l1_loss, l2_loss, tokenizer_loss)
from tokenizer.model import TokenizerOutput
from tokenizer.perceptual import STLPIPS, TimmFeatureDistance, build_perceptual


def test_reconstruction_losses():
    recon, target = torch.tensor([1.0, -2.0, 0.5, 0.0]), torch.tensor([0.0, 0.0, 0.5, 3.0])
    assert float(l1_loss(recon, target)) == pytest.approx((1 + 2 + 0 + 3) / 4)
    assert float(l2_loss(recon, target)) == pytest.approx((1 + 4 + 0 + 9) / 4)


def test_commitment_loss_value_and_gradient_goes_to_encoder_only():
    encoded = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    quantized = torch.tensor([[0.0, 0.0], [0.0, 3.0]], requires_grad=True)
    loss = commitment_loss(encoded, quantized)
    assert float(loss.detach()) == pytest.approx((1 + 0 + 0 + 4) / 4)
    loss.backward()
    torch.testing.assert_close(encoded.grad, torch.tensor([[0.5, 0.0], [0.0, -1.0]]))   # 2 (e - q) / 4
    assert quantized.grad is None


def test_hinge_and_generator_losses():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, 0.5, 2]; relu(1 + fake) = [0, 1, 2.5]
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3))
    assert float(generator_adv_loss(fake)) == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)


def test_codebook_entropy_loss_closed_form():
    # Two tokens, two codes. Token 0 is certain of code 0, token 1 splits evenly.
    logits = torch.tensor([[0.0, -1e4], [0.0, 0.0]])
    per_token = (0.0 + math.log(2)) / 2
    mean = torch.tensor([0.75, 0.25])
    batch = -float((mean * mean.log()).sum())
    assert float(codebook_entropy_loss(logits)) == pytest.approx(per_token - batch, abs=1e-6)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    reconstruction = (3.0 * weight).sum()        # gradient (3, 3): norm 3 sqrt 2
    adversarial = (weight ** 2).sum()            # gradient (2, 4): norm sqrt 20
    value = adaptive_adversarial_weight(reconstruction, adversarial, weight)
    assert float(value) == pytest.approx(3 * math.sqrt(2) / (math.sqrt(20) + 1e-4), rel=1e-6)
    assert not value.requires_grad


def _output(recon, commitment=0.5, entropy=None):
    return TokenizerOutput(recon=recon, codes=torch.zeros(1, 1, 1, 1, dtype=torch.long),
                           commitment_loss=torch.tensor(commitment), perplexity=torch.tensor(3.0),
                           entropy_loss=None if entropy is None else torch.tensor(entropy))


def test_tokenizer_loss_sums_the_weighted_terms():
    frames = torch.zeros(1, 1, 3, 2, 2)
    recon = torch.full((1, 1, 3, 2, 2), 0.5)
    config = TokenizerConfig(l1_weight=1.0, l2_weight=2.0, commitment_weight=0.25, entropy_weight=0.1,
                             disc_weight=0.3, disc_start=10)
    before = tokenizer_loss(_output(recon, entropy=-1.0), frames, config, step=9)
    assert before.logs["total"] == pytest.approx(0.5 + 2 * 0.25 + 0.25 * 0.5 + 0.1 * -1.0)
    assert "adversarial" not in before.logs and before.logs["perplexity"] == 3.0
    after = tokenizer_loss(_output(recon, entropy=-1.0), frames, config, step=10,
                           disc_logits=torch.tensor([0.2, 0.4]))
    assert after.logs["total"] == pytest.approx(before.logs["total"] + 0.3 * -0.3)
    with pytest.raises(ValueError, match="need disc_logits"):
        tokenizer_loss(_output(recon, entropy=-1.0), frames, config, step=10)
    with pytest.raises(ValueError, match="needs a perceptual module"):
        tokenizer_loss(_output(recon), frames, TokenizerConfig(perceptual="st_lpips", perceptual_weight=1.0), 0)


def test_discriminator_gives_patch_logits_per_frame():
    logits = PatchDiscriminator(channels=32, num_layers=3)(torch.zeros(2, 3, 3, 64, 64))
    assert logits.shape == (2, 3, 1, 6, 6)
    with pytest.raises(ValueError, match=r"expected frames \(B, T, 3, H, W\)"):
        PatchDiscriminator()(torch.zeros(3, 3, 64, 64))


@pytest.fixture(scope="module")
def st_lpips():
    return STLPIPS()


def test_st_lpips_is_zero_on_identical_frames_and_grows_with_noise(st_lpips):
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1, 1, 64)
    frames = torch.stack([ramp.view(1, -1).expand(64, 64), ramp.view(-1, 1).expand(64, 64),
                          torch.zeros(64, 64)]).expand(1, 2, 3, 64, 64)    # smooth gradients
    noise = torch.randn(frames.shape, generator=generator)
    distances = [float(st_lpips(frames, (frames + level * noise).clamp(-1, 1)).mean()) for level in (0.0, 0.05, 0.2, 0.5)]
    assert distances[0] == pytest.approx(0.0, abs=1e-6)
    assert distances[0] < distances[1] < distances[2] < distances[3]
    assert st_lpips(frames, frames).shape == (2,)
    assert not any(parameter.requires_grad for parameter in st_lpips.parameters())
    assert not st_lpips.train().training
    assert build_perceptual("none") is None
    with pytest.raises(ValueError, match=r"perceptual='lpips': expected one of"):
        build_perceptual("lpips")


def test_timm_feature_distance_loads_local_weights(tmp_path):
    import timm

    torch.manual_seed(0)
    classifier = timm.create_model("test_resnet", pretrained=False)    # a classifier's full state dict, head included
    weights = tmp_path / "test_resnet.safetensors"
    save_file({key: value.contiguous() for key, value in classifier.state_dict().items()}, str(weights))
    distance = TimmFeatureDistance("test_resnet", weights)
    stem = distance.network.state_dict()["conv1.0.weight"]
    assert torch.equal(stem, classifier.state_dict()["conv1.0.weight"])
    frames = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(distance(frames, frames).abs().max()) == 0.0
    assert float(distance(frames, -frames).min()) > 0.0
    with pytest.raises(FileNotFoundError, match="no weights file"):
        TimmFeatureDistance("test_resnet", tmp_path / "absent.safetensors")
    save_file({"conv1.0.weight": torch.zeros(1)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="partial.safetensors: missing"):
        TimmFeatureDistance("test_resnet", tmp_path / "partial.safetensors")
