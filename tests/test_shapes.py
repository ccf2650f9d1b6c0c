"""The built-in shapes dataset: grammar, geometry of the drawn object, motion, files on disk, determinism."""

import json

import decord
import numpy as np
import pytest

from cogvideo_lite.data.shapes import (
    BACKGROUND_LEVELS,
    BACKGROUND_TINT,
    COLOURS,
    DIRECTIONS,
    MIN_SECONDS,
    SHAPES,
    SPEEDS,
    ClipSpec,
    all_captions,
    generate,
    main,
    render_clip,
)
from cogvideo_lite.data.video import is_feasible, probe

SPEC = ClipSpec()
SHAPE_AREAS = {  # area of each shape in units of radius**2: circle pi r^2, square (2r)^2, triangle base 2r x height 2r / 2
    "circle": np.pi,
    "square": 4.0,
    "triangle": 2.0,
}


def colour_mask(frames: np.ndarray, colour: str, tolerance: int = 0) -> np.ndarray:
    """Pixels within `tolerance` of the pure colour in every channel: (T, H, W) bool."""
    return (np.abs(frames.astype(int) - np.array(COLOURS[colour])) <= tolerance).all(axis=-1)


def test_all_captions_is_the_full_grammar():
    captions = all_captions()
    assert len(captions) == len(set(captions)) == 168 == len(COLOURS) * len(SHAPES) * len(DIRECTIONS) * len(SPEEDS)
    assert "a red circle moves left slowly" in captions
    assert "a white triangle moves down quickly" in captions
    assert all(value in (0, 255) for rgb in COLOURS.values() for value in rgb)


