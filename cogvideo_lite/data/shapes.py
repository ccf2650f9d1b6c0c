"""The built-in dataset: captioned clips of one coloured shape moving in a straight line over a dark background.

    python -m cogvideo_lite.data.shapes --out DIR --clips N --seed S [--size 64] [--fps 24] [--seconds 5] [--workers 2]
        [--overwrite]

writes `DIR/clips/000000.mp4` (H.264, yuv420p, low crf so colours stay saturated), beside it
`DIR/clips/000000.json` with the ground truth (colour, shape, direction, speed, object centre per frame, radius),
and `DIR/captions.jsonl`, the same layout a user's dataset has. A caption reads
`a {colour} {shape} moves {direction} {speed}`: 7 colours x 3 shapes x 4 directions x 2 speeds = 168 captions.
Clip i draws everything from `numpy.random.default_rng([seed, i])`, so a seed fixes the dataset. DIR must be new or
empty (`--overwrite` replaces what a non-empty one holds); captions.jsonl is written last, so an interrupted run
leaves a folder that loaders refuse (no captions file) until a rerun with `--overwrite` completes it.

The grammar constants and `render_clip` are public so that evaluation code can check generated videos against
the same rules. Coordinates: x is the column, y the row, pixel (row i, column j) has its centre at (x=j, y=i).
This module knows nothing of tokenizers or models. The idea of a generated, analytically checkable dataset of
moving shapes follows the synthetic sets used to debug video models (e.g. Moving MNIST, Srivastava et al. 2015).
"""

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cogvideo_lite.data.media import write_mp4
from cogvideo_lite.data.video import BadVideo, probe

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = ("slowly", "quickly")

# Unit step (dx, dy) of each direction in image coordinates (y grows downwards).
DIRECTION_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Share of the free travel (the range of centre positions that keeps the object inside) covered over the clip.
TRAVEL_FRACTIONS = {"slowly": 0.375, "quickly": 0.75}
# The object's extent (circle diameter, square side, triangle base and height) as a share of the frame side.
OBJECT_FRACTION = 0.2
# Pixels kept free between the object's edge and the frame border: its anti-aliased fringe is half a pixel wide.
EDGE_MARGIN = 0.5
# Background: a smooth grey field of BACKGROUND_GRID x BACKGROUND_GRID random levels, bilinearly upsampled,
# levels in BACKGROUND_LEVELS, each channel shifted by at most BACKGROUND_TINT. Its maximum (62) stays far below
# the 255 channel that every object colour has.
BACKGROUND_GRID = 5
BACKGROUND_LEVELS = (16.0, 56.0)
BACKGROUND_TINT = 6.0
# Five key frames at 1 fps span 4 s; a clip must last longer, with room for a random start.
MIN_SECONDS = 4.5
# seconds * fps is rounded to this many decimals before rounding up to whole frames, so that float noise
# (4.7 * 30 = 141.00000000000003) does not add a frame.
FRAME_COUNT_DECIMALS = 9


@dataclass(frozen=True)
class ClipSpec:
    """Frame geometry and timing of generated clips."""

    size: int = 64
    fps: int = 24
    seconds: float = 5.0

    def __post_init__(self):
        problems = []
        if self.size < 16:
            problems.append(f"size={self.size}: expected at least 16 pixels")
        if self.fps < 1:
            problems.append(f"fps={self.fps}: expected a positive integer")
        if self.seconds < MIN_SECONDS:
            problems.append(f"seconds={self.seconds}: expected at least {MIN_SECONDS} (5 key frames at 1 fps)")
        if problems:
            raise ValueError("ClipSpec: " + "; ".join(problems))

    @property
    def num_frames(self) -> int:
        """Frames in a clip, rounded up: the clip lasts at least `seconds` (>= MIN_SECONDS) at any fps."""
        return math.ceil(round(self.seconds * self.fps, FRAME_COUNT_DECIMALS))

    @property
    def radius(self) -> float:
        """Circle radius, square half-side, triangle half-base / half-height."""
        return OBJECT_FRACTION * self.size / 2

    @property
    def centre_range(self) -> tuple[float, float]:
        """Lowest and highest centre coordinate that keeps the whole object inside the frame."""
        return self.radius + EDGE_MARGIN, self.size - 1 - self.radius - EDGE_MARGIN

    def speed(self, speed: str) -> float:
        """Pixels per second of a speed word."""
        low, high = self.centre_range
        return TRAVEL_FRACTIONS[speed] * (high - low) / self.seconds


@dataclass(frozen=True)
class ClipTruth:
    """Ground truth of one clip, written beside it as JSON. centres: (x, y) per frame."""

    caption: str
    colour: str
    shape: str
    direction: str
    speed: str
    fps: int
    size: int
    seconds: float
    num_frames: int
    radius: float
    speed_pixels_per_second: float
    centres: list[list[float]]


