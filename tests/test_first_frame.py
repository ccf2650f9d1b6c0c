"""The key-frame stage with `learn_first_frame` and `init_from`: the loss covers frame 0 (against a per-position
cross-entropy written out by hand), a warm start loads exactly the export's temporal weights, the export records
the mark and its shards' steady margin, and a warm start from another stage or other image weights is refused naming
both values; with `init_from_other_image` the temporal weights move onto other image weights of the same architecture
and text model."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.toys import build_toy_inputs, stage_sets
from cogvideo_lite.train.config import load_config
from cogvideo_lite.bundle.exports import FULL_WEIGHTS
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import INTERPOLATE, KEYFRAME, TEMPORAL_WEIGHTS
from cogvideo_lite.provenance import CheckpointMismatch
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.prepare.prepare import PrepareConfig, prepare
from cogvideo_lite.train.generator_task import GeneratorObjective, GeneratorTask
from tests.helpers import CONFIGS, train

LAYOUT = SequenceLayout(text_length=4, num_frames=5, grid=(2, 2), text_vocab_size=20, codebook_size=16)


def test_the_first_frame_loss_is_the_mean_cross_entropy_over_every_key_frame_code():
    assert KEYFRAME.plan(LAYOUT, learn_first_frame=True).loss_slots == (0, 1, 2, 3, 4)
    assert KEYFRAME.plan(LAYOUT).loss_slots == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="learn_first_frame applies to the keyframe stage"):
        INTERPOLATE.plan(LAYOUT, learn_first_frame=True)
    torch.manual_seed(0)
    model = Generator(GeneratorConfig(dim=32, depth=2, heads=2), LAYOUT).double()
    text = torch.tensor([[0, 0, 11, 12], [13, 14, 15, 16]])
    codes = torch.randint(0, 16, (2, 5, 2, 2))
    tokens = LAYOUT.assemble(text, torch.tensor([5, 6]), codes, 3)
    batch = {"tokens": tokens, "text_pad": text == 0}
    logits = model(tokens, batch["text_pad"], KEYFRAME)  # (B, S, 16)
    by_hand = {0: [], 1: []}
    for row in range(2):
        for position in range(LAYOUT.prefix_length, LAYOUT.seq_length):
            target = tokens[row, position].item() - LAYOUT.image_offset
            if target < 0:
                continue  # a BOI: not a code
            log_probs = logits[row, position - 1].log_softmax(-1)  # position p is predicted at p - 1
            frame = (position - LAYOUT.prefix_length) // LAYOUT.slot_length
            by_hand[frame == 0].append(-log_probs[target].item())
    for learn, expected in ((True, by_hand[0] + by_hand[1]), (False, by_hand[0])):
        loss = GeneratorObjective(model, KEYFRAME, LAYOUT, learn_first_frame=learn)(batch, step=0).loss
        assert math.isclose(loss.item(), sum(expected) / len(expected), rel_tol=1e-9)


def test_warm_start_loads_the_export_and_refuses_what_does_not_fit(tmp_path):
    inputs = build_toy_inputs(tmp_path / "toy")
    image_run, keyframe_run = tmp_path / "image", tmp_path / "keyframe"
    train(CONFIGS / "image_tiny.yaml", image_run, stage_sets("image", inputs))
    train(CONFIGS / "keyframe_tiny.yaml", keyframe_run,
          stage_sets("keyframe", inputs, image_run) + ["learn_first_frame=true"])
    export = keyframe_run / "model"
    assert json.loads((export / "generator.json").read_text())["learns_first_frame"] is True
    assert json.loads((export / "generator.json").read_text())["steady_margin"] == 0.0  # plain shards
    steady = tmp_path / "steady-shards"  # shards of steady codes: their margin travels into the export
    prepare(PrepareConfig(data=inputs.shapes, tokenizer=inputs.tokenizer, text=inputs.text, out=steady,
                          steady_margin=0.05), progress=False, device="cpu")
    GeneratorTask(load_config(CONFIGS / "keyframe_tiny.yaml", stage_sets("keyframe", inputs, image_run) + [
        f"run_dir={tmp_path / 'steady'}", f"data.shards={steady}"])).export(tmp_path / "steady-export")
    assert json.loads((tmp_path / "steady-export" / "generator.json").read_text())["steady_margin"] == 0.05

    def task_from(init_from, stage="keyframe"):
        sets = stage_sets(stage, inputs, image_run) + [f"run_dir={tmp_path / 'next'}", f"init_from={init_from}"]
        return GeneratorTask(load_config(CONFIGS / f"{stage}_tiny.yaml", sets))

    saved = load_file(str(export / TEMPORAL_WEIGHTS))
    loaded = task_from(export).model.temporal_state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    fresh = GeneratorTask(load_config(CONFIGS / "keyframe_tiny.yaml", stage_sets("keyframe", inputs, image_run)
                                      + [f"run_dir={tmp_path / 'fresh'}"])).model.temporal_state_dict()
    assert any(not torch.equal(saved[k], fresh[k]) for k in saved)  # training moved them: the load is not a no-op
    assert all(torch.equal(fresh[k], torch.zeros_like(fresh[k])) for k in fresh if k.endswith("mixing"))
    leaning = GeneratorTask(load_config(CONFIGS / "keyframe_tiny.yaml", stage_sets("keyframe", inputs, image_run)
                                        + [f"run_dir={tmp_path / 'leaning'}", "spatial_share_init=0.25"]))
    mixing = [v for k, v in leaning.model.temporal_state_dict().items() if k.endswith("mixing")]
    assert len(mixing) == leaning.model.config.depth
    assert all(torch.allclose(torch.sigmoid(v), torch.full_like(v, 0.25)) for v in mixing)

    with pytest.raises(CheckpointMismatch, match="stage 'keyframe' where one of stage 'interpolate' was expected"):
        task_from(export, stage="interpolate")
    other = tmp_path / "other"
    shutil.copytree(export, other)
    spec = json.loads((other / "generator.json").read_text())
    (other / "generator.json").write_text(json.dumps({**spec, "image_weights_sha256": "0" * 64}))
    with pytest.raises(CheckpointMismatch, match="records image export weights sha256 0{64}, but .* has "
                                                 "[0-9a-f]{64}"):
        task_from(other)

    # init_from_other_image: the same export onto other image weights of the same architecture, text and tokenizer
    moved = tmp_path / "image-moved"
    shutil.copytree(image_run / "model", moved / "model")
    moved_weights = {name: value + 0.01 for name, value in load_file(str(moved / "model" / FULL_WEIGHTS)).items()}
    save_file(moved_weights, str(moved / "model" / FULL_WEIGHTS))

    def rebased(init_from, *extra):
        sets = stage_sets("keyframe", inputs, moved) + [f"run_dir={tmp_path / 'rebased'}", f"init_from={init_from}"]
        return GeneratorTask(load_config(CONFIGS / "keyframe_tiny.yaml", sets + list(extra)))

    with pytest.raises(CheckpointMismatch, match="records image export weights sha256"):
        rebased(export)
    model = rebased(export, "init_from_other_image=true").model
    loaded = model.temporal_state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    spatial = {k: v for k, v in model.state_dict().items() if k not in loaded}
    assert spatial.keys() == moved_weights.keys() - loaded.keys()  # every other tensor is the new image export's
    assert all(torch.equal(spatial[k], moved_weights[k]) for k in spatial)
    for key, value, named in (("model", {**spec["model"], "dim": 2 * spec["model"]["dim"]}, "architecture"),
                              ("text", {**spec["text"], "model_sha256": "0" * 64}, "text model sha256")):
        (other / "generator.json").write_text(json.dumps({**spec, key: value}))
        with pytest.raises(CheckpointMismatch, match=f"records {named} .*, but .* has"):
            rebased(other, "init_from_other_image=true")
