"""VQVAE, its config and frame conversion: round trips, shapes, over-fitting, config errors, import direction."""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenizer.config import TOKENIZER_SIZES, TokenizerConfig
from tokenizer.frames import to_model_frames, to_uint8
from tokenizer.losses import tokenizer_loss
from tokenizer.model import VQVAE

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "tokenizer"
# Smaller than `tiny` so that a few dozen optimiser steps take seconds.
MICRO = TokenizerConfig(image_size=16, downsample=4, codebook_size=64, code_dim=4, channels=32,
                        channel_mult=(1, 1, 1), num_res_blocks=1, dead_code_threshold=0.0)


# ---------------------------------------------------------------------------- config
def test_sizes_and_derived_numbers():
    assert TOKENIZER_SIZES["tiny"].grid == (8, 8) and TOKENIZER_SIZES["tiny"].tokens_per_frame == 64
    assert TOKENIZER_SIZES["small"].grid == (16, 16)
    assert TOKENIZER_SIZES["base"].grid == (20, 20) and TOKENIZER_SIZES["base"].codebook_size == 16384
    parameters = sum(p.numel() for p in VQVAE(TOKENIZER_SIZES["tiny"]).parameters())
    assert 1_000_000 <= parameters <= 3_000_000


def test_config_round_trips_through_a_plain_mapping():
    config = TOKENIZER_SIZES["small"]
    mapping = dataclasses.asdict(config)
    mapping["channel_mult"] = list(mapping["channel_mult"])   # as JSON / YAML give it
    assert TokenizerConfig.from_dict(mapping) == config


def test_config_errors_name_every_bad_field_at_once():
    with pytest.raises(ValueError) as caught:
        TokenizerConfig(downsample=8, image_size=60, codebook_size=0, ema_decay=1.5, perceptual="vgg")
    message = str(caught.value)
    for expected in ("image_size=60", "codebook_size=0", "ema_decay=1.5", "perceptual='vgg'"):
        assert expected in message
    with pytest.raises(ValueError, match=r"downsample=6: expected one of \(4, 8, 16\)"):
        TokenizerConfig(downsample=6)
    with pytest.raises(ValueError, match=r"channel_mult=\(1, 2\): expected 4 entries"):
        TokenizerConfig(channel_mult=(1, 2))
    with pytest.raises(ValueError, match=r"channels=40: expected channels \* each channel_mult"):
        TokenizerConfig(channels=40, channel_mult=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"image_size='64': expected an integer"):
        TokenizerConfig(image_size="64")
    with pytest.raises(ValueError, match=r"perceptual_weight=0.5: expected 0 when perceptual='none'"):
        TokenizerConfig(perceptual_weight=0.5)


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"configs/x.yaml: unknown key\(s\) \['codebook_sise'\]"):
        TokenizerConfig.from_dict({"codebook_sise": 8}, where="configs/x.yaml")


def test_partial_mapping_takes_defaults_unless_complete_is_demanded():
    assert TokenizerConfig.from_dict({"codebook_size": 8}) == TokenizerConfig(codebook_size=8)
    with pytest.raises(ValueError, match=r"run/config.json: missing key\(s\) \['channel_mult', 'channels'\]; "
                                         r"a saved tokenizer config must give every field"):
        mapping = dataclasses.asdict(TokenizerConfig())
        del mapping["channels"], mapping["channel_mult"]
        TokenizerConfig.from_dict(mapping, where="run/config.json", complete=True)


# ---------------------------------------------------------------------------- frames
def test_to_model_frames_resizes_shorter_side_and_centre_crops():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 30, 50, 3), dtype=np.uint8)
    result = to_model_frames(frames, 12)
    assert result.shape == (2, 3, 12, 12) and result.dtype == torch.float32
    reference = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(12, 20),
                              mode="bilinear", antialias=True)[:, :, :, 4:16] / 127.5 - 1
    torch.testing.assert_close(result, reference)
    assert result.min() >= -1 and result.max() <= 1


def test_to_model_frames_grayscale_and_identity_size():
    frames = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    result = to_model_frames(frames, 4)
    for channel in range(3):
        torch.testing.assert_close(result[:, channel], torch.from_numpy(frames).float() / 127.5 - 1)
    assert torch.equal(to_model_frames(frames[..., None], 4), result)
    with pytest.raises(ValueError, match="expected a uint8 numpy array"):
        to_model_frames(frames.astype(np.float32), 4)
    with pytest.raises(ValueError, match=r"got \(2, 4, 4, 2\)"):
        to_model_frames(np.zeros((2, 4, 4, 2), dtype=np.uint8), 4)


def test_to_uint8_inverts_to_model_frames():
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(to_model_frames(frames, 8)), frames)
    clipped = to_uint8(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(5, 1, 1, 1).expand(5, 3, 1, 1))
    assert clipped[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]   # 127.5 rounds half to even: 128


# ---------------------------------------------------------------------------- model
def test_shapes_and_decode_of_encode_equals_eval_forward():
    torch.manual_seed(0)
    model = VQVAE(TOKENIZER_SIZES["tiny"])
    frames = torch.rand(2, 3, 3, 64, 64) * 2 - 1
    model.train()
    model(frames)                                   # initialise the codebook from data
    model.eval()
    output = model(frames)
    assert output.recon.shape == frames.shape
    assert output.codes.shape == (2, 3, 8, 8) and output.codes.dtype == torch.int64
    codes = model.encode(frames)
    assert torch.equal(codes, output.codes)
    assert torch.equal(model.decode(codes), output.recon)
    with pytest.raises(ValueError, match=r"expected frames \(B, T, 3, 64, 64\), got \(3, 3, 64, 64\)"):
        model.encode(frames[0])
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 1024\)"):
        model.decode(torch.full((1, 1, 8, 8), 1024))


def test_encode_in_training_mode_leaves_the_codebook_alone():
    model = VQVAE(MICRO).train()
    model(torch.rand(1, 2, 3, 16, 16) * 2 - 1)
    codebook = model.quantizer.codebook.clone()
    model.encode(torch.rand(1, 2, 3, 16, 16) * 2 - 1)
    assert torch.equal(model.quantizer.codebook, codebook)


def test_gradient_reaches_the_encoder_through_the_quantizer():
    model = VQVAE(MICRO).train()
    frames = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    (model(frames).recon - frames).abs().mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_loss_falls_when_over_fitting_one_batch():
    torch.manual_seed(0)
    model = VQVAE(MICRO).train()
    frames = torch.rand(1, 4, 3, 16, 16) * 0.2 - 0.1
    frames[:, :, 0, 4:12, 4:12] += 0.8                   # a red square on grey noise
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(20):
        terms = tokenizer_loss(model(frames), frames, MICRO, step)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.logs["l1"])
    assert sum(losses[-3:]) / 3 < 0.4 * sum(losses[:3]) / 3


# ---------------------------------------------------------------------------- import direction
def test_tokenizer_package_never_imports_cogvideo_lite():
    for path in sorted(TOKENIZER_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "cogvideo_lite" for name in names), f"{path}:{node.lineno}"