@dataclass(frozen=True)
class CaptionWords:
    colour: str
    shape: str
    direction: str
    speed: str


def caption_for(colour: str, shape: str, direction: str, speed: str) -> str:
    return f"a {colour} {shape} moves {direction} {speed}"


def parse_caption(caption: str) -> CaptionWords:
    """'a red circle moves left slowly' -> its four words; ValueError for a caption outside the grammar."""
    words = caption.split()
    if (len(words) != 6 or words[0] != "a" or words[3] != "moves" or words[1] not in COLOURS
            or words[2] not in SHAPES or words[4] not in DIRECTIONS or words[5] not in SPEEDS):
        raise ValueError(f"caption {caption!r} is outside the shapes grammar: expected 'a COLOUR SHAPE moves "
                         f"DIRECTION SPEED' with COLOUR in {list(COLOURS)}, SHAPE in {list(SHAPES)}, DIRECTION in "
                         f"{list(DIRECTIONS)}, SPEED in {list(SPEEDS)}")
    return CaptionWords(*words[1:3], *words[4:])


def all_captions() -> list[str]:
    """The 168 captions of the grammar, in a fixed order."""
    return [caption_for(colour, shape, direction, speed)
            for colour in COLOURS for shape in SHAPES for direction in DIRECTIONS for speed in SPEEDS]


def _background(spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """Static smooth dark texture: (H, W, 3) float64 in [10, 62]."""
    levels = rng.uniform(*BACKGROUND_LEVELS, size=(BACKGROUND_GRID, BACKGROUND_GRID, 1))
    tint = rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=(BACKGROUND_GRID, BACKGROUND_GRID, 3))
    grid = levels + tint  # (g, g, 3)
    positions = np.linspace(0, BACKGROUND_GRID - 1, spec.size)
    lower = np.minimum(np.floor(positions).astype(int), BACKGROUND_GRID - 2)
    weight = positions - lower
    interpolation = np.zeros((spec.size, BACKGROUND_GRID))  # (S, g): row i mixes grid points lower, lower + 1
    interpolation[np.arange(spec.size), lower] = 1 - weight
    interpolation[np.arange(spec.size), lower + 1] = weight
    return np.einsum("ia,abc,jb->ijc", interpolation, grid, interpolation)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Distance of each pixel centre outside the shape's edge (negative inside). dx, dy: offsets from the centre."""
    if shape == "circle":
        return np.sqrt(dx**2 + dy**2) - radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - radius
    if shape == "triangle":  # apex (0, -r), base corners (-r, r) and (r, r); slanted edges satisfy 2|dx| - dy = r
        base = dy - radius
        slanted = (2 * np.abs(dx) - dy - radius) / np.sqrt(5)
        return np.maximum(base, slanted)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _centres(spec: ClipSpec, direction: str, speed: str, rng: np.random.Generator) -> np.ndarray:
    """Object centre per frame: (T, 2) float64 (x, y)."""
    low, high = spec.centre_range
    step = np.array(DIRECTION_STEPS[direction], dtype=np.float64)
    travel = TRAVEL_FRACTIONS[speed] * (high - low)
    along = rng.uniform(low, high - travel) if step.sum() > 0 else rng.uniform(low + travel, high)
    across = rng.uniform(low, high)
    moving_x = step[0] != 0
    start = np.array([along, across] if moving_x else [across, along])
    times = np.arange(spec.num_frames) / spec.fps
    return start + times[:, None] * spec.speed(speed) * step


def render_clip(colour: str, shape: str, direction: str, speed: str, rng: np.random.Generator,
                spec: ClipSpec = ClipSpec()) -> tuple[np.ndarray, ClipTruth]:
    """Draw one clip: frames (T, H, W, 3) uint8 and its ground truth. The object is anti-aliased over one pixel
    at its edge; its interior is exactly COLOURS[colour]."""
    for word, choices in ((colour, COLOURS), (shape, SHAPES), (direction, DIRECTIONS), (speed, SPEEDS)):
        if word not in choices:
            raise ValueError(f"unknown word {word!r}; expected one of {list(choices)}")
    background = _background(spec, rng)  # (H, W, 3)
    centres = _centres(spec, direction, speed, rng)  # (T, 2)
    pixels = np.arange(spec.size, dtype=np.float32)
    dx = pixels[None, None, :] - centres[:, 0, None, None].astype(np.float32)  # (T, 1, W)
    dy = pixels[None, :, None] - centres[:, 1, None, None].astype(np.float32)  # (T, H, 1)
    coverage = np.clip(0.5 - _signed_distance(shape, dx, dy, spec.radius), 0.0, 1.0)[..., None]  # (T, H, W, 1)
    colour_values = np.array(COLOURS[colour], dtype=np.float32)
    frames = background.astype(np.float32)[None] * (1 - coverage) + colour_values * coverage  # (T, H, W, 3)
    truth = ClipTruth(caption_for(colour, shape, direction, speed), colour, shape, direction, speed, spec.fps,
                      spec.size, spec.seconds, spec.num_frames, spec.radius, spec.speed(speed),
                      np.round(centres, 4).tolist())
    return np.round(frames).astype(np.uint8), truth