@pytest.mark.parametrize("shape", SHAPES)
def test_object_area_interior_colour_and_centre(shape):
    frames, truth = render_clip("magenta", shape, "right", "quickly", np.random.default_rng(0), SPEC)
    assert frames.shape == (SPEC.num_frames, SPEC.size, SPEC.size, 3) and frames.dtype == np.uint8
    assert SPEC.num_frames / SPEC.fps >= 4.5
    assert 2 * truth.radius == pytest.approx(SPEC.size / 5)
    # coverage from the red channel: the background is static and every pixel is uncovered at some time
    red = frames[..., 0].astype(np.float64)  # (T, H, W)
    background = red.min(axis=0)
    coverage = (red - background) / (255 - background)
    np.testing.assert_allclose(coverage.sum(axis=(1, 2)), SHAPE_AREAS[shape] * truth.radius**2, rtol=0.02)
    # the interior is exactly the colour; the centre of the covered region is the recorded centre
    pure = colour_mask(frames, "magenta")  # (T, H, W)
    assert (pure == (coverage == 1)).all()
    centres = np.array(truth.centres)
    for index in (0, SPEC.num_frames // 2, SPEC.num_frames - 1):
        rows, columns = np.nonzero(coverage[index] > 0.5)
        box_centre = ((columns.min() + columns.max()) / 2, (rows.min() + rows.max()) / 2)
        np.testing.assert_allclose(box_centre, centres[index], atol=0.5)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_motion_is_straight_constant_and_stays_inside(direction):
    steps = {}
    for speed in SPEEDS:
        _, truth = render_clip("red", "square", direction, speed, np.random.default_rng(5), SPEC)
        centres = np.array(truth.centres)  # (T, 2)
        velocity = np.diff(centres, axis=0) * SPEC.fps  # (T-1, 2) pixels per second
        moving_axis = 0 if direction in ("left", "right") else 1
        sign = -1 if direction in ("left", "up") else 1
        np.testing.assert_allclose(velocity[:, moving_axis], sign * truth.speed_pixels_per_second, atol=1e-2)
        np.testing.assert_allclose(velocity[:, 1 - moving_axis], 0, atol=1e-9)
        assert centres.min() - truth.radius >= 0 and centres.max() + truth.radius <= SPEC.size - 1
        steps[speed] = truth.speed_pixels_per_second
        assert truth.speed_pixels_per_second * 1.0 >= 3.0  # visible between key frames 1 s apart
    assert steps["quickly"] == pytest.approx(2 * steps["slowly"])


def test_background_is_dark_low_saturation_and_static():
    frames, truth = render_clip("white", "circle", "up", "slowly", np.random.default_rng(2), SPEC)
    centres = np.array(truth.centres)
    rows, columns = np.mgrid[: SPEC.size, : SPEC.size]
    far = np.ones((SPEC.size, SPEC.size), bool)
    for x, y in centres:  # pixels never touched by the object in any frame
        far &= np.hypot(columns - x, rows - y) > truth.radius + 2
    background = frames[:, far].astype(int)  # (T, N, 3)
    assert background.max() <= BACKGROUND_LEVELS[1] + BACKGROUND_TINT + 1
    assert (background.max(axis=-1) - background.min(axis=-1)).max() <= 2 * BACKGROUND_TINT + 1
    assert (background == background[0]).all()


def test_generated_dataset_files_and_decoded_colours(shapes_dataset):
    lines = (shapes_dataset / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        record = json.loads(line)
        truth = json.loads((shapes_dataset / record["video"]).with_suffix(".json").read_text())
        assert record["caption"] == f"a {truth['colour']} {truth['shape']} moves {truth['direction']} {truth['speed']}"
        assert (truth["fps"], truth["size"], truth["num_frames"]) == (24, 64, 120)
        reader = decord.VideoReader(str(shapes_dataset / record["video"]))
        assert len(reader) == 120 and reader.get_avg_fps() == pytest.approx(24.0)
        decoded = reader.get_batch(list(range(120))).asnumpy().astype(int)  # (T, 64, 64, 3)
        # pixels within r/4 of the centre lie inside every shape (the triangle's nearest side is r/sqrt(5) away)
        rows, columns = np.mgrid[:64, :64]
        centres = np.array(truth["centres"])  # (T, 2)
        inside = np.hypot(columns - centres[:, 0, None, None], rows - centres[:, 1, None, None]) <= truth["radius"] / 4
        pixels = decoded[inside]  # (N, 3)
        errors = np.abs(pixels - np.array(COLOURS[truth["colour"]])).max(axis=-1)
        # after H.264 / yuv420p at the writer's crf the interior stays close to the pure colour: a few levels on
        # average, and every pixel still nearest to its own colour
        assert errors.mean() < 5
        palette = np.array(list(COLOURS.values()))  # (7, 3)
        nearest = np.abs(pixels[:, None, :] - palette[None]).sum(axis=-1).argmin(axis=1)
        assert (nearest == list(COLOURS).index(truth["colour"])).all()


def test_same_seed_same_clips_other_seed_other_clips(tmp_path):
    first = generate(tmp_path / "a", 2, seed=3, progress=False).parent
    second = generate(tmp_path / "b", 2, seed=3, workers=2, progress=False).parent
    other = generate(tmp_path / "c", 2, seed=4, progress=False).parent
    for name in ("captions.jsonl", "clips/000000.json", "clips/000001.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "clips/000000.json").read_bytes() != (other / "clips/000000.json").read_bytes()
    # x264 may choose differently between runs, so the videos are compared decoded
    for name in ("clips/000000.mp4", "clips/000001.mp4"):
        decoded = [decord.VideoReader(str(root / name)).get_batch(list(range(120))).asnumpy().astype(int)
                   for root in (first, second)]
        assert np.abs(decoded[0] - decoded[1]).mean() < 1.0


def test_command_line_writes_the_dataset(tmp_path, capsys):
    main(["--out", str(tmp_path), "--clips", "2", "--seed", "0", "--size", "32", "--seconds", "4.5", "--fps", "10"])
    truth = json.loads((tmp_path / "clips/000001.json").read_text())
    assert (truth["size"], truth["fps"], truth["num_frames"]) == (32, 10, 45)
    assert len((tmp_path / "captions.jsonl").read_text().splitlines()) == 2
    assert "wrote 2 clips" in capsys.readouterr().out


FAST = ["--seed", "0", "--size", "32", "--seconds", "4.5", "--fps", "4", "--workers", "1"]


def _refused(argv: list[str], capsys) -> str:
    """Run the command line expecting a one-line refusal (exit 2); return that line."""
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_command_line_refuses_a_non_empty_out_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "clips").mkdir(parents=True)
    (out / "captions.csv").write_text("video,caption\nclips/old.mp4,my own caption\n")
    (out / "clips" / "old.mp4").write_bytes(b"a user's clip")
    message = _refused(["--out", str(out), "--clips", "2"] + FAST, capsys)
    assert f"--out {out}: the folder is not empty (it holds captions.csv, clips)" in message
    assert "--overwrite" in message
    assert sorted(path.name for path in out.rglob("*")) == ["captions.csv", "clips", "old.mp4"]  # untouched

    main(["--out", str(out), "--clips", "2", "--overwrite"] + FAST)
    assert sorted(path.name for path in out.rglob("*")) == ["000000.json", "000000.mp4", "000001.json",
                                                            "000001.mp4", "captions.jsonl", "clips"]
    assert len((out / "captions.jsonl").read_text().splitlines()) == 2
    assert [path.name for path in tmp_path.iterdir()] == ["mine"]  # nothing written beside it


@pytest.mark.parametrize("option, value, expected", [
    ("--clips", "0", "--clips 0: expected an integer >= 1"),
    ("--workers", "0", "--workers 0: expected an integer >= 1"),
    ("--size", "8", "--size 8: expected at least 16 pixels"),
    ("--seconds", "3", "--seconds 3.0: expected at least 4.5"),
])
def test_command_line_names_a_bad_option(tmp_path, capsys, option, value, expected):
    arguments = dict(zip(FAST[::2], FAST[1::2]), **{"--clips": "1", option: value})
    message = _refused(["--out", str(tmp_path / "out")] + [item for pair in arguments.items() for item in pair], capsys)
    assert f"error: {expected}" in message, message
    assert not (tmp_path / "out").exists()


def test_command_line_refuses_a_file_as_out(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert f"--out {out}: exists and is not a folder" in _refused(["--out", str(out), "--clips", "1"] + FAST, capsys)
    assert out.read_text() == "keep me"


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match=r"seconds=3.0: expected at least 4.5"):
        ClipSpec(seconds=3.0)
    with pytest.raises(ValueError, match=r"unknown word 'purple'"):
        render_clip("purple", "circle", "up", "slowly", np.random.default_rng(0))


def test_clips_last_at_least_the_requested_seconds(tmp_path):
    assert ClipSpec().num_frames == 120 and ClipSpec(fps=8, seconds=4.5).num_frames == 36  # exact products kept
    assert ClipSpec(fps=30, seconds=4.7).num_frames == 141  # 4.7 * 30 = 141.00000000000003 adds no frame
    for fps in range(1, 31):
        for seconds in (MIN_SECONDS, 4.6, 5.0, 5.25):
            frames = ClipSpec(fps=fps, seconds=seconds).num_frames
            assert (frames - 1) / fps < seconds <= frames / fps + 1e-9, (fps, seconds)
    # 4.5 s at 1 fps: 5 frames, 5 s, so the 5 key frames at 1 fps that MIN_SECONDS promises fit in the written clip
    generate(tmp_path, 1, seed=0, spec=ClipSpec(size=32, fps=1, seconds=MIN_SECONDS), progress=False)
    info = probe(tmp_path / "clips/000000.mp4")
    assert info.num_frames == 5 and info.duration == pytest.approx(5.0)
    assert is_feasible(info.duration, 5, 1)
