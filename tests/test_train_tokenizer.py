"""train.py on the tokenizer stage, through real DeepSpeed on CPU: exact resume, run-directory safety, export."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import CONFIGS, metrics, train
from tokenizer.io import load_tokenizer

CONFIG = CONFIGS / "tokenizer_tiny.yaml"


def tiny_sets(shapes_dataset: Path, steps: int) -> list[str]:
    """A 32x32, 64-code tokenizer on four built-in clips: a few hundred ms a step."""
    return [f"data.sources=[{{path: {shapes_dataset}, frames: 4}}]", "data.heldout=[]",
            "tokenizer.image_size=32", "tokenizer.codebook_size=64", "tokenizer.usage_window=1024",
            f"train.steps={steps}", "train.micro_batch=4", "train.warmup_steps=2", "train.log_every=1",
            "train.save_every=3", "train.keep_checkpoints=2"]


def weights(run_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / tag / "export" / "model.safetensors"))


@pytest.mark.parametrize("accumulate", [[], ["train.micro_batch=2", "train.grad_accum=2"]], ids=["one", "accum2"])
def test_resume_continues_exactly(tmp_path, shapes_dataset, accumulate):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(CONFIG, straight, tiny_sets(shapes_dataset, 6) + accumulate)
    train(CONFIG, resumed, tiny_sets(shapes_dataset, 6) + accumulate + ["train.steps=3"])
    assert (resumed / "checkpoints" / "latest").read_text() == "step-00000003"
    # the resumed half builds its batches in worker processes: the same batches, so the same run
    train(CONFIG, resumed, tiny_sets(shapes_dataset, 6) + accumulate + ["train.num_workers=2"], extra=["--resume"])

    assert metrics(straight) == metrics(resumed)  # the same losses, step for step, exactly
    a, b = weights(straight, "step-00000006"), weights(resumed, "step-00000006")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # rotation kept the newest two checkpoints; the final export loads strictly and encodes
    assert sorted(p.name for p in (straight / "checkpoints").glob("step-*")) == ["step-00000003", "step-00000006"]
    model = load_tokenizer(straight / "model")
    codes = model.encode(torch.zeros(1, 2, 3, 32, 32))
    assert codes.shape == (1, 2, 4, 4) and codes.dtype == torch.int64


def test_run_directory_is_never_overwritten_silently(tmp_path, shapes_dataset):
    run = tmp_path / "run"
    train(CONFIG, run, tiny_sets(shapes_dataset, 1))
    again = train(CONFIG, run, tiny_sets(shapes_dataset, 1), check=False)
    assert again.returncode != 0 and "already holds a run" in again.stderr + again.stdout
    changed = train(CONFIG, run, tiny_sets(shapes_dataset, 1) + ["train.lr=0.1"], extra=["--resume"], check=False)
    assert changed.returncode != 0 and re.search(r"train\.lr: [0-9.e-]+ -> 0\.1", changed.stderr + changed.stdout)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    refused = train(CONFIG, stranger, tiny_sets(shapes_dataset, 1), check=False)
    assert refused.returncode != 0 and "holds no cogvideo_lite run" in refused.stderr + refused.stdout
    assert (stranger / "notes.txt").read_text() == "mine"


def test_unknown_key_fails_before_any_work(tmp_path, shapes_dataset):
    result = train(CONFIG, tmp_path / "run", tiny_sets(shapes_dataset, 1) + ["tokenizer.codebok_size=3"], check=False)
    assert result.returncode != 0
    assert "tokenizer.codebok_size: unknown key" in result.stderr
    assert not (tmp_path / "run").exists()


def test_warm_start_loads_the_export_and_refuses_another_architecture(tmp_path, shapes_dataset):
    from cogvideo_lite.train.config import load_config
    from cogvideo_lite.provenance import CheckpointMismatch
    from cogvideo_lite.train.tokenizer_task import TokenizerTask

    first = tmp_path / "first"
    train(CONFIG, first, tiny_sets(shapes_dataset, 3))
    exported = load_tokenizer(first / "model").state_dict()
    sets = tiny_sets(shapes_dataset, 3) + [f"run_dir={tmp_path / 'second'}", f"init_from={first / 'model'}"]
    started = TokenizerTask(load_config(CONFIG, sets)).model.state_dict()
    fresh = TokenizerTask(load_config(CONFIG, sets[:-1])).model.state_dict()
    trained = [name for name in exported if "usage" not in name and not torch.equal(exported[name], fresh[name])]
    assert trained  # the export differs from a fresh model, so the comparison below means something
    for name in exported:
        if name.split(".")[-1] not in ("last_seen", "tokens_seen"):  # usage counters start afresh
            assert torch.equal(started[name], exported[name]), name
    with pytest.raises(CheckpointMismatch, match=r"codebook_size=64 \(this run: 128\)"):
        TokenizerTask(load_config(CONFIG, sets + ["tokenizer.codebook_size=128"]))


def test_warm_start_with_fresh_modules_loads_the_trunk_under_a_new_codebook(tmp_path, shapes_dataset):
    from cogvideo_lite.train.config import load_config
    from cogvideo_lite.provenance import CheckpointMismatch
    from cogvideo_lite.train.tokenizer_task import TokenizerTask

    first = tmp_path / "first"
    train(CONFIG, first, tiny_sets(shapes_dataset, 3))
    exported = load_tokenizer(first / "model").state_dict()
    sets = tiny_sets(shapes_dataset, 3) + [f"run_dir={tmp_path / 'second'}", f"init_from={first / 'model'}",
                                            "tokenizer.code_dim=4", "init_fresh=[quantizer, decoder.conv_in]"]
    model = TokenizerTask(load_config(CONFIG, sets)).model
    started = model.state_dict()
    fresh = [name for name in started if name.startswith(("quantizer.", "decoder.conv_in."))]
    assert {"quantizer.codebook", "quantizer.project.weight", "decoder.conv_in.weight"} <= set(fresh)
    assert started["quantizer.codebook"].shape == (exported["quantizer.codebook"].shape[0], 4)
    assert not bool(started["quantizer.initialized"])  # the new codebook is initialised from the first batch
    for name in set(started) - set(fresh):
        assert torch.equal(started[name], exported[name]), name
    # without decoder.conv_in among the fresh modules its input width (4 against 8 codes) does not fit: named
    with pytest.raises(CheckpointMismatch, match=r"decoder\.conv_in\.weight \(\d+, 8, 3, 3\) \(this run: \(\d+, 4"):
        TokenizerTask(load_config(CONFIG, sets[:-1] + ["init_fresh=[quantizer]"]))
    with pytest.raises(CheckpointMismatch, match="no tokenizer module is named quantiser"):
        TokenizerTask(load_config(CONFIG, sets[:-1] + ["init_fresh=[quantiser]"]))
