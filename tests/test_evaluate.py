"""Evaluation over prompt sets: metrics on ground-truth clips (ideal values), on deliberately wrong clips, reading a
dataset folder as reference (bad clips skipped and named), and the command end to end on a tiny random bundle."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cogvideo_lite.data.shapes import ClipSpec, caption_for, parse_caption, render_clip
from cogvideo_lite.evaluate.command import main
from cogvideo_lite.evaluate.shapes import ReferenceClip, evaluate_videos, read_reference
from tests.helpers import run_script
from tests.test_frechet import TinyI3D, TinyInception
from tests.test_pipeline import PROMPTS

SPEC = ClipSpec(fps=8, seconds=4.5)
FRAMES = 33  # 5 key frames at 1 fps, 3 rounds
KEY_INDICES = list(range(0, FRAMES, 8))
WORDS = [("red", "circle", "left", "slowly"), ("green", "square", "up", "quickly"),
         ("blue", "triangle", "right", "quickly"), ("white", "circle", "down", "slowly")]


def rendered(words: tuple[str, ...], seed: int) -> tuple[ReferenceClip, ReferenceClip]:
    """A clip at 1 fps key frames with 3 rounds (33 frames at 8 fps) and its key frames at 2 fps."""
    frames, truth = render_clip(*words, np.random.default_rng(seed), SPEC)
    return (ReferenceClip(truth.caption, frames[:FRAMES], KEY_INDICES),
            ReferenceClip(truth.caption, frames[0:17:4], list(range(5))))


def test_parse_caption_reads_the_grammar_and_refuses_the_rest():
    words = parse_caption("a magenta triangle moves down quickly")
    assert (words.colour, words.shape, words.direction, words.speed) == ("magenta", "triangle", "down", "quickly")
    for caption in ("a purple circle moves left slowly", "a red circle moves left", "red circle moves left slowly"):
        with pytest.raises(ValueError, match="outside the shapes grammar"):
            parse_caption(caption)


def test_ground_truth_reaches_the_ideal_values():
    pairs = [rendered(words, seed) for seed, words in enumerate(WORDS)]
    clips, doubled = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
    results = evaluate_videos(clips, [clip.caption for clip in clips], doubled)
    assert results["videos"] == 4 and results["speed_videos"] == {"slowly": 2, "quickly": 2}
    for key in ("colour_accuracy", "shape_accuracy", "direction_accuracy", "consistency", "colour_consistency",
                "shape_consistency", "detection_rate"):
        assert results[key] == 1.0, key
    # SPEC's clips last 4.5 s, the grammar's 5 s: the same travel in less time is 5 / 4.5 times the caption speed
    assert results["speed_error"] == pytest.approx(5 / 4.5 - 1, abs=0.02) and results["speed_unmeasured"] == 0
    assert results["speed_ratio"] == pytest.approx(2.0, rel=0.03)
    assert results["retiming_ratio"] == pytest.approx(2.0, rel=0.03) and results["retiming_pairs"] == 4
    assert results["interpolation_error"] < 0.3 and results["interpolated_frames"] == 4 * (FRAMES - 5)
    speed = SPEC.speed("quickly")  # pixels per second = per key frame at 1 fps
    assert results["displacement_quickly"] == pytest.approx(speed, abs=0.3)
    assert [entry["caption"] for entry in results["per_video"]] == [caption_for(*words) for words in WORDS]


def test_speed_error_is_relative_to_the_caption_speed():
    clip, _ = rendered(("red", "circle", "left", "quickly"), seed=0)
    factor = 5 / SPEC.seconds  # the clip's speed over the grammar's (its clips last 5 s)
    results = evaluate_videos([clip, clip], ["a red circle moves left quickly", "a red circle moves left slowly"])
    errors = [entry["speed_error"] for entry in results["per_video"]]
    assert errors[0] == pytest.approx(factor - 1, abs=0.02)
    assert errors[1] == pytest.approx(2 * factor - 1, abs=0.04)  # quickly is twice slowly
    still = ReferenceClip(clip.caption, np.repeat(clip.frames[:1], FRAMES, axis=0), KEY_INDICES)
    assert evaluate_videos([still], [clip.caption])["speed_error"] == pytest.approx(1.0, abs=1e-6)
    at_two_fps = evaluate_videos([clip], [clip.caption], key_rate=2)  # the same key frames read as twice as fast
    assert at_two_fps["speed_error"] == pytest.approx(2 * factor - 1, abs=0.04)


def test_wrong_direction_and_wrong_colour_are_counted_wrong():
    clip, _ = rendered(WORDS[0], seed=0)  # a red circle moving left
    captions = ["a red circle moves right slowly", "a blue circle moves left slowly"]
    results = evaluate_videos([clip, clip], captions)
    assert results["direction_accuracy"] == 0.5 and results["colour_accuracy"] == 0.5
    assert results["shape_accuracy"] == 1.0
    assert [entry["correct"] for entry in results["per_video"]] == [
        {"colour": True, "shape": True, "direction": False}, {"colour": False, "shape": True, "direction": True}]
    assert results["speed_ratio"] is None and results["retiming_ratio"] is None  # no quickly clip, no 2r clips
    with pytest.raises(ValueError, match="outside the shapes grammar"):
        evaluate_videos([clip], ["a red blob moves left slowly"])
    with pytest.raises(ValueError, match="1 videos for 2 captions"):
        evaluate_videos([clip], captions)


def test_read_reference_reads_the_same_frame_times_and_skips_bad_clips(shapes_dataset, tmp_path):
    root = shutil.copytree(shapes_dataset, tmp_path / "shapes")
    clips, doubled, skipped = read_reference(root, count=10, key_frames=5, key_rate=1, rounds=2, size=None,
                                             doubled=True)
    assert len(clips) == 4 and skipped == []
    assert clips[0].frames.shape == (17, 64, 64, 3) and clips[0].key_indices == [0, 4, 8, 12, 16]
    assert np.array_equal(doubled[0].frames, clips[0].frames[[0, 2, 4, 6, 8]])  # 2 fps = every other 4 fps frame
    truth = json.loads((root / "clips/000000.json").read_text())
    assert clips[0].caption == truth["caption"]

    (root / "clips/000001.json").unlink()
    (root / "clips/000002.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    clips, doubled, skipped = read_reference(root, count=10, key_frames=5, key_rate=1, rounds=1, size=32,
                                             doubled=False)
    assert len(clips) == 2 and doubled is None and clips[0].frames.shape == (9, 32, 32, 3)
    assert len(skipped) == 2 and "000001.mp4: FileNotFoundError" in skipped[0]
    assert "000002.mp4: BadVideo" in skipped[1] and "corrupt or truncated" in skipped[1]
    clips, _, _ = read_reference(root, count=1, key_frames=5, key_rate=1, rounds=0, size=None, doubled=False)
    assert len(clips) == 1


# ------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def feature_networks(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("networks")
    torch.manual_seed(0)
    paths = {"i3d": folder / "i3d.pt", "inception": folder / "inception.pt"}
    torch.jit.script(TinyI3D()).save(str(paths["i3d"]))
    torch.jit.script(TinyInception()).save(str(paths["inception"]))
    return paths


def test_command_writes_every_measure_for_generated_and_reference_videos(bundle, shapes_dataset, feature_networks,
                                                                         tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "report.json"
    result = run_script(["-m", "cogvideo_lite.evaluate", "shapes", "--ckpt", str(bundle), "--prompts", str(prompts),
                         "--seeds", "1", "--rounds", "1", "--batch-size", "2", "--reference", str(shapes_dataset),
                         "--reference-clips", "3", "--i3d", str(feature_networks["i3d"]),
                         "--inception", str(feature_networks["inception"]), "--json", str(out), "--device", "cpu"],
                        timeout=300)
    assert "colour_accuracy" in result.stdout and "FVD:" in result.stdout and "FID:" in result.stdout
    report = json.loads(out.read_text())
    assert (report["key_rate"], report["rounds"], report["fps"]) == (1, 1, 2)
    assert report["arguments"]["seeds"] == 1 and report["arguments"]["prompts"] == str(prompts)
    expected = {"videos", "colour_accuracy", "shape_accuracy", "direction_accuracy", "speed_ratio", "speed_videos",
                "displacement_quickly", "displacement_slowly", "retiming_ratio", "retiming_pairs",
                "interpolation_error", "interpolated_frames", "interpolation_skipped", "consistency",
                "colour_consistency", "shape_consistency", "speed_error", "speed_unmeasured", "detection_rate",
                "per_video"}
    generated, reference = report["generated"], report["reference"]
    assert expected <= set(generated) and expected <= set(reference)
    assert generated["videos"] == 2 and reference["videos"] == 3
    assert generated["interpolated_frames"] + generated["interpolation_skipped"] == 2 * 4  # 9 frames, 5 key
    assert [entry["caption"] for entry in generated["per_video"]] == PROMPTS
    assert reference["colour_accuracy"] == reference["shape_accuracy"] == reference["direction_accuracy"] == 1.0
    assert reference["retiming_pairs"] == 3 and report["reference_skipped"] == []
    assert np.isfinite(report["fvd"]) and report["fvd"] >= 0 and np.isfinite(report["fid"]) and report["fid"] >= 0


def test_round_trip_measures_the_reference_through_the_bundles_tokenizer(bundle, shapes_dataset, tmp_path):
    from tokenizer.frames import to_uint8
    from tokenizer.io import load_tokenizer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    report = main(["shapes", "--ckpt", str(bundle), "--prompts", str(prompts), "--seeds", "1", "--rounds", "1",
                   "--batch-size", "1", "--reference", str(shapes_dataset), "--reference-clips", "3", "--round-trip",
                   "--device", "cpu"])
    assert report["reference_round_trip"] is True
    # by hand: the same clips, each frame encoded and decoded by the bundle's tokenizer
    clips, doubled, _ = read_reference(shapes_dataset, 3, 5, 1, 1, 32, doubled=True)
    tokenizer = load_tokenizer(bundle / "tokenizer").eval()

    def by_hand(clip):
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            return ReferenceClip(clip.caption, to_uint8(tokenizer.decode(tokenizer.encode(frames[None]))[0]),
                                 clip.key_indices)

    expected = evaluate_videos([by_hand(c) for c in clips], [c.caption for c in clips], [by_hand(c) for c in doubled])
    assert report["reference"] == json.loads(json.dumps(expected))
    truth = evaluate_videos(clips, [c.caption for c in clips], doubled)
    assert truth["shape_accuracy"] == 1.0 and report["reference"]["per_video"] != truth["per_video"]  # it changed


def test_evaluate_samples_with_the_bundles_recommended_knobs_unless_given(bundle, tmp_path):
    recommended = tmp_path / "recommended"
    shutil.copytree(bundle, recommended)
    (recommended / "sampling.json").write_text('{"top_k": 3, "interp_top_k": 1}')
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    common = ["shapes", "--ckpt", str(recommended), "--prompts", str(prompts), "--seeds", "1", "--rounds", "1",
              "--batch-size", "1", "--device", "cpu"]
    used = main(common)["arguments"]
    assert (used["top_k"], used["interp_top_k"], used["temperature"], used["cfg"]) == (3, 1, 1.0, 1.0)
    used = main(common + ["--top-k", "9"])["arguments"]
    assert (used["top_k"], used["interp_top_k"]) == (9, 1)


def test_command_refuses_bad_arguments_before_generating(bundle, shapes_dataset, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moves left slowly\na red dog runs\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("a red circle moves left slowly caf\u00e9\n".encode("latin-1"))
    cases = [
        (["--ckpt", str(bundle), "--prompts", str(prompts)], r"prompts\.txt line 2: caption 'a red dog runs'"),
        (["--ckpt", str(bundle), "--prompts", str(latin)], r"latin\.txt: not UTF-8 text \(byte 0xe9 at offset 34\); save the file as UTF-8"),
        ([], "nothing to evaluate"),
        (["--ckpt", str(bundle), "--i3d", str(tmp_path / "i3d.pt")], "give --ckpt and --reference too"),
        (["--ckpt", str(bundle), "--reference", str(shapes_dataset), "--inception", str(tmp_path / "x.pt")],
         r"--inception .*x\.pt: no such file"),
        (["--ckpt", str(bundle), "--rounds", "4"], r"--rounds 4: from 1 fps the rates \(1, 2, 4, 8\) allow 0\.\.3"),
        (["--ckpt", str(tmp_path / "nowhere")], "--ckpt .*nowhere"),
        (["--reference", str(tmp_path / "nowhere")], "no such directory"),
        (["--reference", str(tmp_path)], "--reference: .*no captions file"),
        (["--ckpt", str(bundle), "--seeds", "0"], "--seeds 0: must be >= 1"),
        (["--ckpt", str(bundle), "--seed", "-1"], "--seed -1: must be >= 0"),
        (["--ckpt", str(bundle), "--top-p", "2"], r"--top-p 2.0: must be a number in \(0, 1\]"),  # as sample.py says it
        (["--ckpt", str(bundle), "--interp-top-k", "0"], "--interp-top-k 0: must be an integer >= 1"),
        (["--ckpt", str(bundle), "--round-trip"], "--round-trip .*give --ckpt and --reference"),
    ]
    for arguments, message in cases:
        with pytest.raises(SystemExit) as raised:
            main(["shapes"] + arguments)
        assert raised.value.code == 2
        assert re.search(message, capsys.readouterr().err), message


def test_first_frames_mode_counts_the_checkers_shape_per_captioned_shape(bundle):
    from cogvideo_lite.evaluate.probes import shape_shares

    rng = np.random.default_rng(0)
    words = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "square")]
    frames = np.stack([render_clip(colour, shape, "left", "slowly", rng)[0][0] for colour, shape in words])
    captions = [caption_for(colour, shape, "left", "slowly") for colour, shape in words]
    assert shape_shares(frames, captions) == {"circle": 1.0, "square": 1.0, "triangle": 1.0}
    # the same frames under other shapes' captions: the circle called a square, one square called a triangle
    wrong = [caption_for(c, s, "left", "slowly") for c, s in
             [("red", "square"), ("blue", "square"), ("green", "triangle"), ("yellow", "triangle")]]
    assert shape_shares(frames, wrong) == {"square": 0.5, "triangle": 0.5}
    result = main(["first-frames", "--ckpt", str(bundle), "--seeds", "1"])  # the untrained tiny bundle: end to end
    assert result["captions"] == 168 and set(result["image_model"]) == {"circle", "square", "triangle"}


def test_first_frames_image_option_swaps_in_another_export_that_fits(bundle, tmp_path):
    from safetensors.torch import save_file

    from cogvideo_lite.bundle.exports import read_weights
    from cogvideo_lite.bundle.parts import resolve_parts
    from cogvideo_lite.evaluate.probes import swap_image_model
    from cogvideo_lite.provenance import CheckpointMismatch
    from cogvideo_lite.sample.pipeline import Pipeline

    image = resolve_parts(bundle)["image"]
    other = tmp_path / "image"
    shutil.copytree(image, other)
    weights = read_weights(other / "model.safetensors")
    weights = {name: tensor + 0.01 * torch.randn_like(tensor) for name, tensor in weights.items()}
    save_file(weights, str(other / "model.safetensors"))
    pipeline = Pipeline.load(bundle)
    swap_image_model(pipeline, other)
    assert all(torch.equal(pipeline.image.state_dict()[name], tensor) for name, tensor in weights.items())
    # the bundle's own image export through --image draws the same frames as the bundle itself
    plain = main(["first-frames", "--ckpt", str(bundle), "--seeds", "1", "--device", "cpu"])
    swapped = main(["first-frames", "--ckpt", str(bundle), "--seeds", "1", "--device", "cpu", "--image", str(image)])
    assert swapped["image_model"] == plain["image_model"] and "keyframe_model" not in swapped
    spec = json.loads((other / "generator.json").read_text())
    spec["text"]["model_sha256"] = "0" * 64
    (other / "generator.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointMismatch, match=r"generator.json records text .*, but .*image/generator.json has"):
        swap_image_model(pipeline, other)


def test_stages_mode_runs_each_video_stage_on_true_inputs(bundle, shapes_dataset, tmp_path):
    from cogvideo_lite.prepare.prepare import PrepareConfig, prepare

    shards = tmp_path / "shards"
    prepare(PrepareConfig(data=shapes_dataset, tokenizer=bundle / "tokenizer", text=bundle / "text", out=shards),
            progress=False, device="cpu")
    result = main(["stages", "--ckpt", str(bundle), "--shards", str(shards), "--count", "2", "--starts", "2",
                   "--json", str(tmp_path / "stages.json")])
    assert result["samples"] == 2 and 0 < result["interpolated_frames"] <= 2 * 28  # 28 in-betweens each (some skipped)
    assert 0 <= result["direction_agreement"] <= 1 and result["first_frames"]["captions"] == 2
    assert json.loads((tmp_path / "stages.json").read_text()) == json.loads(json.dumps(result))
