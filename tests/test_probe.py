"""The eval-time measures of generator runs (train/probe.py): each against a closed form or a computation by hand,
and the whole probe of a key-frame run on toy shards, logged by train.py's evaluate and shown on its progress bar."""

import io
import json

import pytest
import torch
from tqdm import tqdm

from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import KEYFRAME
from cogvideo_lite.model.transformer import Generator, stage_loss
from cogvideo_lite.train import distributed
from cogvideo_lite.train.checkpoint import RunDirectory
from cogvideo_lite.train.config import config_from_dict
from cogvideo_lite.train.generator_task import GeneratorTask
from cogvideo_lite.train.probe import change_share, gate_shares, previous_frame_attention
from tests.toys import build_toy_inputs
from train import evaluate

LAYOUT = SequenceLayout(text_length=3, num_frames=3, grid=(2, 2), text_vocab_size=20, codebook_size=8)


def blind_temporal_queries(model: Generator) -> None:
    """Zero the temporal channel's query projection: every visible key then gets the same weight."""
    dim = model.config.dim
    with torch.no_grad():
        for block in model.blocks:
            block.attention.temporal_qkv.weight[:dim] = 0
            block.attention.temporal_qkv.bias[:dim] = 0


def test_previous_frame_attention_with_blind_queries_is_one_over_the_visible_keys():
    torch.manual_seed(0)
    model = Generator(GeneratorConfig(dim=16, depth=2, heads=2), LAYOUT).eval()
    blind_temporal_queries(model)
    text = torch.tensor([[0, 9, 10], [11, 12, 13]])  # sample 0: one pad (id 0) on the left
    pad = text == 0
    tokens = LAYOUT.assemble(text, torch.tensor([3, 4]), torch.randint(0, 8, (2, 3, 2, 2)), boi_id=2)
    shares = previous_frame_attention(model, tokens, pad, KEYFRAME, [(1, 0), (2, 1)])
    # key-frame rule: a code j (0-based) of slot f sees the non-pad prefix, f whole slots, and its own slot's BOI and
    # codes 0..j: 1 / that many is its weight on any one of them, the same position of slot f - 1 included
    expected = []
    for sample in range(2):
        prefix = LAYOUT.prefix_length - int(pad[sample].sum())
        expected += [1 / (prefix + f * LAYOUT.slot_length + j + 2) for f in (1, 2) for j in range(4)]
    assert shares == pytest.approx([sum(expected) / len(expected)] * 2, rel=1e-5)


def test_gate_shares_and_change_share_against_hand_values():
    model = Generator(GeneratorConfig(dim=16, depth=3, heads=2), LAYOUT)
    model.set_spatial_share(0.3)
    assert gate_shares(model) == pytest.approx([0.3] * 3, rel=1e-5)
    codes = torch.zeros(2, 3, 2, 2, dtype=torch.long)
    codes[0, 1, 0, 0] = 5  # frame 1 differs from 0 in one place; frame 2 (zeros) differs from 1 in the same place
    codes[1, 2] = 7  # frame 2 differs from frame 1 everywhere
    assert change_share(codes) == pytest.approx((1 + 1 + 0 + 4) / 16)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    inputs = build_toy_inputs(root / "inputs")
    image = GeneratorTask(run_config("image", inputs, root))
    image.export(root / "image" / "model")
    return inputs, root


def run_config(stage: str, inputs, root, **extra):
    raw = {"stage": stage, "run_dir": str(root / stage), "model": {"size": "tiny", "dim": 32, "depth": 2, "heads": 2},
           "data": {"shards": str(inputs.shards)}, **extra}
    if stage != "image":
        raw["image_checkpoint"] = str(root / "image")
    return config_from_dict(raw)


