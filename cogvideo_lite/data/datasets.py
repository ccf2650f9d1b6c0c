"""Map-style torch datasets over a dataset folder: clips at a frame rate (`ClipDataset`) and single frames
(`FrameDataset`), plus the pre-scan that both rely on to skip bad entries.

Every item is a pure function of (seed, epoch, index): `set_epoch` changes the draw, nothing else does, so a
resumed run and every DataLoader worker see the same data. Bad inputs are found once, up front: a captions
problem or a video that does not play or is too short is logged with `logger.warning` naming the file and the
reason, counted in `report`, and left out. This module knows nothing of tokenizers, shards or models.
The clip sampling (a frame rate per video from a preset set, frames at that rate) follows CogVideo
(Hong et al. 2023); the frame augmentation is the random-resized crop and flip of image classifiers.
"""

import contextlib
import logging
import multiprocessing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from cogvideo_lite.data.captions import Entry, Problem, find_captions_file, load_entries
from cogvideo_lite.data.video import (RULES, BadVideo, VideoInfo, choose_rate, choose_start, clip_span, is_feasible,
                                      probe, read_clips, read_frames_at)
from tokenizer.frames import read_image, resize_shorter_side, to_model_frames

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# FrameDataset keeps frames with their shorter side at this multiple of `size`, so random crops have room.
STORED_SCALE = 1.5
# Random-resized crop: the crop covers this range of the stored frame's area (as in image classifiers).
CROP_AREA_RANGE = (0.3, 1.0)


