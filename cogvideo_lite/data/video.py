"""Reading videos with decord: probing, choosing a frame rate, and reading frames by timestamp.

A clip of N frames "at rate r" shows the video at times start, start + 1/r, ..., start + (N-1)/r seconds; each
time maps to the frame on screen at that moment (the last frame whose presentation time is <= the time), read
from decord's per-frame timestamps, so variable-frame-rate sources are sampled correctly too. Times count from
the first frame's presentation time.

This module knows files and seconds only: it does not know captions, datasets or models. Frames leave it as
uint8 (T, H, W, 3) or, through `tokenizer.frames.to_model_frames`, as float (T, 3, S, S) in [-1, 1].
The frame-rate rule comes from CogVideo (Hong et al. 2023), which picks the lowest preset rate that still yields
the frames it needs; we also offer drawing uniformly among all feasible rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenizer.frames import to_model_frames

if TYPE_CHECKING:
    import decord

# Timestamps are stored in container time bases (Matroska rounds to 1 ms) and returned as float32, so a time
# that equals a frame's start on paper can land just before it. Times are moved forward by this much before
# looking up the frame; it is below the shortest frame duration of any real video (240 fps: 4.2 ms).
TIME_TOLERANCE = 1e-3

RULES = ("lowest", "random")

# First bytes of the container formats we expect to meet: a file that decord cannot open and that starts with
# one of these is a damaged video ("corrupt or truncated"); any other unreadable file is "not a video".
_CONTAINER_SIGNATURES = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),  # mp4 / mov
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (0, b"RIFF"),  # avi
    (0, b"FLV"), (0, b"OggS"), (0, b"\x00\x00\x01\xba"),  # flv, ogg, mpeg program stream
)
# An MPEG transport stream is a run of 188-byte packets, each starting with this sync byte.
_TRANSPORT_PACKET_BYTES = 188
_TRANSPORT_SYNC = 0x47


class BadVideo(Exception):
    """A video that cannot be used. `reason` is a short category (counted in reports), `detail` the specifics."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # keep the three fields when a DataLoader worker sends the error to the main process
        return (BadVideo, (self.path, self.reason, self.detail))


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns. duration: seconds from the first frame's start to the last frame's end."""

    duration: float
    fps: float
    num_frames: int
    height: int
    width: int


def _looks_like_container(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(2 * _TRANSPORT_PACKET_BYTES + 1)
    if _is_transport_stream(head):
        return True
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _CONTAINER_SIGNATURES)


def _is_transport_stream(head: bytes) -> bool:
    """Sync bytes at the start of three packets in a row (one or two could be chance: a GIF starts with 0x47)."""
    return len(head) > 2 * _TRANSPORT_PACKET_BYTES and all(
        head[k * _TRANSPORT_PACKET_BYTES] == _TRANSPORT_SYNC for k in range(3))


def open_reader(path: str | Path) -> decord.VideoReader:
    """Open a video with decord, turning every failure into BadVideo with a reason."""
    path = Path(path)
    if not path.is_file():
        raise BadVideo(path, "file not found")
    if path.stat().st_size == 0:
        raise BadVideo(path, "empty file")
    with open(path, "rb") as handle:
        if _is_transport_stream(handle.read(2 * _TRANSPORT_PACKET_BYTES + 1)):
            # decord 0.6 opens these but seeks in them wrongly: a read at 0 s returned the frame of 1.3 s
            raise BadVideo(path, "MPEG transport stream (decord reads its frames at wrong times)",
                           f"remux it to mp4 first, e.g. ffmpeg -i {path.name} -c copy {path.stem}.mp4")
    import decord  # here: a machine that only samples and checks generated videos can go without it

    try:
        reader = decord.VideoReader(str(path))
    except Exception as error:  # decord raises RuntimeError or its own DECORDError
        reason = "corrupt or truncated video" if _looks_like_container(path) else "not a video"
        raise BadVideo(path, reason, str(error).splitlines()[0]) from error
    if len(reader) == 0:
        raise BadVideo(path, "no frames")
    return reader


def _decode_error(path: str | Path, error: Exception) -> BadVideo:
    """BadVideo for a frame that failed to decode. decord 0.6 fails to copy out frames of a few widths (of the
    even widths up to 700 px: 2, 4, 6, 8, 12, 16, 24, 48 and 72) with a size-mismatch error: the file is fine,
    but decord cannot read it at that width."""
    message = str(error).splitlines()[0]
    if "DECORDArrayCopyFromTo" in message:
        return BadVideo(path, "frame width decord cannot read", "re-encode at another width; " + message)
    return BadVideo(path, "corrupt or truncated video", message)


def _frame_starts(reader: decord.VideoReader) -> np.ndarray:
    """Presentation start of every frame, seconds from the first frame: (num_frames,) float64."""
    starts = reader.get_frame_timestamp(range(len(reader)))[:, 0].astype(np.float64)
    return starts - starts[0]


def _duration(reader: decord.VideoReader) -> float:
    first_start = float(reader.get_frame_timestamp(0)[0])
    last_end = float(reader.get_frame_timestamp(len(reader) - 1)[1])
    return last_end - first_start


def probe(path: str | Path) -> VideoInfo:
    """Open the video, check that its last frame decodes, and return its duration, frame rate and size."""
    reader = open_reader(path)
    try:  # get_batch, as reading does: single-frame access hides decord's width bug behind a 4th channel
        last = reader.get_batch([len(reader) - 1]).asnumpy()[0]
    except Exception as error:
        raise _decode_error(path, error) from error
    duration = _duration(reader)
    if duration <= 0:
        raise BadVideo(path, "no frames", f"duration {duration:.3f} s")
    return VideoInfo(duration=duration, fps=float(reader.get_avg_fps()), num_frames=len(reader),
                     height=int(last.shape[0]), width=int(last.shape[1]))


def _indices_at(reader: decord.VideoReader, times: np.ndarray, path: str | Path) -> np.ndarray:
    """Index of the frame on screen at each time (seconds from the first frame): (T,) int64."""
    starts = _frame_starts(reader)
    duration = _duration(reader)
    if times.ndim != 1 or len(times) == 0:
        raise ValueError(f"{path}: times must be a non-empty 1-D array, got shape {times.shape}")
    if times.min() < 0 or times.max() >= duration:
        raise ValueError(f"{path}: times must lie in [0, {duration:.4f}) s, got {times.min():.4f}..{times.max():.4f} s")
    return np.searchsorted(starts, times + TIME_TOLERANCE, side="right") - 1


def _read_indices(reader: decord.VideoReader, indices: np.ndarray, path: str | Path) -> np.ndarray:
    """Decode frames by index: (T, H, W, 3) uint8; a grayscale decode is spread to 3 channels."""
    try:
        frames = reader.get_batch(indices.tolist()).asnumpy()
    except Exception as error:
        raise _decode_error(path, error) from error
    if frames.ndim == 3:  # (T, H, W)
        frames = frames[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return frames


def read_frames_at(path: str | Path, times: np.ndarray) -> np.ndarray:
    """Frames on screen at `times` (seconds from the first frame, each in [0, duration)): (T, H, W, 3) uint8."""
    reader = open_reader(path)
    times = np.asarray(times, dtype=np.float64)
    return _read_indices(reader, _indices_at(reader, times, path), path)


def clip_span(num_frames: int, rate: int) -> float:
    """Seconds from the first to the last of `num_frames` frames at `rate` frames per second."""
    return (num_frames - 1) / rate


def is_feasible(duration: float, num_frames: int, rate: int) -> bool:
    """A clip fits when its last time falls inside the video: start 0 + span < duration. Since a video with
    frames at 1/fps spacing shows its last frame from duration - 1/fps on, this is span <= duration - 1/fps
    for constant-rate sources, up to TIME_TOLERANCE."""
    return clip_span(num_frames, rate) + TIME_TOLERANCE < duration


def choose_rate(duration: float, num_frames: int, rates: list[int], rule: str,
                rng: np.random.Generator | None = None) -> int | None:
    """Pick a frame rate for a clip of `num_frames` from a video of `duration` seconds, or None if no rate fits.
    rule "lowest": the lowest feasible rate (CogVideo's rule; the longest span of time); "random": uniform among
    the feasible rates, drawn from `rng`."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    feasible = sorted(rate for rate in rates if is_feasible(duration, num_frames, rate))
    if not feasible:
        return None
    if rule == "lowest":
        return feasible[0]
    if rng is None:
        raise ValueError("rule 'random' needs an rng")
    return feasible[int(rng.integers(len(feasible)))]


def choose_start(duration: float, num_frames: int, rate: int, rng: np.random.Generator | None) -> float:
    """Start time of a clip: uniform over the window where the whole clip fits, or 0 without an rng."""
    latest = duration - TIME_TOLERANCE - clip_span(num_frames, rate)
    if latest < 0:
        raise ValueError(f"a clip of {num_frames} frames at {rate} fps does not fit in {duration:.3f} s")
    return 0.0 if rng is None else float(rng.uniform(0.0, latest))


def read_clip(path: str | Path, num_frames: int, rate: int, size: int, start: float | None = None,
              rng: np.random.Generator | None = None) -> torch.Tensor:
    """Read `num_frames` frames at `rate` fps from `start` seconds (drawn from `rng` when None and rng given,
    else 0), resized and centre-cropped to size x size. Returns (T, 3, size, size) float32 in [-1, 1].
    Raises BadVideo "too short" when the clip does not fit."""
    if start is None:
        duration = _duration(open_reader(path))
        start = choose_start(duration, num_frames, rate, rng) if is_feasible(duration, num_frames, rate) else 0.0
    return read_clips(path, num_frames, size, [(rate, start)])[0]  # an unfitting clip: BadVideo "too short"


def read_clips(path: str | Path, num_frames: int, size: int, clips: list[tuple[int, float]]) -> list[torch.Tensor]:
    """Several clips of one video, each (rate, start seconds), opened and decoded once: the frames of all clips in
    one pass, each shared frame decoded once. Returns one (T, 3, size, size) float32 in [-1, 1] per clip.
    Raises BadVideo "too short" when a clip does not fit."""
    reader = open_reader(path)
    duration = _duration(reader)
    indices = []
    for rate, start in clips:
        if not is_feasible(duration, num_frames, rate):
            raise BadVideo(path, "too short", f"{num_frames} frames at {rate} fps span "
                           f"{clip_span(num_frames, rate):.3f} s, video lasts {duration:.3f} s")
        indices.append(_indices_at(reader, start + np.arange(num_frames) / rate, path))  # (T,)
    wanted, where = np.unique(np.concatenate(indices), return_inverse=True)  # each frame decoded once, in order
    frames = to_model_frames(_read_indices(reader, wanted, path), size)  # (U, 3, size, size)
    return [frames[torch.from_numpy(part)] for part in np.split(where, len(clips))]