def test_keyframe_probe_measures_and_the_heldout_loss_equals_the_loss_by_hand(toy):
    inputs, root = toy
    config = run_config("keyframe", inputs, root, learn_first_frame=True,
                        eval={"shards": str(inputs.shards), "tokenizer": str(inputs.tokenizer), "clips": 3})
    torch.manual_seed(0)
    task = GeneratorTask(config)
    results = task.evaluate(torch.device("cpu"))
    assert task.model.training  # back in training mode after the probe
    positions = task.examples.positions
    batch = task.examples.batch(positions, [False] * len(positions), torch.device("cpu"))
    with torch.no_grad():
        rows = task.layout.prediction_rows(task.plan.loss_slots)
        by_hand = stage_loss(task.model.eval()(batch["tokens"], batch["text_pad"], KEYFRAME, rows), batch["tokens"],
                             task.layout, task.plan.loss_slots).item()
    assert results["heldout_loss"] == pytest.approx(by_hand, rel=1e-5)
    depth = task.model.config.depth
    assert [results[f"spatial_share_{layer}"] for layer in range(depth)] == pytest.approx([0.5] * depth)
    assert all(0 < results[f"previous_frame_attention_{layer}"] < 1 for layer in range(depth))
    assert 0 <= results["code_change"] <= 1 and 0 <= results["code_change_data"] <= 1
    for key in ("direction_accuracy", "colour_consistency", "shape_consistency", "still_share"):
        assert 0 <= results[key] <= 1, key
    assert results["speed_error"] >= 0


def test_train_logs_the_probe_and_shows_it_on_the_progress_bar(toy, tmp_path):
    inputs, root = toy
    config = run_config("interpolate", inputs, root, eval={"tokenizer": str(inputs.tokenizer), "clips": 2})
    task = GeneratorTask(config)
    run = RunDirectory(tmp_path / "run")
    run.claim(config.to_dict(), resume=False, overwrite=False)
    stream = io.StringIO()
    bar = tqdm(total=10, file=stream, desc="interpolate")
    evaluate(task, run, 5, distributed.init_distributed(), bar)
    logged = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert logged[-1]["step"] == 5 and logged[-1]["eval"] is True
    assert "heldout_loss" not in logged[-1]  # no eval.shards: nothing held out
    assert 0 <= logged[-1]["interpolation_error"]
    assert f"interp px {logged[-1]['interpolation_error']:.3g}" in bar.desc


def test_data_rates_pick_the_clips_a_video_stage_trains_on(toy):
    inputs, root = toy
    task = GeneratorTask(run_config("keyframe", inputs, root, data={"shards": str(inputs.shards), "rates": [1]}))
    assert task.num_samples() == len(task.shards.indices_with_rate([1])) > 0
    assert {task.shards[index]["fps"] for index in task.examples.positions} == {1}
    with pytest.raises(ValueError, match=r"interpolate stage trains on clips at \(2, 4, 8\) fps, not at \[1\]"):
        GeneratorTask(run_config("interpolate", inputs, root, data={"shards": str(inputs.shards), "rates": [1]}))
    with pytest.raises(ValueError, match="data.rates: picks the clip rates of a video stage, not of the image stage"):
        run_config("image", inputs, root, data={"shards": str(inputs.shards), "rates": [1]})


def test_evaluate_losses_is_the_stage_loss_over_the_shards(toy, tmp_path):
    from cogvideo_lite.evaluate.command import main

    inputs, root = toy
    task = GeneratorTask(run_config("image", inputs, root))
    task.export(tmp_path / "image")
    result = main(["losses", "--export", str(tmp_path / "image"), "--shards", str(inputs.shards), "--samples", "1000",
                   "--device", "cpu"])
    batch = task.examples.batch(task.examples.positions, [False] * len(task.examples.positions), torch.device("cpu"))
    with torch.no_grad():
        rows = task.layout.prediction_rows(task.plan.loss_slots)
        by_hand = stage_loss(task.model.eval()(batch["tokens"], batch["text_pad"], task.stage, rows), batch["tokens"],
                             task.layout, task.plan.loss_slots).item()
    assert result["stage"] == "image" and result["losses"][str(inputs.shards)] == pytest.approx(by_hand, rel=1e-5)
