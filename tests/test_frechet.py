"""Fréchet distance against closed forms and a float64 brute force; FVD / FID wrappers with tiny random TorchScript
networks that share the calling conventions of the real I3D and Inception files (which cannot be downloaded here)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from cogvideo_lite.evaluate.frechet import (fid, frame_features, frechet_distance, fvd, load_feature_network, statistics,
                                   video_features)


def random_covariance(generator: np.random.Generator, size: int) -> np.ndarray:
    factor = generator.normal(size=(size, size + 3))
    return factor @ factor.T / size


def brute_force(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook form with scipy's general matrix square root of sigma1 sigma2, in float64."""
    product = scipy.linalg.sqrtm(sigma1.astype(np.float64) @ sigma2.astype(np.float64))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(product).real)


# ------------------------------------------------------------------ the distance
def test_diagonal_covariances_match_the_closed_form():
    generator = np.random.default_rng(0)
    mu1, mu2 = generator.normal(size=6), generator.normal(size=6)
    s1, s2 = generator.uniform(0.1, 3, size=6), generator.uniform(0.1, 3, size=6)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_one_dimension_is_the_wasserstein_distance_of_two_normals():
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(3.0 ** 2 + (2.0 - 3.0) ** 2)


def test_full_covariances_match_the_brute_force():
    generator = np.random.default_rng(1)
    for size in (2, 5, 16):
        mu1, mu2 = generator.normal(size=size), generator.normal(size=size)
        sigma1, sigma2 = random_covariance(generator, size), random_covariance(generator, size)
        assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(brute_force(mu1, sigma1, mu2, sigma2),
                                                                           rel=1e-8)


def test_zero_for_identical_statistics_and_symmetric():
    generator = np.random.default_rng(2)
    mu, sigma = generator.normal(size=8), random_covariance(generator, 8)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    other_mu, other_sigma = generator.normal(size=8), random_covariance(generator, 8)
    forward = frechet_distance(mu, sigma, other_mu, other_sigma)
    assert forward > 0 and forward == pytest.approx(frechet_distance(other_mu, other_sigma, mu, sigma), rel=1e-9)


def test_rank_deficient_covariances_give_a_finite_distance():
    """Fewer samples than features (the usual case for small evaluation sets): singular covariances."""
    generator = np.random.default_rng(3)
    first, second = generator.normal(size=(5, 12)), generator.normal(size=(5, 12)) + 0.5
    distance = frechet_distance(*statistics(first), *statistics(second))
    assert np.isfinite(distance) and distance > 0
    assert distance == pytest.approx(brute_force(*statistics(first), *statistics(second)), rel=1e-6)


def test_statistics_are_the_mean_and_unbiased_covariance():
    generator = np.random.default_rng(4)
    features = generator.normal(size=(7, 3)).astype(np.float32)
    mu, sigma = statistics(features)
    centred = features.astype(np.float64) - features.astype(np.float64).mean(axis=0)
    by_hand = sum(np.outer(row, row) for row in centred) / (len(features) - 1)
    assert mu.dtype == np.float64 and np.allclose(mu, features.mean(axis=0), atol=1e-7)
    assert np.allclose(sigma, by_hand, atol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        statistics(features[:1])
    with pytest.raises(ValueError, match="NaN"):
        statistics(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="one F"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ------------------------------------------------------------------ feature networks
class TinyI3D(nn.Module):
    """The i3d_torchscript.pt calling convention: (N, 3, T, H, W) in [0, 255] -> (N, 6)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 6)

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            videos = videos / 127.5 - 1
        features = torch.relu(self.conv(videos)).mean(dim=(2, 3, 4))  # (N, 4)
        return self.head(features) if return_features else self.head(features).softmax(dim=-1)


class TinyInception(nn.Module):
    """The inception-2015-12-05.pt calling convention: uint8 (N, 3, H, W) -> (N, 5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = torch.tanh(self.conv(images.float() / 255)).mean(dim=(2, 3))  # (N, 5)
        return features if return_features else features.softmax(dim=-1)


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("networks")
    torch.manual_seed(0)
    paths = {"i3d": folder / "i3d.pt", "inception": folder / "inception.pt"}
    torch.jit.script(TinyI3D()).save(str(paths["i3d"]))
    torch.jit.script(TinyInception()).save(str(paths["inception"]))
    return {name: load_feature_network(path, f"--{name}") for name, path in paths.items()}


def random_videos(seed: int, count: int, brightness: int = 255) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.integers(0, brightness + 1, size=(count, 6, 16, 16, 3), dtype=np.uint8)  # (N, T, H, W, 3)


def test_fvd_is_the_frechet_distance_of_the_network_features(networks):
    network, videos, others = networks["i3d"], random_videos(0, 6), random_videos(1, 5, brightness=120)
    features = video_features(network, videos, batch_size=4)
    with torch.no_grad():
        by_hand = network(torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float(), rescale=True, resize=True,
                          return_features=True).double().numpy()
    assert features.shape == (6, 6) and np.allclose(features, by_hand, atol=1e-6)
    expected = frechet_distance(*statistics(by_hand), *statistics(video_features(network, others)))
    assert fvd(network, videos, others, batch_size=1) == pytest.approx(expected, rel=1e-6)
    assert fvd(network, videos, videos) == pytest.approx(0.0, abs=1e-9)
    assert fvd(network, videos, others) > 0


def test_fid_compares_frames(networks):
    network = networks["inception"]
    frames, others = random_videos(2, 3).reshape(-1, 16, 16, 3), random_videos(3, 3, 100).reshape(-1, 16, 16, 3)
    features = frame_features(network, frames, batch_size=5)
    with torch.no_grad():
        by_hand = network(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), return_features=True)
    assert features.shape == (18, 5) and np.allclose(features, by_hand.double().numpy(), atol=1e-6)
    assert fid(network, frames, frames) == pytest.approx(0.0, abs=1e-9)
    assert fid(network, frames, others) > 0


def test_missing_or_wrong_weights_files_are_named(tmp_path, networks):
    with pytest.raises(FileNotFoundError, match=r"--i3d .*nowhere\.pt: no such file.*nothing is downloaded"):
        load_feature_network(tmp_path / "nowhere.pt", "--i3d")
    with pytest.raises(FileNotFoundError, match="--inception None"):
        load_feature_network(None, "--inception")
    (tmp_path / "weights.pt").write_bytes(b"not a network")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        load_feature_network(tmp_path / "weights.pt", "--i3d")
    with pytest.raises(ValueError, match=r"expected uint8 videos \(N, T, H, W, 3\)"):
        video_features(networks["i3d"], np.zeros((2, 3, 8, 8, 3), dtype=np.float32))
    torch.jit.script(MeanOnly()).save(str(tmp_path / "mean.pt"))
    with pytest.raises(ValueError, match=r"Inception network: expected features \(2, F\) .* got \(\)"):
        frame_features(load_feature_network(tmp_path / "mean.pt", "--inception"), np.zeros((2, 8, 8, 3), np.uint8))


class MeanOnly(nn.Module):
    """A network that returns one number per batch instead of one feature vector per image."""

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return images.float().mean()
