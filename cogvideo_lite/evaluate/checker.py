"""The analytic checker: what a video of the built-in shapes dataset shows, measured from its pixels.

What it is: `check_frames(frames)` finds the object in every frame of a uint8 video `(T, H, W, 3)` (any size) from
its colour against the dark, low-saturation background: a pixel matches a grammar colour when every channel lies
within COLOUR_TOLERANCE of that pure colour; the frame's colour is the one with most matching pixels; the largest
8-connected region of those pixels is the object (stray specks of a generated video do not move it), and gives its
centre (centroid, x = column, y = row as in `data/shapes.py`), area and shape. The shape comes from two shares
of that region inside its bounding box: the share of its pixels in the top half of the box (the apex-up triangle
holds 1/4 there, circle and square 1/2) and how full the box's corners are (a square fills them, a circle
leaves them empty); each threshold sits midway between the ideal values. `check_video(frames, key_indices)` sums
a video up: majority colour and shape, direction of motion, key-frame displacement, interpolation error and
consistency.

Definitions (every measure in pixels of the video's own size):
- direction: the least-squares velocity of the centre over all frames with an object (time = frame index); its
  larger component gives the axis, its sign the direction; a video whose fitted travel over its length is below
  MIN_TRAVEL_FRACTION of the frame side has none ("still").
- key displacement: the length of the least-squares velocity over the key frames with an object, time counted in
  key-frame steps: pixels moved per key frame.
- interpolation error: the key frames are every S-th frame (S = 2**rounds). A non-key frame i was made, in the round
  whose step is s = the largest power of two dividing i, between frames i - s and i + s; its error is the distance
  from its centre to the midpoint of theirs (where linear motion puts it). Frames where one of the three has no
  object are counted as skipped.
- consistency: the share of all frames whose colour and shape both equal the video's majority (a frame without an
  object counts against it); colour consistency and shape consistency count each word alone.

What it does not know: captions, models or files (see `shapes.py`). Where the idea comes from: the synthetic,
analytically checkable moving-shape sets used to debug video models (Moving MNIST, Srivastava et al. 2015) and
colour-and-geometry "detectors" of toy benchmarks. Calibrated on rendered and mp4 round-tripped clips of 64 to 128
pixels (every frame right; tests/test_checker.py); at 32 pixels an object is 6 pixels wide and x264's colour blur
makes some shapes of round-tripped clips ambiguous.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from cogvideo_lite.data.shapes import COLOURS, DIRECTION_STEPS

# A pixel matches a pure colour when each channel lies within this many levels of it. Below 127.5 no pixel can
# match two colours (they differ by 255 in some channel), and a match needs a channel >= 255 - 100 = 155, far above
# the background's 62 at most: an anti-aliased edge pixel matches from about half coverage on, and x264's blur of
# saturated edges (yuv420p halves colour resolution) stays inside it.
COLOUR_TOLERANCE = 100
# Fewest matching pixels, as a share of the frame, that make an object: a quarter of the triangle's area
# (the smallest shape: half of (0.2 * side)**2 = 0.02 of the frame).
MIN_AREA_FRACTION = 0.005
# Share of the region's pixels in the top half of its box: ideal 1/2 for circle and square, (1/2)**2 = 1/4 for the
# apex-up triangle, whose width grows linearly downwards. Below the midpoint: a triangle.
TRIANGLE_TOP_SHARE = 0.375
# Corners of the box, in box coordinates u, v in [-1, 1]: |u| + |v| > CORNER_ZONE. A circle reaches |u| + |v| =
# sqrt(2) at most, so it leaves them (nearly) empty; a square fills them. Filled share above the midpoint: a square.
CORNER_ZONE = 1.4
SQUARE_CORNER_FILL = 0.5
# Fitted travel over the whole video below this share of the frame side means the object stands still.
MIN_TRAVEL_FRACTION = 0.03
STILL = "still"

# Every grammar colour is a pure colour: each channel 0 or 255. Its pattern of full channels, read as bits
# (red 4, green 2, blue 1), numbers it; the seven colours take the seven non-zero patterns.
_CHANNEL_BITS = np.array([4, 2, 1])
_COLOUR_BY_PATTERN = {int(np.array(value) // 255 @ _CHANNEL_BITS): name for name, value in COLOURS.items()}
_NO_COLOUR = -1


@dataclass(frozen=True)
class FrameCheck:
    """What one frame shows. colour / shape None when no colour covers MIN_AREA_FRACTION of the frame."""

    colour: str | None
    shape: str | None
    centre: tuple[float, float] | None  # (x, y) centroid of the object region
    area: int                            # pixels of the object region
    top_share: float                     # share of the region's pixels in the top half of its box
    corner_fill: float                   # filled share of the box's corners


@dataclass(frozen=True)
class VideoCheck:
    """What a video shows (definitions in the module docstring)."""

    frames: tuple[FrameCheck, ...]
    colour: str | None                   # majority over frames with an object
    shape: str | None
    direction: str | None                # one of DIRECTIONS, STILL, or None with fewer than 2 detections
    velocity: tuple[float, float] | None  # (vx, vy) pixels per frame, least squares over frames with an object
    key_displacement: float | None       # pixels per key frame; None with fewer than 2 detected key frames
    interpolation_errors: tuple[float, ...]  # one per checked non-key frame, pixels
    interpolation_skipped: int           # non-key frames where one of the three frames had no object
    consistency: float                   # share of frames with the majority colour and shape
    colour_consistency: float            # share of frames with the majority colour
    shape_consistency: float             # share of frames with the majority shape
    size: int                            # frame side in pixels (the shorter one)

    @property
    def detected(self) -> float:
        """Share of frames with an object."""
        return sum(frame.colour is not None for frame in self.frames) / len(self.frames)


# ----------------------------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------------------------

def _check_input(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
            or frames.shape[-1] != 3 or 0 in frames.shape:
        described = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"checker: expected uint8 frames (T, H, W, 3) with T, H, W >= 1, got {described}")


def colour_patterns(frames: np.ndarray) -> np.ndarray:
    """frames (T, H, W, 3) uint8 -> (T, H, W) int64: the pattern of the grammar colour each pixel matches (every
    channel within COLOUR_TOLERANCE of 0 or 255), or _NO_COLOUR."""
    full = frames >= 255 - COLOUR_TOLERANCE  # (T, H, W, 3)
    empty = frames <= COLOUR_TOLERANCE
    patterns = full.astype(np.int64) @ _CHANNEL_BITS  # (T, H, W)
    matched = (full | empty).all(axis=-1) & (patterns > 0)  # black (pattern 0) is no grammar colour
    return np.where(matched, patterns, _NO_COLOUR)


def _spread_minimum(labels: np.ndarray, mask: np.ndarray, background: int) -> np.ndarray:
    """One step of labelling: each mask pixel takes the smallest label of its 3x3 neighbourhood (H, W)."""
    padded = np.pad(labels, 1, constant_values=background)  # (H+2, W+2)
    across = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])  # (H+2, W)
    around = np.minimum(np.minimum(across[:-2], across[1:-1]), across[2:])  # (H, W)
    return np.where(mask, around, background)


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a mask (H, W) bool (the first in raster order on a tie; empty stays
    empty). Labels: each pixel's index, spread as the 3x3 minimum over the mask's bounding box until stable."""
    rows, columns = np.nonzero(mask)
    region = np.zeros_like(mask)
    if not len(rows):
        return region
    box = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
    inside = mask[box]  # (h, w)
    background = inside.size  # above every pixel index
    labels = np.where(inside, np.arange(inside.size).reshape(inside.shape), background)
    while True:
        spread = _spread_minimum(labels, inside, background)
        if np.array_equal(spread, labels):
            break
        labels = spread
    found, sizes = np.unique(labels[inside], return_counts=True)
    region[box] = labels == found[np.argmax(sizes)]
    return region


