"""The analytic checker against ground truth: rendered clips and the same clips round-tripped through mp4 (x264 and
decord), deliberately wrong clips, and its building blocks against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cogvideo_lite.evaluate.checker import (STILL, check_frames, check_video, colour_patterns, fit_velocity,
                                   interpolation_errors, largest_region)
from cogvideo_lite.data.media import write_mp4
from cogvideo_lite.data.shapes import COLOURS, DIRECTIONS, SHAPES, SPEEDS, ClipSpec, render_clip
from cogvideo_lite.data.video import read_frames_at

SPEC = ClipSpec(fps=8, seconds=4.5)  # 36 frames at 8 fps: 33 of them are 5 key frames at 1 fps and 3 rounds
ROUNDS = 3
FRAMES = 33
KEY_INDICES = list(range(0, FRAMES, 2 ** ROUNDS))
NUM_CLIPS = 42  # every colour, shape, direction and speed, each several times


def clip_words(index: int) -> tuple[str, str, str, str]:
    return (list(COLOURS)[index % 7], SHAPES[index % 3], DIRECTIONS[index % 4], SPEEDS[(index // 4) % 2])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """(words, truth, rendered (33, 64, 64, 3), decoded from mp4 (33, 64, 64, 3)) per clip."""
    folder = tmp_path_factory.mktemp("checker")
    out = []
    for index in range(NUM_CLIPS):
        words = clip_words(index)
        frames, truth = render_clip(*words, np.random.default_rng([11, index]), SPEC)
        path = write_mp4(folder / f"{index}.mp4", frames, SPEC.fps)
        decoded = read_frames_at(path, np.arange(FRAMES) / SPEC.fps)
        out.append((words, truth, frames[:FRAMES], decoded))
    return out


@pytest.fixture(scope="module")
def checks(clips):
    """{"rendered": [VideoCheck], "mp4": [VideoCheck]}."""
    return {kind: [check_video(clip[position], KEY_INDICES) for clip in clips]
            for kind, position in (("rendered", 2), ("mp4", 3))}


# ------------------------------------------------------------------ ground truth
@pytest.mark.parametrize("kind", ["rendered", "mp4"])
def test_colour_shape_and_direction_of_ground_truth(clips, checks, kind):
    for position, word in enumerate(("colour", "shape", "direction")):
        right = np.mean([getattr(check, word) == words[position] for check, (words, *_) in zip(checks[kind], clips)])
        assert right >= 0.97, (kind, word, right)
    assert np.mean([check.consistency for check in checks[kind]]) >= 0.97
    assert all(check.detected == 1.0 for check in checks[kind])


def test_every_grammar_word_is_covered():
    used = [clip_words(index) for index in range(NUM_CLIPS)]
    for position, choices in enumerate((COLOURS, SHAPES, DIRECTIONS, SPEEDS)):
        assert {words[position] for words in used} == set(choices)


@pytest.mark.parametrize("kind", ["rendered", "mp4"])
def test_centres_move_with_the_ground_truth(clips, checks, kind):
    """The centroid moves exactly as the truth's centre does (a triangle's centroid sits below its box centre,
    a constant offset that motion cancels)."""
    errors = []
    for check, (_, truth, *_) in zip(checks[kind], clips):
        found = np.array([frame.centre for frame in check.frames])  # (33, 2)
        expected = np.array(truth.centres[:FRAMES])
        errors.append(np.abs((found - found[0]) - (expected - expected[0])).mean())
    assert np.mean(errors) < 0.25 and np.max(errors) < 0.6


@pytest.mark.parametrize("kind", ["rendered", "mp4"])
def test_key_displacement_is_the_speed_and_quickly_is_twice_slowly(clips, checks, kind):
    by_speed = {speed: [] for speed in SPEEDS}
    for check, (words, truth, *_) in zip(checks[kind], clips):
        # 1 key frame = 1 s; five centroids, each within about half a pixel
        assert check.key_displacement == pytest.approx(truth.speed_pixels_per_second, abs=0.4)
        by_speed[words[3]].append(check.key_displacement)
    assert np.mean(by_speed["quickly"]) / np.mean(by_speed["slowly"]) == pytest.approx(2.0, rel=0.03)


@pytest.mark.parametrize("kind", ["rendered", "mp4"])
def test_interpolation_error_of_linear_motion_is_near_zero(checks, kind):
    errors = [error for check in checks[kind] for error in check.interpolation_errors]
    assert len(errors) == NUM_CLIPS * (FRAMES - len(KEY_INDICES))
    assert np.mean(errors) < 0.3 and max(errors) < 1.5
    assert all(check.interpolation_skipped == 0 for check in checks[kind])


# ------------------------------------------------------------------ wrong clips
def test_reversed_clip_moves_the_other_way(clips):
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    for words, _, _, decoded in clips[:8]:
        assert check_video(decoded[::-1].copy(), KEY_INDICES).direction == opposite[words[2]]


def test_colour_change_halfway_is_inconsistent():
    rng_state = [5, 1]
    red, _ = render_clip("red", "square", "right", "slowly", np.random.default_rng(rng_state), SPEC)
    green, _ = render_clip("green", "square", "right", "slowly", np.random.default_rng(rng_state), SPEC)
    mixed = np.concatenate([red[:20], green[20:FRAMES]])  # same path, colour switches at frame 20
    check = check_video(mixed, KEY_INDICES)
    assert check.colour == "red" and check.consistency == pytest.approx(20 / FRAMES)
    assert check.colour_consistency == pytest.approx(20 / FRAMES) and check.shape_consistency == 1.0
    assert check.direction == "right"
    assert [frame.colour for frame in check.frames] == ["red"] * 20 + ["green"] * (FRAMES - 20)


def test_shape_change_is_inconsistent_and_a_still_object_has_no_direction():
    circle, _ = render_clip("blue", "circle", "up", "slowly", np.random.default_rng(3), SPEC)
    triangle, _ = render_clip("blue", "triangle", "up", "slowly", np.random.default_rng(3), SPEC)
    mixed = np.concatenate([triangle[:10], circle[10:FRAMES]])
    check = check_video(mixed, KEY_INDICES)
    assert check.shape == "circle" and check.consistency == pytest.approx(23 / FRAMES)
    assert check.shape_consistency == pytest.approx(23 / FRAMES) and check.colour_consistency == 1.0
    still = np.repeat(circle[:1], FRAMES, axis=0)
    assert check_video(still, KEY_INDICES).direction == STILL
    assert check_video(still, KEY_INDICES).key_displacement == pytest.approx(0.0, abs=1e-9)


def test_frames_without_an_object_are_counted_not_guessed():
    frames, _ = render_clip("cyan", "square", "left", "quickly", np.random.default_rng(4), SPEC)
    frames = frames[:FRAMES].copy()
    frames[2] = np.full_like(frames[2], 30)  # a blank dark frame
    check = check_video(frames, KEY_INDICES)
    assert check.frames[2].colour is None and check.frames[2].centre is None
    assert check.detected == pytest.approx(32 / 33) and check.consistency == pytest.approx(32 / 33)
    assert check.colour_consistency == check.shape_consistency == pytest.approx(32 / 33)
    assert check.interpolation_skipped == 3  # frame 2 itself, and frames 1 and 3 made from it
    assert len(check.interpolation_errors) == FRAMES - len(KEY_INDICES) - 3
    empty = check_video(np.full((5, 64, 64, 3), 30, dtype=np.uint8))
    assert (empty.colour, empty.shape, empty.direction, empty.key_displacement, empty.consistency) == \
        (None, None, None, None, 0.0)


# ------------------------------------------------------------------ building blocks
def test_colour_patterns_name_each_pure_colour_and_ignore_the_rest():
    values = np.array([list(value) for value in COLOURS.values()] + [[0, 0, 0], [62, 62, 62], [200, 120, 0],
                                                                       [170, 90, 60]], dtype=np.uint8)
    patterns = colour_patterns(values.reshape(1, 1, -1, 3))[0, 0]
    assert list(patterns[:7]) == [4, 2, 1, 6, 3, 5, 7]  # red, green, blue, yellow, cyan, magenta, white
    assert list(patterns[7:]) == [-1, -1, -1, 4]  # black, background grey, orange: none; a dull red is red


def test_largest_region_matches_scipy_labelling_with_eight_neighbours():
    generator = np.random.default_rng(0)
    for _ in range(30):
        mask = generator.random((20, 24)) < generator.uniform(0.2, 0.6)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        region = largest_region(mask)
        assert region.sum() == sizes.max()
        assert np.array_equal(region, labels == 1 + int(np.argmax(sizes)))  # first in raster order on a tie
    diagonal = np.eye(6, dtype=bool)
    diagonal[0, 5] = True
    assert np.array_equal(largest_region(diagonal), np.eye(6, dtype=bool))
    assert not largest_region(np.zeros((4, 4), dtype=bool)).any()


def test_fit_velocity_is_the_least_squares_slope():
    generator = np.random.default_rng(1)
    times = np.sort(generator.uniform(0, 10, 12))
    centres = generator.normal(size=(12, 2)) + times[:, None] * np.array([0.7, -1.3])
    expected = [np.polyfit(times, centres[:, axis], 1)[0] for axis in range(2)]
    assert fit_velocity(times, centres) == pytest.approx(expected, rel=1e-10)
    assert fit_velocity(times[:1], centres[:1]) is None


def test_interpolation_error_uses_the_frames_each_round_interpolated_between():
    centres = [(float(index), 2.0 * index) for index in range(9)]  # linear motion, key frames 0, 4, 8
    centres[2] = (2.0 + 3.0, 4.0 + 4.0)  # made in round 1 between 0 and 4: off by (3, 4)
    errors, skipped = interpolation_errors(centres, stride=4)
    # frames 1, 2, 3, 5, 6, 7: 1 and 3 were made between 0|2 and 2|4, so half of frame 2's offset shows
    assert errors == pytest.approx([2.5, 5.0, 2.5, 0.0, 0.0, 0.0]) and skipped == 0
    centres[6] = None
    errors, skipped = interpolation_errors(centres, stride=4)
    assert skipped == 3 and errors == pytest.approx([2.5, 5.0, 2.5])


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"expected uint8 frames \(T, H, W, 3\)"):
        check_frames(np.zeros((3, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected uint8 frames"):
        check_video(np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="key_indices"):
        check_video(np.zeros((9, 8, 8, 3), dtype=np.uint8), [0, 3, 6])
    with pytest.raises(ValueError, match="key_indices"):
        check_video(np.zeros((7, 8, 8, 3), dtype=np.uint8), [0, 3, 6])  # stride 3 is no power of two
