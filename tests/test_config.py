"""Config loading: the real YAML files build, and every kind of mistake is reported naming key, value and rule."""

from pathlib import Path

import pytest

from cogvideo_lite.train.config import ConfigError, apply_overrides, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_builds(path):
    config = load_config(path)
    assert config.stage in path.name


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown key"):
        load_config(CONFIGS / "tokenizer_tiny.yaml", ["train.stepz=3"])


def test_unknown_model_key_is_named():
    with pytest.raises(ConfigError, match=r"tokenizer\.codebook: unknown key"):
        load_config(CONFIGS / "tokenizer_tiny.yaml", ["tokenizer.codebook=3"])


def test_all_problems_are_listed_at_once():
    with pytest.raises(ConfigError) as error:
        load_config(CONFIGS / "tokenizer_tiny.yaml", ["train.steps=abc", "train.lr=-1", "data.bogus=1"])
    message = str(error.value)
    assert "train.steps='abc': expected int" in message
    assert "data.bogus: unknown key" in message
    # the value check runs once the types are right
    with pytest.raises(ConfigError, match=r"train.lr=-1.0: expected > 0"):
        load_config(CONFIGS / "tokenizer_tiny.yaml", ["train.lr=-1"])


def test_wrong_type_and_bad_size():
    with pytest.raises(ConfigError, match=r"tokenizer.size='huge': expected one of tiny, small, base"):
        load_config(CONFIGS / "tokenizer_tiny.yaml", ["tokenizer.size=huge"])
    with pytest.raises(ConfigError, match=r"train.micro_batch=2.5: expected int"):
        load_config(CONFIGS / "tokenizer_tiny.yaml", ["train.micro_batch=2.5"])


def test_model_validation_reaches_the_user():
    with pytest.raises(ConfigError, match="downsample"):
        load_config(CONFIGS / "tokenizer_tiny.yaml", ["tokenizer.downsample=3"])


def test_overrides_parse_yaml_values():
    raw = apply_overrides({"train": {"steps": 1}}, ["train.steps=7", "train.betas=[0.8, 0.9]", "data.sources=[a]"])
    assert raw == {"train": {"steps": 7, "betas": [0.8, 0.9]}, "data": {"sources": ["a"]}}
    config = config_from_dict({"stage": "tokenizer", "run_dir": "r", "tokenizer": {"size": "tiny"}, **raw})
    assert config.train.betas == (0.8, 0.9) and config.train.steps == 7
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.steps"])


def test_stage_rules():
    with pytest.raises(ConfigError, match="stage='video'"):
        config_from_dict({"stage": "video", "run_dir": "r"})
    with pytest.raises(ConfigError, match="image_checkpoint: expected the image-stage run directory"):
        config_from_dict({"stage": "keyframe", "run_dir": "r", "model": {"size": "tiny"}, "data": {"shards": "s"}})
    with pytest.raises(ConfigError, match="data.shards: expected a token-shard directory"):
        config_from_dict({"stage": "image", "run_dir": "r", "model": {"size": "tiny"}})


def test_exponent_floats_without_a_dot_are_floats():
    """YAML 1.1 reads `3e-4` as a string; a float field takes it as the number it means, and still refuses words."""
    image = {"stage": "image", "run_dir": "r", "model": {"size": "tiny"}, "data": {"shards": "s"}}
    raw = apply_overrides(image, ["train.lr=3e-4", "train.weight_decay=1E-2"])
    config = config_from_dict(raw)
    assert config.train.lr == 3e-4 and config.train.weight_decay == 1e-2
    with pytest.raises(ConfigError, match=r"train.lr='3e-4x': expected float"):
        config_from_dict({**image, "train": {"lr": "3e-4x"}})