def classify_shape(top_share: float, corner_fill: float) -> str:
    """Triangle below TRIANGLE_TOP_SHARE; otherwise square above SQUARE_CORNER_FILL, else circle."""
    if top_share < TRIANGLE_TOP_SHARE:
        return "triangle"
    return "square" if corner_fill > SQUARE_CORNER_FILL else "circle"


def _describe_region(colour: str, region: np.ndarray) -> FrameCheck:
    """Geometry of one object region (H, W) bool."""
    rows, columns = np.nonzero(region)
    top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
    box = region[top:bottom + 1, left:right + 1]  # (h, w) the bounding box
    box_rows, box_columns = np.mgrid[0:box.shape[0], 0:box.shape[1]]
    u = (box_columns + 0.5) / box.shape[1] * 2 - 1  # pixel centres in box coordinates [-1, 1]
    v = (box_rows + 0.5) / box.shape[0] * 2 - 1
    top_share = box[v < 0].sum() / len(rows)
    corners = box[np.abs(u) + np.abs(v) > CORNER_ZONE]  # empty for boxes a few pixels thin
    corner_fill = corners.mean() if corners.size else 0.0
    return FrameCheck(colour=colour, shape=classify_shape(top_share, corner_fill),
                      centre=(float(columns.mean()), float(rows.mean())), area=len(rows),
                      top_share=float(top_share), corner_fill=float(corner_fill))