def random_clip(seed: int, index: int, spec: ClipSpec) -> tuple[np.ndarray, ClipTruth]:
    """Clip `index` of the dataset with `seed`: caption words and drawing from default_rng([seed, index])."""
    rng = np.random.default_rng([seed, index])
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    speed = SPEEDS[rng.integers(len(SPEEDS))]
    return render_clip(colour, shape, direction, speed, rng, spec)


def _check_readable(path: Path, spec: ClipSpec) -> None:
    """Fail early when the reader cannot read what we write (decord refuses a few frame widths)."""
    try:
        probe(path)
    except BadVideo as error:
        raise ValueError(f"ClipSpec size={spec.size}: the written clip cannot be read back: {error}") from error


def _write_clip(out: Path, seed: int, spec: ClipSpec, index: int) -> str:
    """Render and write clip `index` with its ground truth; return its captions line."""
    frames, truth = random_clip(seed, index, spec)
    name = f"clips/{index:06d}"
    write_mp4(out / f"{name}.mp4", frames, spec.fps)
    (out / f"{name}.json").write_text(json.dumps(asdict(truth)))
    return json.dumps({"video": f"{name}.mp4", "caption": truth.caption})


def generate(out: str | Path, clips: int, seed: int, spec: ClipSpec = ClipSpec(), workers: int = 1,
             progress: bool = True) -> Path:
    """Write `clips` clips, their ground-truth JSON and captions.jsonl into `out`, using `workers` processes.
    Returns the captions path. The files do not depend on the number of workers."""
    if clips < 1 or workers < 1:
        raise ValueError(f"clips={clips}, workers={workers}: expected at least 1 of each")
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    lines = [_write_clip(out, seed, spec, 0)]
    _check_readable(out / "clips/000000.mp4", spec)
    write_one = functools.partial(_write_clip, out, seed, spec)
    rest = range(1, clips)
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        written = pool.imap(write_one, rest, chunksize=8) if pool else map(write_one, rest)  # both keep clip order
        lines += tqdm(written, total=len(rest), desc="shapes clips", disable=not progress)
    captions = out / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n")
    return captions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the built-in dataset of captioned moving-shape clips.")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write: new or empty, unless "
                        "--overwrite")
    parser.add_argument("--overwrite", action="store_true", help="empty a non-empty --out (its clips, captions and any "
                        "other file), then write the new dataset into it")
    parser.add_argument("--clips", type=int, required=True, help="number of clips (>= 1)")
    parser.add_argument("--seed", type=int, required=True, help="seed; the same seed writes the same clips")
    parser.add_argument("--size", type=int, default=ClipSpec.size, help="frame side in pixels")
    parser.add_argument("--fps", type=int, default=ClipSpec.fps, help="frames per second")
    parser.add_argument("--seconds", type=float, default=ClipSpec.seconds, help="clip length in seconds")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering and encoding clips (>= 1)")
    args = parser.parse_args(argv)
    spec = _clip_spec(parser, args)
    for option, value in (("--clips", args.clips), ("--workers", args.workers)):
        if value < 1:
            parser.error(f"{option} {value}: expected an integer >= 1")
    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder")
    held = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if held and not args.overwrite:
        parser.error(f"--out {args.out}: the folder is not empty (it holds {', '.join(held[:3])}"
                     f"{', ...' if len(held) > 3 else ''}); choose a new or empty folder, or pass --overwrite to "
                     "replace its contents")
    try:
        captions = _write_dataset(out, args.clips, args.seed, spec, args.workers)
    except ValueError as error:  # a size whose clips the reader cannot read back
        parser.error(str(error))
    print(f"wrote {args.clips} clips and {captions}")


def _clip_spec(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClipSpec:
    """ClipSpec from --size, --fps, --seconds; a bad value is named by its option."""
    problems = []
    for field in ("size", "fps", "seconds"):
        value = getattr(args, field)
        try:
            ClipSpec(**{field: value})
        except ValueError as error:
            problems.append(f"--{field} {value}: " + str(error).removeprefix("ClipSpec: ").removeprefix(
                f"{field}={value}: "))
    if problems:
        parser.error("; ".join(problems))
    return ClipSpec(size=args.size, fps=args.fps, seconds=args.seconds)


def _write_dataset(out: Path, clips: int, seed: int, spec: ClipSpec, workers: int) -> Path:
    """Empty `out` (the caller has checked that it was empty or that --overwrite was given), then generate into it.
    captions.jsonl is written last: an interrupted run leaves a folder without captions file, which every loader
    refuses, and a rerun with --overwrite starts it again. Returns the captions path."""
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return generate(out, clips, seed, spec, workers=workers)


if __name__ == "__main__":
    main()