@dataclass
class DatasetReport:
    """What a scan found: the number of usable items and every problem (captions lines and files)."""

    good: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Number of problems per reason."""
        return dict(Counter(problem.reason for problem in self.problems))

    @property
    def bad(self) -> list[tuple[str, str]]:
        """(path, reason) of every problem."""
        return [(problem.path, problem.reason) for problem in self.problems]

    def add(self, problem: Problem) -> None:
        logger.warning("skipping %s: %s%s", problem.path, problem.reason, f" ({problem.detail})" if problem.detail else "")
        self.problems.append(problem)


@dataclass(frozen=True)
class ClipSource:
    """A usable video: its captions entry, what probing found, and the rates at which a clip fits."""

    entry: Entry
    info: VideoInfo
    rates: tuple[int, ...]


@dataclass(frozen=True)
class ClipSample:
    """One fixed clip: source index into ClipDataset.sources, frame rate and start time in seconds."""

    index: int
    rate: int
    start: float


def _check_arguments(num_frames: int, rates: list[int], size: int = 1, rule: str = RULES[0]) -> None:
    """ValueError naming each argument out of range: num_frames, rates (distinct positive integers), size, rule."""
    problems = []
    if num_frames < 1:
        problems.append(f"num_frames={num_frames}: expected at least 1")
    if not rates or any(not isinstance(rate, int) or rate < 1 for rate in rates):
        problems.append(f"rates={rates}: expected a non-empty list of positive integers")
    elif len(set(rates)) < len(rates):
        repeated = sorted(rate for rate, count in Counter(rates).items() if count > 1)
        problems.append(f"rates={rates}: {repeated} repeated; expected each rate once")
    if size < 1:
        problems.append(f"size={size}: expected a positive integer")
    if rule not in RULES:
        problems.append(f"rule={rule!r}: expected one of {RULES}")
    if problems:
        raise ValueError("; ".join(problems))


def _probe(entry: Entry) -> VideoInfo | BadVideo:
    try:
        return probe(entry.video)
    except BadVideo as error:
        return error


def scan_clips(root: str | Path, num_frames: int, rates: list[int], progress: bool = True,
               workers: int = 0) -> tuple[list[ClipSource], DatasetReport]:
    """Load the captions and probe every listed video once (in `workers` processes, 0: in this one). Returns the
    usable videos, in captions order, and the report."""
    _check_arguments(num_frames, rates)
    entries, caption_problems = load_entries(root)
    report = DatasetReport()
    for problem in caption_problems:
        report.add(problem)
    sources = []
    with multiprocessing.Pool(workers) if workers else contextlib.nullcontext() as pool:
        probed = pool.imap(_probe, entries, chunksize=16) if pool else map(_probe, entries)  # both in order
        infos = list(tqdm(probed, total=len(entries), desc="probing videos", disable=not progress))
    for entry, info in zip(entries, infos):
        if isinstance(info, BadVideo):
            report.add(Problem(str(entry.video), info.reason, info.detail))
            continue
        feasible = tuple(rate for rate in sorted(rates) if is_feasible(info.duration, num_frames, rate))
        if not feasible:
            lowest = min(rates)
            report.add(Problem(str(entry.video), "too short", f"{num_frames} frames at {lowest} fps span "
                               f"{clip_span(num_frames, lowest):.3f} s, video lasts {info.duration:.3f} s"))
            continue
        sources.append(ClipSource(entry, info, feasible))
    report.good = len(sources)
    return sources, report


class SeededDataset(Dataset):
    """A dataset whose item i in epoch e is a pure function of (seed, e, i); `set_epoch` changes the draw.
    Subclasses say how many items they have (`__len__`) and draw an item's randomness from `rng(index)`."""

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator:
        """The draw of item `index` this epoch; IndexError when there is no such item."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return np.random.default_rng([self.seed, self.epoch, index])


class ClipDataset(SeededDataset):
    """Clips of `num_frames` frames at a rate from `rates`, resized and centre-cropped to size x size.
    Item: {"frames": (T, 3, S, S) float32 in [-1, 1], "caption": str, "fps": int, "index": int, "video": str}.
    rule "random": rate uniform among the video's feasible rates; "lowest": CogVideo's lowest feasible rate.
    The start time is uniform over the window where the clip fits."""

    def __init__(self, root: str | Path, num_frames: int, rates: list[int], size: int, rule: str = "random",
                 seed: int = 0, progress: bool = True, workers: int = 0):
        _check_arguments(num_frames, rates, size, rule)
        self.num_frames, self.rates, self.size, self.rule, self.seed = num_frames, list(rates), size, rule, seed
        self.sources, self.report = scan_clips(root, num_frames, rates, progress, workers)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        info = self.sources[index].info
        rate = choose_rate(info.duration, self.num_frames, self.rates, self.rule, rng)
        start = choose_start(info.duration, self.num_frames, rate, rng)
        return self.load_sample(ClipSample(index, rate, start))

    def load_sample(self, sample: ClipSample) -> dict:
        """Read one fixed clip; same item layout as indexing. Raises BadVideo if the file fails now."""
        return self.load_samples([sample])[0]

    def load_samples(self, samples: list[ClipSample]) -> list[dict]:
        """Read fixed clips of one video, decoding it once (`read_clips`)."""
        source = self.sources[samples[0].index]
        assert all(sample.index == samples[0].index for sample in samples), "load_samples reads one video"
        clips = read_clips(source.entry.video, self.num_frames, self.size,
                           [(sample.rate, sample.start) for sample in samples])
        return [{"frames": frames, "caption": source.entry.caption, "fps": sample.rate, "index": sample.index,
                 "video": str(source.entry.video)} for sample, frames in zip(samples, clips)]


# ---------------------------------------------------------------------------------------------- single frames


def _resize_shorter_side(frames: np.ndarray, side: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H', W', 3) uint8 with min(H', W') == side, aspect kept (antialiased bilinear)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    resized = resize_shorter_side(tensor, side)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, H', W', 3)


def _load_video_frames(path: Path, count: int) -> np.ndarray:
    """`count` frames spread evenly over the video (middles of equal time slices): (K, H, W, 3) uint8."""
    info = probe(path)
    count = min(count, info.num_frames)
    times = (np.arange(count) + 0.5) * info.duration / count
    return read_frames_at(path, times)


def _decode_file(path: Path, frames_per_video: int) -> np.ndarray | Problem:
    """(K, H, W, 3) uint8 frames of an image (K = 1) or a video (K <= frames_per_video), or why it is unusable."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            return read_image(path)  # any Pillow mode; 16-bit grey scaled to 8 bits
        except ValueError as error:  # not an image, truncated, over Pillow's decompression-bomb limit, float samples
            return Problem(str(path), "unreadable image", str(error))
    try:
        return _load_video_frames(path, frames_per_video)
    except BadVideo as error:
        return Problem(str(path), error.reason, error.detail)