def check_frames(frames: np.ndarray) -> list[FrameCheck]:
    """frames (T, H, W, 3) uint8 -> one FrameCheck per frame."""
    _check_input(frames)
    patterns = colour_patterns(frames)  # (T, H, W)
    minimum_area = MIN_AREA_FRACTION * frames.shape[1] * frames.shape[2]
    checks = []
    for frame_patterns in patterns:
        counts = np.bincount(frame_patterns[frame_patterns != _NO_COLOUR], minlength=2 ** len(_CHANNEL_BITS))
        best = int(counts.argmax())
        region = largest_region(frame_patterns == best) if counts[best] >= minimum_area else None
        if region is None or region.sum() < minimum_area:
            checks.append(FrameCheck(colour=None, shape=None, centre=None, area=0, top_share=0.0, corner_fill=0.0))
        else:
            checks.append(_describe_region(_COLOUR_BY_PATTERN[best], region))
    return checks


# ----------------------------------------------------------------------------------------------------------------
# Motion
# ----------------------------------------------------------------------------------------------------------------

def fit_velocity(times: np.ndarray, centres: np.ndarray) -> tuple[float, float] | None:
    """Least-squares slope of centres (N, 2) over times (N,): (vx, vy) per time unit, None when N < 2."""
    if len(times) < 2:
        return None
    centred = times - times.mean()
    slope = centred @ (centres - centres.mean(axis=0)) / (centred @ centred)  # (2,)
    return float(slope[0]), float(slope[1])


def direction_of(velocity: tuple[float, float] | None, duration: float, size: int) -> str | None:
    """Direction word of a velocity (pixels per frame) held over `duration` frames in a frame of side `size`."""
    if velocity is None:
        return None
    if math.hypot(*velocity) * duration < MIN_TRAVEL_FRACTION * size:
        return STILL
    axis = 0 if abs(velocity[0]) >= abs(velocity[1]) else 1
    step = [0, 0]
    step[axis] = 1 if velocity[axis] > 0 else -1
    return next(name for name, value in DIRECTION_STEPS.items() if list(value) == step)


def key_stride(num_frames: int, key_indices: list[int]) -> int:
    """The spacing S of key frames 0, S, 2S, ..., T - 1 with S a power of two; ValueError otherwise."""
    stride = key_indices[1] - key_indices[0] if len(key_indices) > 1 else 1
    expected = list(range(0, num_frames, stride))
    if stride < 1 or stride & (stride - 1) or key_indices != expected or expected[-1] != num_frames - 1:
        raise ValueError(f"key_indices {key_indices}: expected 0, S, 2S, ..., {num_frames - 1} with S a power of two "
                         f"(the key frames of {num_frames} frames after interpolation rounds)")
    return stride


def interpolation_errors(centres: list[tuple[float, float] | None], stride: int) -> tuple[list[float], int]:
    """Errors of the non-key frames (module docstring) and the number skipped for a missing object."""
    errors, skipped = [], 0
    for index in range(len(centres)):
        if index % stride == 0:
            continue
        step = index & -index  # largest power of two dividing index: the round that made this frame
        triple = (centres[index - step], centres[index], centres[index + step])
        if any(centre is None for centre in triple):
            skipped += 1
            continue
        before, made, after = (np.array(centre) for centre in triple)
        errors.append(float(np.linalg.norm(made - (before + after) / 2)))
    return errors, skipped


# ----------------------------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------------------------

def _majority(words: list[str]) -> str | None:
    return Counter(words).most_common(1)[0][0] if words else None


def check_video(frames: np.ndarray, key_indices: list[int] | None = None) -> VideoCheck:
    """frames (T, H, W, 3) uint8; key_indices: 0, S, ..., T - 1 (default: every frame is a key frame)."""
    _check_input(frames)
    key_indices = list(range(len(frames))) if key_indices is None else list(key_indices)
    stride = key_stride(len(frames), key_indices)
    checks = check_frames(frames)
    found = [index for index, check in enumerate(checks) if check.colour is not None]
    colour = _majority([checks[index].colour for index in found])
    shape = _majority([checks[index].shape for index in found])
    centres = np.array([checks[index].centre for index in found]).reshape(-1, 2)  # (N, 2)
    velocity = fit_velocity(np.array(found, dtype=np.float64), centres)
    found_keys = [position for position, index in enumerate(key_indices) if checks[index].colour is not None]
    key_velocity = fit_velocity(np.array(found_keys, dtype=np.float64),
                                np.array([checks[key_indices[position]].centre for position in found_keys])
                                .reshape(-1, 2))
    errors, skipped = interpolation_errors([check.centre for check in checks], stride)
    def share(keeps) -> float:
        return sum(check.colour is not None and keeps(check) for check in checks) / len(frames)

    size = min(frames.shape[1:3])
    return VideoCheck(
        frames=tuple(checks), colour=colour, shape=shape,
        direction=direction_of(velocity, len(frames) - 1, size), velocity=velocity,
        key_displacement=None if key_velocity is None else math.hypot(*key_velocity),
        interpolation_errors=tuple(errors), interpolation_skipped=skipped,
        consistency=share(lambda check: check.colour == colour and check.shape == shape),
        colour_consistency=share(lambda check: check.colour == colour),
        shape_consistency=share(lambda check: check.shape == shape), size=size)
