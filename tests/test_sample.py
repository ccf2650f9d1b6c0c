"""sample.py on a tiny untrained bundle: real mp4 / gif / png outputs read back, user errors stop with exit code 2
before anything is written, and real clips given through --init-video / --interpolate-video."""

from __future__ import annotations

import json
import re
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from PIL import Image

import sample
from cogvideo_lite.data.media import write_mp4
from cogvideo_lite.model.stages import INTERPOLATE, KEYFRAME
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Request, Video, generate_videos
from tests.helpers import run_script
from tokenizer.frames import to_model_frames

PROMPT = "a red circle moves left slowly"
CLIP_FPS = 8
CLIP_SECONDS = 5
CLIP_SIZE = 40  # read_clip resizes it to the tokenizer's 32 pixels


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A real mp4: a white square moving right over a gradient, 5 s at 8 fps, 40x40; and its frames."""
    frames = np.zeros((CLIP_FPS * CLIP_SECONDS, CLIP_SIZE, CLIP_SIZE, 3), dtype=np.uint8)
    frames[..., 2] = np.linspace(0, 120, CLIP_SIZE, dtype=np.uint8)[None, :, None]
    for index, frame in enumerate(frames):
        left = index % (CLIP_SIZE - 10)
        frame[15:25, left:left + 10] = 255
    path = tmp_path_factory.mktemp("clip") / "square.mp4"
    return write_mp4(path, frames, CLIP_FPS), frames


def run_sample(arguments: list[str], bundle: Path, out: Path) -> list[dict]:
    return sample.main(["--ckpt", str(bundle), "--out", str(out)] + arguments)


# ------------------------------------------------------------------ end to end
def test_sample_script_writes_a_readable_video_gif_and_sheet(bundle, tmp_path):
    out = tmp_path / "out"
    result = run_script(["sample.py", "--ckpt", str(bundle), "--prompt", PROMPT, "--out", str(out), "--seed", "5"])
    stem = "a_red_circle_moves_left_slowly_5_0"
    assert str(out / f"{stem}.mp4") in result.stdout and "samples.json" in result.stdout
    reader = decord.VideoReader(str(out / f"{stem}.mp4"))
    assert len(reader) == 33 and reader[0].shape == (32, 32, 3)
    assert reader.get_avg_fps() == pytest.approx(8)
    with Image.open(out / f"{stem}.gif") as gif:
        assert gif.n_frames == 33 and gif.size == (32, 32)
    with Image.open(out / f"{stem}_sheet.png") as sheet:  # key row + all 33 frames in rows of 17: 3 rows x 17
        assert sheet.size == (17 * 32 + 18 * 2, 3 * 32 + 4 * 2)
    listing = json.loads((out / "samples.json").read_text())
    assert listing["rounds"] == 3 and listing["key_rate"] == 1
    assert listing["samples"] == [{"prompt": PROMPT, "seed": 5, "sample_index": 0, "fps": 8, "key_rate": 1,
                                   "num_frames": 33, "key_indices": [0, 8, 16, 24, 32], "mp4": f"{stem}.mp4",
                                   "gif": f"{stem}.gif", "sheet": f"{stem}_sheet.png"}]


def test_prompts_file_samples_and_knobs(bundle, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n\n  \na blue square moves up quickly\n{PROMPT}\n")
    out = tmp_path / "out"
    entries = run_sample(["--prompts", str(prompts), "--num-samples", "2", "--fps", "4", "--batch-size", "3",
                          "--top-k", "5", "--top-p", "0.9", "--cfg", "2", "--temperature", "0.8"], bundle, out)
    assert [(e["prompt"], e["sample_index"], e["num_frames"], e["fps"]) for e in entries] == [
        (p, i, 9, 8) for p in (PROMPT, "a blue square moves up quickly", PROMPT) for i in range(2)]
    names = [entry["mp4"] for entry in entries]
    assert len(set(names)) == 6 and names[4] == "a_red_circle_moves_left_slowly-2_0_0.mp4"
    assert all((out / name).is_file() for name in names)
    knobs = json.loads((out / "samples.json").read_text())["knobs"]
    assert knobs == {"temperature": 0.8, "top_k": 5, "top_p": 0.9, "guidance_scale": 2.0,
                     "expert_weight": 0.0, "decode": "exact"}


def test_a_bundles_recommended_knobs_fill_in_what_the_command_line_leaves_out(bundle, tmp_path, capsys):
    import shutil

    from cogvideo_lite.bundle.make import make_bundle, parse_recommendations

    recommended = tmp_path / "recommended"
    make_bundle(recommended, {name: bundle / name for name in ("tokenizer", "text", "image", "keyframe",
                                                               "interpolate")},
                recommended_knobs=parse_recommendations(["top_k=3", "interp_top_k=1", "temperature=0.5"]))
    assert json.loads((recommended / "sampling.json").read_text()) == {"top_k": 3, "interp_top_k": 1,
                                                                      "temperature": 0.5}

    def knobs_of(arguments, out):
        run_sample(["--prompt", PROMPT, "--fps", "4", "--rounds", "1"] + arguments, recommended, tmp_path / out)
        listing = json.loads((tmp_path / out / "samples.json").read_text())
        return listing["knobs"], listing["interpolation_knobs"]["top_k"]

    plain = {"top_p": 1.0, "guidance_scale": 1.0, "expert_weight": 0.0, "decode": "exact"}
    assert knobs_of([], "a") == ({"temperature": 0.5, "top_k": 3, **plain}, 1)
    assert knobs_of(["--top-k", "7", "--temperature", "1"], "b") == (
        {"temperature": 1.0, "top_k": 7, **plain}, 1)  # given flags win
    run_sample(["--prompt", PROMPT, "--fps", "4", "--rounds", "1"], bundle, tmp_path / "c")  # no sampling.json
    assert json.loads((tmp_path / "c" / "samples.json").read_text())["knobs"]["top_k"] is None
    for content, message in (('{"top_kk": 3}', "unknown sampling knob(s) top_kk"),
                             ('{"top_k": 0}', "top_k=0: expected null or an integer >= 1"),
                             ("{top_k: 3", "not valid JSON")):
        (recommended / "sampling.json").write_text(content)
        with pytest.raises(SystemExit) as raised:
            run_sample(["--prompt", PROMPT], recommended, tmp_path / "d")
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert raised.value.code == 2 and "sampling.json" in error and message in error, error
    assert not (tmp_path / "d").exists()
    shutil.rmtree(recommended)


def test_bundle_recommend_reads_knob_values_and_names_a_bad_one():
    from cogvideo_lite.bundle.make import BundleError, parse_recommendations

    assert parse_recommendations(["top_k=20", "interp_top_k=1", "temperature=0.9", "cfg=2"]) == {
        "top_k": 20, "interp_top_k": 1, "temperature": 0.9, "cfg": 2.0}
    assert parse_recommendations(["top_k=none", "top_p=0.9"]) == {"top_k": None, "top_p": 0.9}
    assert parse_recommendations(["decode=diagonal-2-3"]) == {"decode": "diagonal-2-3"}
    for items, message in ((["top_k"], "expected name=value"), (["top_k=abc"], "'abc' is not a number"),
                           (["topk=3"], "unknown sampling knob(s) topk"), (["top_p=2"], "top_p=2.0"),
                           (["interp_top_k=0"], "interp_top_k=0"), (["cfg=-1"], "cfg=-1.0"),
                           (["top_p=none"], "top_p=None"),
                           (["decode=diagonal-0-2"], "decode='diagonal-0-2': expected sequential, exact, or")):
        with pytest.raises(BundleError, match=re.escape(message)):
            parse_recommendations(items)


def test_sheet_rows_hold_key_frames_then_all_frames():
    def rows_of(num_frames: int, stride: int) -> list[int]:
        frames = np.zeros((num_frames, 4, 4, 3), dtype=np.uint8)
        video = Video(PROMPT, 0, 0, 1, stride, torch.zeros(num_frames, 1, 1, dtype=torch.long), frames,
                             list(range(0, num_frames, stride)))
        return [len(row) for row in sample.sheet_rows(video)]
    assert rows_of(5, 1) == [5, 5] and rows_of(9, 2) == [5, 9]
    assert rows_of(17, 4) == [5, 9, 8] and rows_of(33, 8) == [5, 17, 16]


# ------------------------------------------------------------------ user errors
def test_user_error_exits_2_with_one_line_and_no_traceback(bundle, tmp_path):
    result = run_script(["sample.py", "--ckpt", str(bundle), "--prompt", PROMPT, "--out", str(tmp_path / "out"),
                         "--temperature", "0"], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "sample.py: error: --temperature 0.0: must be a number > 0; try --temperature 1.0")
    assert not (tmp_path / "out").exists()


def test_each_invalid_input_fails_before_writing_anything(bundle, clip, tmp_path, capsys):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("hello")
    empty_prompts = tmp_path / "blank.txt"
    empty_prompts.write_text("\n \n")
    long_prompt = "a red circle moves left slowly and a green square moves up quickly"
    cases = [
        (["--temperature", "-1"], "--temperature -1.0: must be a number > 0"),
        (["--top-k", "0"], "--top-k 0: must be an integer >= 1"),
        (["--top-p", "1.5"], r"--top-p 1.5: must be a number in \(0, 1\]"),
        (["--top-p", "0"], r"--top-p 0.0: must be a number in \(0, 1\]"),
        (["--cfg", "-0.5"], "--cfg -0.5: must be a number >= 0; it is the guidance scale"),
        (["--interp-top-k", "0"], "--interp-top-k 0: must be an integer >= 1; leave it out to use --top-k"),
        (["--expert-weight", "-1"], "--expert-weight -1.0: must be a number >= 0; 0 turns the expert off"),
        (["--interp-expert-weight", "-0.1"], "--interp-expert-weight -0.1: must be a number >= 0"),
        (["--decode", "fast"], "--decode fast: must be sequential, exact, or diagonal-R-F"),
        (["--decode", "diagonal-2-2", "--no-cache"], "--no-cache with --decode diagonal-2-2: an approximate mode"),
        (["--num-samples", "0"], "--num-samples 0: must be >= 1"),
        (["--rounds", "4"], r"--rounds 4: from 1 fps the rates \(1, 2, 4, 8\) allow 0..3 interpolation rounds"),
        (["--fps", "4", "--rounds", "2"], r"--rounds 2: from 4 fps .* allow 0..1"),
        (["--fps", "3"], "--fps 3: not a configured key-frame rate; choose one of 1, 2, 4, 8"),
        (["--prompt", ""], "--prompt number 2 is empty"),
        (["--prompts", str(empty_prompts)], "no captions"),
        (["--prompt", long_prompt],
         r"--prompt number 2: caption needs 15 text tokens but the text length is 8: .*; shorten it"),
        (["--init-video", str(not_a_video)], f"--init-video {not_a_video}: .*not a video"),
        (["--init-video", str(clip[0]), "--init-frames", "6"], r"--init-frames 6: must be in 1..5"),
        (["--init-frames", "2"], "--init-frames has no effect without --init-video"),
        (["--interpolate-video", str(clip[0]), "--fps", "1", "--rounds", "0", "--init-video", str(clip[0])],
         "not allowed with argument"),
        (["--interpolate-video", str(tmp_path / "missing.mp4")], "file not found"),
    ]
    for arguments, message in cases:
        with pytest.raises(SystemExit) as raised:
            run_sample(["--prompt", PROMPT] + arguments, bundle, tmp_path / "out")
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert raised.value.code == 2 and error.startswith("sample.py: error: "), arguments
        assert re.search(message, error), (arguments, error)
    with pytest.raises(SystemExit) as raised:
        run_sample([], bundle, tmp_path / "out")
    assert raised.value.code == 2 and "no prompt given" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def user_error(arguments: list[str], bundle: Path, out: Path, capsys) -> str:
    """Run sample.py expecting a user error: exit code 2 and one line on stderr, returned without its prefix."""
    with pytest.raises(SystemExit) as raised:
        run_sample(arguments, bundle, out)
    lines = capsys.readouterr().err.strip().splitlines()
    assert raised.value.code == 2 and lines[-1].startswith("sample.py: error: "), lines
    return lines[-1].removeprefix("sample.py: error: ")


def test_blank_looking_or_tokenless_prompts_are_refused_naming_them(bundle, tmp_path, capsys):
    out = tmp_path / "out"
    hint = f"give a caption like --prompt '{PROMPT}'"
    for invisible in ("\u200b", "\ufeff", " \u2060\t", "\u200e\u00a0"):  # zero-width space, BOM, joiner, marks
        assert user_error(["--prompt", PROMPT, "--prompt", invisible], bundle, out, capsys) == (
            f"--prompt number 2 is empty; {hint}")
    assert user_error(["--prompt", "\u2581"], bundle, out, capsys) == (  # sentencepiece's own space mark
        f"--prompt number 1 is empty to the text model ('\u2581' gives no text tokens); give a caption like '{PROMPT}'")
    listed = tmp_path / "listed.txt"
    listed.write_text(f"\ufeff\n{PROMPT}\n\u200b\n\ufffd\n", encoding="utf-8")  # line 4: no tokens
    assert user_error(["--prompts", str(listed)], bundle, out, capsys) == (
        f"--prompts {listed} line 4 is empty to the text model ('\ufffd' gives no text tokens); "
        f"give a caption like '{PROMPT}'")
    invisible_only = tmp_path / "invisible.txt"
    invisible_only.write_text("\u200b\n\ufeff\n", encoding="utf-8-sig")
    assert user_error(["--prompts", str(invisible_only)], bundle, out, capsys) == (
        f"--prompts {invisible_only}: no captions (only blank lines); write one caption per line")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(f"{PROMPT}\na caf\u00e9 circle\n".encode("latin-1"))
    assert user_error(["--prompts", str(latin1)], bundle, out, capsys) == (
        f"--prompts {latin1}: not UTF-8 text (byte 0xe9 at offset {len(PROMPT) + 6}); save the file as UTF-8")
    assert not out.exists()


def test_a_prompts_file_with_a_byte_order_mark_reads_its_captions_by_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(f"\n{PROMPT}\r\n \u200b\na blue square moves up quickly\n", encoding="utf-8-sig")
    args = sample.build_parser().parse_args(["--ckpt", "b", "--out", "o", "--prompts", str(path)])
    assert sample.read_prompts(sample.build_parser(), args) == [
        (f"--prompts {path} line 2", PROMPT), (f"--prompts {path} line 4", "a blue square moves up quickly")]


def test_an_out_that_cannot_be_a_directory_is_refused_before_generating(bundle, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    for out in (notes, notes / "sub"):
        assert user_error(["--prompt", PROMPT], bundle, out, capsys) == (
            f"--out {out}: {notes} is not a directory; give a directory path")
    assert notes.read_text() == "keep me\n"


def test_an_out_holding_an_earlier_run_is_kept_unless_overwrite_replaces_it(bundle, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["--prompt", PROMPT, "--fps", "4", "--rounds", "0"]
    first = run_sample(arguments + ["--seed", "1"], bundle, out)
    (out / "notes.txt").write_text("mine\n")  # not a sample: --overwrite leaves it
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    result = run_script(["sample.py", "--ckpt", str(bundle), "--out", str(out), "--seed", "2"] + arguments,
                        check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"sample.py: error: --out {out}: already holds an earlier run's samples (samples.json); choose another "
        "--out, or pass --overwrite to replace them")
    assert user_error(arguments + ["--overwrite", "--temperature", "0"], bundle, out, capsys).startswith(
        "--temperature 0.0")  # a refused --overwrite run replaces nothing
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    second = run_sample(arguments + ["--seed", "2", "--overwrite"], bundle, out)
    listing = json.loads((out / "samples.json").read_text())
    assert listing["seed"] == 2 and listing["samples"] == second
    new_files = {second[0][kind] for kind in ("mp4", "gif", "sheet")}
    assert {path.name for path in out.iterdir()} == new_files | {"samples.json", "notes.txt"}
    assert not new_files & {first[0][kind] for kind in ("mp4", "gif", "sheet")}
    assert (out / "notes.txt").read_text() == "mine\n"


def test_missing_or_wrong_checkpoint_directory(bundle, tmp_path, capsys):
    for directory, message in ((tmp_path / "nowhere", "does not exist"),
                               (bundle / "tokenizer", "part 'tokenizer' is missing")):
        with pytest.raises(SystemExit) as raised:
            sample.main(["--ckpt", str(directory), "--prompt", PROMPT, "--out", str(tmp_path / "out")])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert raised.value.code == 2 and f"--ckpt {directory}: " in error and message in error
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ given videos
def test_init_video_frames_are_read_at_the_key_rate_and_kept(pipeline, bundle, clip, tmp_path):
    path, frames = clip
    codes = sample.read_video_codes(pipeline, path, num_frames=2, rate=2, stage=KEYFRAME)  # at 0 s, 0.5 s
    decoded = decord.VideoReader(str(path)).get_batch([0, CLIP_FPS // 2]).asnumpy()
    assert torch.equal(codes, pipeline.tokenizer.encode(to_model_frames(decoded, 32)[None]))
    videos = generate_videos(pipeline, Request([PROMPT], key_rate=2, rounds=1, seed=0, num_samples=2, init_codes=codes),
                             SamplingKnobs(), progress=False)
    for video in videos:
        assert torch.equal(video.codes[[0, 2]], codes[0]) and video.codes.shape[0] == 9
    entries = run_sample(["--prompt", PROMPT, "--init-video", str(path), "--init-frames", "2", "--fps", "2",
                          "--rounds", "1"], bundle, tmp_path / "out")
    assert entries[0]["num_frames"] == 9 and (tmp_path / "out" / entries[0]["sheet"]).is_file()


def test_given_frames_are_encoded_as_the_receiving_stage_was_trained(bundle, clip, tmp_path):
    """A stage trained on `prepare --steady-margin m` shards records m; frames given to it are encoded with m."""
    import shutil

    from cogvideo_lite.sample.pipeline import Pipeline

    path, _ = clip
    steady = tmp_path / "bundle"
    shutil.copytree(bundle, steady)
    spec_file = steady / "keyframe" / "generator.json"
    assert json.loads(spec_file.read_text())["steady_margin"] == 0.0  # exports record their shards' margin
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "steady_margin": 0.3}))
    loaded = Pipeline.load(steady)
    assert loaded.steady_margins == {KEYFRAME: 0.3, INTERPOLATE: 0.0}
    decoded = decord.VideoReader(str(path)).get_batch([0, CLIP_FPS // 2, CLIP_FPS]).asnumpy()
    frames = to_model_frames(decoded, 32)[None]
    steady_codes = loaded.tokenizer.encode(frames, steady_margin=0.3)
    plain_codes = loaded.tokenizer.encode(frames)
    assert not torch.equal(steady_codes, plain_codes)  # the margin changes these codes, so the test can tell
    assert torch.equal(sample.read_video_codes(loaded, path, num_frames=3, rate=2, stage=KEYFRAME), steady_codes)
    assert torch.equal(sample.read_video_codes(loaded, path, num_frames=3, rate=2, stage=INTERPOLATE), plain_codes)


def test_interpolate_video_doubles_a_real_clips_frame_count_per_round(pipeline, bundle, clip, tmp_path):
    path, _ = clip
    keys = sample.read_video_codes(pipeline, path, num_frames=5, rate=2, stage=INTERPOLATE)  # (1, 5, h, w)
    for rounds, expected in ((0, 5), (1, 9), (2, 17)):
        entries = run_sample(["--prompt", PROMPT, "--interpolate-video", str(path), "--fps", "2", "--rounds",
                              str(rounds), "--seed", "1"], bundle, tmp_path / f"out{rounds}")
        assert entries[0]["num_frames"] == expected and entries[0]["fps"] == 2 * 2 ** rounds
        assert len(decord.VideoReader(str(tmp_path / f"out{rounds}" / entries[0]["mp4"]))) == expected
    video = generate_videos(pipeline, Request([PROMPT], key_rate=2, rounds=2, seed=1, init_codes=keys), SamplingKnobs(),
                            progress=False)[0]
    assert torch.equal(video.codes[video.key_indices], keys[0])


def test_one_rule_table_covers_every_knob_and_allows_its_builtin_value():
    from cogvideo_lite.sample.knobs import BUILTIN_KNOBS, KNOB_RULES, knob_problems

    assert list(KNOB_RULES) == list(BUILTIN_KNOBS)
    assert knob_problems(BUILTIN_KNOBS) == []
    # the same rule speaks for SamplingKnobs (under its field's name) and for sampling.json
    with pytest.raises(ValueError, match=re.escape("guidance_scale=-1: expected a number >= 0")):
        SamplingKnobs(guidance_scale=-1)
    assert knob_problems({"cfg": -1, "top_k": True, "interp_expert_weight": None}) == [
        "cfg=-1: expected a number >= 0", "top_k=True: expected null or an integer >= 1"]
