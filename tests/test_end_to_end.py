"""The whole pipeline through its command-line entry points, at toy size: text model -> prepare -> image ->
keyframe -> interpolate (each through train.py and DeepSpeed) -> bundle -> sample.py -> an mp4 decord reads back."""

import json

import decord
import pytest

from tests.helpers import CONFIGS, run_script, train

TOY_MODEL = ["model.dim=32", "model.depth=2", "model.heads=2"]


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory, shapes_dataset):
    run_dir = tmp_path_factory.mktemp("tok") / "run"
    train(CONFIGS / "tokenizer_tiny.yaml", run_dir,
          [f"data.sources=[{{path: {shapes_dataset}, frames: 2}}]", "data.heldout=[]", "tokenizer.channels=32",
           "tokenizer.channel_mult=[1, 1, 1, 1]", "tokenizer.codebook_size=64", "train.steps=2",
           "train.micro_batch=4"])
    return run_dir / "model"


def test_every_stage_trains_and_sample_writes_a_video(tmp_path, shapes_dataset, toy_tokenizer):
    text, shards = tmp_path / "text", tmp_path / "shards"
    run_script(["-m", "cogvideo_lite.text", "--data", str(shapes_dataset), "--out", str(text)])
    run_script(["-m", "cogvideo_lite.prepare", "--data", str(shapes_dataset), "--tokenizer", str(toy_tokenizer),
                "--text", str(text), "--out", str(shards)])
    common = [f"data.shards={shards}", "train.steps=2", "train.micro_batch=4", "train.log_every=1"] + TOY_MODEL
    train(CONFIGS / "image_tiny.yaml", tmp_path / "image", common)
    for stage in ("keyframe", "interpolate"):
        train(CONFIGS / f"{stage}_tiny.yaml", tmp_path / stage, common + [f"image_checkpoint={tmp_path / 'image'}"])
        spec = json.loads((tmp_path / stage / "model" / "generator.json").read_text())
        assert spec["stage"] == stage and spec["image_weights_sha256"]

    bundle = tmp_path / "bundle"
    run_script(["-m", "cogvideo_lite.bundle", "--out", str(bundle), "--tokenizer", str(toy_tokenizer),
                "--text", str(shards / "text"), "--image", str(tmp_path / "image" / "model"),
                "--keyframe", str(tmp_path / "keyframe" / "model"),
                "--interpolate", str(tmp_path / "interpolate" / "model")])
    out = tmp_path / "videos"
    run_script(["sample.py", "--ckpt", str(bundle), "--prompt", "a red circle moves left slowly", "--out", str(out),
                "--rounds", "2", "--seed", "3"])
    (sample,) = json.loads((out / "samples.json").read_text())["samples"]
    assert sample["num_frames"] == 17 and sample["fps"] == 4
    video = next(out.glob("*.mp4"))
    reader = decord.VideoReader(str(video))
    assert len(reader) == 17  # 5 key frames -> 9 -> 17
    assert reader[0].shape == (64, 64, 3)
    assert list(out.glob("*.gif")) and list(out.glob("*_sheet.png"))
