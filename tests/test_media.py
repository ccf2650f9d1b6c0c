"""Media writers: what is written must read back (decord for mp4, Pillow for gif / png) as what was given."""

import decord
import numpy as np
import pytest
from PIL import Image

from cogvideo_lite.data.media import SHEET_PAD_VALUE, contact_sheet, write_gif, write_mp4, write_png
from cogvideo_lite.data.video import BadVideo, probe

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [40, 40, 40], [255, 255, 255]], np.uint8)


def solid_frames(height: int, width: int) -> np.ndarray:
    """One flat frame per colour of COLOURS: (6, H, W, 3)."""
    return np.broadcast_to(COLOURS[:, None, None, :], (len(COLOURS), height, width, 3)).copy()


def test_mp4_reads_back_with_same_count_size_and_colours(tmp_path):
    frames = solid_frames(32, 40)
    path = write_mp4(tmp_path / "out" / "clip.mp4", frames, fps=8)
    reader = decord.VideoReader(str(path))
    assert len(reader) == len(frames)
    assert reader.get_avg_fps() == pytest.approx(8.0)
    decoded = reader.get_batch(list(range(len(frames)))).asnumpy()
    assert decoded.shape == frames.shape
    mean_colours = decoded.reshape(len(frames), -1, 3).mean(axis=1)  # (T, 3)
    np.testing.assert_allclose(mean_colours, COLOURS, atol=3)


def test_mp4_with_odd_size_gets_one_repeated_row_and_column(tmp_path):
    frames = solid_frames(47, 63)
    path = write_mp4(tmp_path / "odd.mp4", frames, fps=24)
    decoded = decord.VideoReader(str(path)).get_batch(list(range(len(frames)))).asnumpy()
    assert decoded.shape == (len(frames), 48, 64, 3)
    np.testing.assert_allclose(decoded[:, :47, :63].reshape(len(frames), -1, 3).mean(axis=1), COLOURS, atol=3)


def test_frame_width_that_decord_cannot_read_is_named(tmp_path):
    path = write_mp4(tmp_path / "w48.mp4", solid_frames(32, 48), fps=8)  # a valid file (PyAV decodes it)
    with pytest.raises(BadVideo) as error:
        probe(path)
    assert error.value.reason == "frame width decord cannot read"


def test_gif_reads_back_with_frame_count_delay_and_colours(tmp_path):
    frames = solid_frames(16, 16)
    path = write_gif(tmp_path / "clip.gif", frames, fps=4)
    with Image.open(path) as gif:
        assert gif.n_frames == len(frames)
        assert gif.info["duration"] == 250
        for index in range(len(frames)):
            gif.seek(index)
            np.testing.assert_allclose(np.asarray(gif.convert("RGB"))[8, 8], COLOURS[index], atol=4)


def test_png_round_trip_is_exact(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    path = write_png(tmp_path / "sheet.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


def test_contact_sheet_places_each_frame_by_row_and_column():
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 200, size=(count, 5, 7, 3), dtype=np.uint8) for count in (3, 1, 2)]
    pad = 2
    sheet = contact_sheet(rows, pad=pad)
    assert sheet.shape == (3 * 5 + 4 * pad, 3 * 7 + 4 * pad, 3)
    expected = np.full_like(sheet, SHEET_PAD_VALUE)  # naive layout, one frame at a time
    for row_index, row in enumerate(rows):
        for column_index, frame in enumerate(row):
            top, left = pad + row_index * (5 + pad), pad + column_index * (7 + pad)
            expected[top : top + 5, left : left + 7] = frame
    np.testing.assert_array_equal(sheet, expected)


def test_bad_frames_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"expected uint8 frames \(T, H, W, 3\)"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match=r"row 1 has frames of \(4, 4\)"):
        contact_sheet([np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 4, 4, 3), np.uint8)])
