"""Writing what the project shows a person: mp4 (H.264 through PyAV), gif (Pillow), png, and contact sheets.

Everything here takes raw uint8 frames `(T, H, W, 3)` (or one image `(H, W, 3)`); turning model frames in
[-1, 1] into uint8 is `tokenizer.frames.to_uint8`'s job. This module knows nothing of datasets or models.
The mp4 settings follow what every player accepts: H.264, yuv420p, even width and height.
"""

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

# x264's constant rate factor: 0 is lossless, 23 is its default. 12 keeps saturated colours and thin edges of
# small synthetic frames close to the source at a few kB per clip.
DEFAULT_CRF = 12

# Grey level of the gaps between frames in a contact sheet.
SHEET_PAD_VALUE = 255


def _check_frames(frames: np.ndarray, where: str) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{where}: expected uint8 frames (T, H, W, 3) with T >= 1, got {frames.dtype} "
                         f"{tuple(frames.shape)}")


def _video_path(path: str | Path, frames: np.ndarray, fps: float, writer: str) -> Path:
    """`path` of a video about to be written by `writer`, its folder created, once frames and fps are checked."""
    _check_frames(frames, f"{writer}({path})")
    if fps <= 0:
        raise ValueError(f"{writer}({path}): fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row / column where H or W is odd: yuv420p needs even sizes. (T,H,W,3) -> (T,H',W',3)."""
    pad_rows = frames.shape[1] % 2
    pad_columns = frames.shape[2] % 2
    if pad_rows == 0 and pad_columns == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, pad_rows), (0, pad_columns), (0, 0)), mode="edge")


def write_mp4(path: str | Path, frames_uint8: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> Path:
    """Write frames (T, H, W, 3) uint8 as an H.264 yuv420p mp4 at `fps`. Odd H or W gets one repeated
    row / column so the file plays everywhere. Returns the path."""
    path = _video_path(path, frames_uint8, fps, "write_mp4")
    frames = _pad_to_even(frames_uint8)
    import av  # imported here: only writing video needs PyAV (machines that only train can go without it)

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        # One encoder thread: faster for the small frames this project writes. (Even so, x264 through PyAV does not
        # always give the same bytes for the same frames; the decoded frames differ by a few levels at most.)
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return path


def write_gif(path: str | Path, frames_uint8: np.ndarray, fps: float) -> Path:
    """Write frames (T, H, W, 3) uint8 as a looping gif. GIF stores delays in 1/100 s, so fps is approximate."""
    path = _video_path(path, frames_uint8, fps, "write_gif")
    images = [Image.fromarray(frame) for frame in frames_uint8]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write one image (H, W, 3) uint8 as png."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"write_png({path}): expected uint8 image (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def contact_sheet(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Lay out strips of frames, one strip per row, left-aligned, with `pad` pixels of SHEET_PAD_VALUE between
    and around frames. rows: list of (T_r, H, W, 3) uint8, T_r may differ; all frames share H and W.
    Returns (R*H + (R+1)*pad, max(T_r)*W + (max(T_r)+1)*pad, 3) uint8."""
    if not rows:
        raise ValueError("contact_sheet: no rows given")
    for index, row in enumerate(rows):
        _check_frames(row, f"contact_sheet row {index}")
        if row.shape[1:3] != rows[0].shape[1:3]:
            raise ValueError(f"contact_sheet: row {index} has frames of {row.shape[1:3]}, row 0 has "
                             f"{rows[0].shape[1:3]}")
    height, width = rows[0].shape[1:3]
    columns = max(row.shape[0] for row in rows)
    sheet = np.full((len(rows) * height + (len(rows) + 1) * pad, columns * width + (columns + 1) * pad, 3),
                    SHEET_PAD_VALUE, dtype=np.uint8)
    for row_index, row in enumerate(rows):
        top = pad + row_index * (height + pad)
        for column_index, frame in enumerate(row):
            left = pad + column_index * (width + pad)
            sheet[top : top + height, left : left + width] = frame
    return sheet