def test_first_frame_and_warm_start_belong_to_the_video_stages():
    video = {"run_dir": "r", "model": {"size": "tiny"}, "data": {"shards": "s"}, "image_checkpoint": "i"}
    assert config_from_dict({"stage": "keyframe", "learn_first_frame": True, **video}).learn_first_frame
    with pytest.raises(ConfigError, match="learn_first_frame: only the keyframe stage generates frame 0, not the "
                                          "interpolate stage"):
        config_from_dict({"stage": "interpolate", "learn_first_frame": True, **video})
    with pytest.raises(ConfigError, match="init_from: the image stage always starts afresh"):
        config_from_dict({"stage": "image", "run_dir": "r", "model": {"size": "tiny"}, "data": {"shards": "s"},
                          "init_from": "k"})
    assert config_from_dict({"stage": "keyframe", "spatial_share_init": 0.25, **video}).spatial_share_init == 0.25
    with pytest.raises(ConfigError, match="spatial_share_init: only the video stages mix a spatial and a temporal "
                                          "channel, not the image stage"):
        config_from_dict({"stage": "image", "run_dir": "r", "model": {"size": "tiny"}, "data": {"shards": "s"},
                          "spatial_share_init": 0.25})
    with pytest.raises(ConfigError, match=r"spatial_share_init: a warm start \(init_from\) keeps the mix"):
        config_from_dict({"stage": "keyframe", "spatial_share_init": 0.25, "init_from": "k", **video})
    with pytest.raises(ConfigError, match="spatial_share_init=1.5: expected a share strictly between 0 and 1"):
        config_from_dict({"stage": "interpolate", "spatial_share_init": 1.5, **video})
    assert config_from_dict({"stage": "keyframe", "init_from": "k", "init_from_other_image": True,
                             **video}).init_from_other_image
    for stage, extra in (("keyframe", {}), ("image", {"init_from": "k"})):
        with pytest.raises(ConfigError, match="init_from_other_image: lets a video-stage warm start"):
            config_from_dict({"stage": stage, "init_from_other_image": True, **extra,
                              **(video if stage == "keyframe" else {"run_dir": "r", "model": {"size": "tiny"},
                                                       "data": {"shards": "s"}})})


def test_problems_inside_a_list_of_sources_name_the_entry():
    """A bad entry of data.sources reports its own problem and index, not just 'expected a list of SourceConfig'."""
    with pytest.raises(ConfigError) as error:
        load_config(CONFIGS / "tokenizer_tiny.yaml",
                    ["data.sources=[a, {path: b, repeats: 4}, {path: c, frames: 0}, {frames: 3}, {path: d, limit: x}]"])
    problems = [p.split(": ", 1)[1] for p in error.value.problems]
    assert problems[0] == ("data.sources[1].repeats: unknown key (expected one of path, frames, repeat, limit, scale, "
                           "min_crop, hue)")
    assert problems[1].startswith("data.sources[2]: source 'c': frames=0,")
    assert "expected frames >= 1" in problems[1]
    assert problems[2:] == ["data.sources[3].path: missing required key", "data.sources[4].limit='x': expected int"]


def test_override_into_an_empty_section(tmp_path):
    """`train:` with every key commented out reads as None; the file loads, and --set can still fill it."""
    path = tmp_path / "empty_train.yaml"
    path.write_text("stage: image\nrun_dir: r\nmodel: {size: tiny}\ndata: {shards: s}\ntrain:\n  # steps: 100\n")
    assert load_config(path).train.steps == 1000
    assert load_config(path, ["train.steps=5"]).train.steps == 5
    with pytest.raises(ConfigError, match=r"override 'run_dir.x=1': run_dir is not a section"):
        load_config(path, ["run_dir.x=1"])


def test_zero_stage_3_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"train\.zero_stage=3: not supported: ZeRO-3 splits each weight"):
        load_config(CONFIGS / "image_tiny.yaml", ["train.zero_stage=3"])
    with pytest.raises(ConfigError, match=r"train\.zero_stage=4: expected 0, 1 or 2"):
        load_config(CONFIGS / "image_tiny.yaml", ["train.zero_stage=4"])
    assert load_config(CONFIGS / "image_tiny.yaml", ["train.zero_stage=1"]).train.zero_stage == 1


def test_compile_belongs_to_the_generator_stages():
    assert load_config(CONFIGS / "keyframe_tiny.yaml", ["train.compile=true"]).train.compile
    with pytest.raises(ConfigError, match=r"train.compile: compiles the generator's transformer blocks; the tokenizer"):
        load_config(CONFIGS / "tokenizer_tiny.yaml", ["train.compile=true"])