def _frame_sources(source: Path, report: DatasetReport) -> list[tuple[Path, str]]:
    """(file, caption) pairs of one source: a folder with a captions file, a plain folder, or one file."""
    if source.is_dir():
        try:
            find_captions_file(source)
        except FileNotFoundError:
            files = sorted(path for path in source.rglob("*") if path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
            return [(path, "") for path in files]
        entries, problems = load_entries(source)
        for problem in problems:
            report.add(problem)
        return [(entry.video, entry.caption) for entry in entries]
    if not source.exists():
        report.add(Problem(str(source), "file not found"))
        return []
    if source.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        return [(source, "")]
    report.add(Problem(str(source), "unsupported source", "expected a folder, a video or a jpg / png image"))
    return []


@dataclass(frozen=True)
class FrameAugment:
    """How FrameDataset keeps and augments frames. stored_scale: frames are kept with their shorter side at
    stored_scale * size (larger keeps detail for zoomed-in crops). Each item is a square crop at a random place, a
    horizontal flip with probability 1/2 and, with hue_range > 0, a hue turn by a uniform angle within +-hue_range
    turns (`rotate_hue`, so that a few sources still show the tokenizer every colour). The crop covers a uniform share
    of CROP_AREA_RANGE of the area, or, with min_crop_side, has a side log-uniform from that fraction of the shorter
    side up to all of it."""

    stored_scale: float = STORED_SCALE
    min_crop_side: float | None = None
    hue_range: float = 0.0


class FrameDataset(SeededDataset):
    """Single frames from videos and images, for the frame tokenizer and the image stage.
    sources: folders with a captions file (captions kept), plain folders of videos / images, or single files.
    Each video gives `frames_per_video` frames, each image one, decoded once and kept in memory. Item: {"frames":
    (1, 3, S, S) float32 in [-1, 1], "caption": str ("" without captions), "index": int}. augment None: the centre
    crop of frames kept at STORED_SCALE. max_files > 0 keeps only the first files of the sources."""

    def __init__(self, sources: list[str | Path], size: int, seed: int = 0, augment: FrameAugment | None = FrameAugment(),
                 frames_per_video: int = 4, progress: bool = True, max_files: int = 0):
        if size < 1 or frames_per_video < 1:
            raise ValueError(f"size={size}, frames_per_video={frames_per_video}: expected positive integers")
        self.size, self.seed, self.augment = size, seed, augment
        self.report = DatasetReport()
        files = [pair for source in sources for pair in _frame_sources(Path(source), self.report)]
        if max_files:
            files = files[:max_files]  # the first `max_files` in listing order (captions order for a dataset)
        self.frames: list[np.ndarray] = []  # each (H, W, 3) uint8, shorter side round(stored_scale * size)
        self.captions: list[str] = []
        stored_side = round((augment or FrameAugment()).stored_scale * size)
        for path, caption in tqdm(files, desc="decoding frames", disable=not progress):
            decoded = _decode_file(path, frames_per_video)
            if isinstance(decoded, Problem):
                self.report.add(decoded)
                continue
            stored = _resize_shorter_side(decoded, stored_side)
            self.frames.extend(stored)
            self.captions.extend([caption] * len(stored))
            self.report.good += 1

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        rng, frame = self.rng(index), self.frames[index]  # (H, W, 3) uint8
        flip, turn, augment = False, 0.0, self.augment
        if augment is not None:
            frame = _random_square_crop(frame, rng, augment.min_crop_side)
            flip = bool(rng.random() < 0.5)
            if augment.hue_range > 0:
                turn = float(rng.uniform(-augment.hue_range, augment.hue_range))
        frames = to_model_frames(frame[None], self.size)  # (1, 3, S, S); centre crop of the shorter side
        if flip:
            frames = frames.flip(-1)
        if turn:
            frames = rotate_hue(frames, turn)
        return {"frames": frames, "caption": self.captions[index], "index": index}


# NTSC YIQ: Y is luma, (I, Q) the chroma plane; a hue change is a rotation of (I, Q) that leaves Y alone.
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])


def rotate_hue(frames: torch.Tensor, turns: float) -> torch.Tensor:
    """frames (..., 3, H, W) in [-1, 1] -> the same with every pixel's chroma rotated by `turns` of a full circle
    in YIQ space (luma kept), clipped back into the RGB cube."""
    angle = 2 * np.pi * turns
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = torch.linalg.inv(RGB_TO_YIQ) @ rotation @ RGB_TO_YIQ  # (3, 3) acting on RGB
    rgb = (frames + 1) / 2
    turned = torch.einsum("ij,...jhw->...ihw", matrix.to(frames.dtype), rgb)
    return (turned.clamp(0, 1) * 2 - 1).to(frames.dtype)


def _random_square_crop(frame: np.ndarray, rng: np.random.Generator, min_side: float | None) -> np.ndarray:
    """A square at a uniform position, (H, W, 3) -> (s, s, 3), sized as `FrameAugment` says (at most the shorter
    side); a log-uniform side makes every zoom level equally likely, from fine texture to the whole frame."""
    height, width = frame.shape[:2]
    shorter = min(height, width)
    if min_side is None:
        side = max(1, min(shorter, round(np.sqrt(rng.uniform(*CROP_AREA_RANGE) * height * width))))
    else:
        side = max(1, min(shorter, round(shorter * float(np.exp(rng.uniform(np.log(min_side), 0.0))))))
    top = int(rng.integers(height - side + 1))
    left = int(rng.integers(width - side + 1))
    return frame[top : top + side, left : left + side]
