"""A non-finite loss is detected, its step skipped (weights untouched) and counted; too many in a row stop the run
with a clear message, and no checkpoint is ever written from poisoned weights. Gradient accumulation steps the
optimizer once per training step and equals one big batch. Runs the real training loop and DeepSpeed engine in this
process, on a toy task whose loss turns NaN at chosen steps."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from cogvideo_lite.train import distributed
from cogvideo_lite.train.checkpoint import RunDirectory
from cogvideo_lite.train.config import config_from_dict
from cogvideo_lite.train.engine import build_engine
from cogvideo_lite.train.tasks import StepOutput
from cogvideo_lite.train.stream import SampleStream
from train import NonFiniteLossError, Trainer, train_loop


class Toy(torch.nn.Module):
    def __init__(self, bad_steps):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.bad_steps = set(bad_steps)

    def forward(self, batch, step):
        loss = (self.linear(batch["x"]) - batch["y"]).pow(2).mean()
        if step in self.bad_steps:
            loss = loss * float("nan")
        return StepOutput(loss=loss, metrics={"total": loss.item()})


class ToyTask:
    progress_keys = ("total",)

    def __init__(self, bad_steps):
        torch.manual_seed(0)
        self.module = Toy(bad_steps)
        self.data = torch.randn(16, 5)

    def trainable_parameters(self):
        return list(self.module.parameters())

    def num_samples(self):
        return len(self.data)

    def batch(self, items, step, device):
        rows = self.data[[index for _, index in items]]
        return {"x": rows[:, :4], "y": rows[:, 4:]}

    def export(self, directory):
        directory.mkdir(parents=True)
        save_file({k: v.detach().clone() for k, v in self.module.state_dict().items()}, directory / "w.safetensors")

    def evaluate(self, device):
        return {}


def run(tmp_path, bad_steps, steps=5, max_bad=3, grad_accum=1):
    dist_info = distributed.init_distributed(device="cpu")
    config = config_from_dict({"stage": "tokenizer", "run_dir": str(tmp_path), "tokenizer": {"size": "tiny"},
                               "data": {"sources": ["unused"]},
                               "train": {"steps": steps, "micro_batch": 4 // grad_accum, "grad_accum": grad_accum,
                                         "warmup_steps": 0, "lr": 0.1,
                                         "save_every": 1, "keep_checkpoints": 10, "log_every": 1,
                                         "max_bad_steps": max_bad}})
    task = ToyTask(bad_steps)
    engine, optimizer, _ = build_engine(task.module, task.trainable_parameters(), config.train, 1, dist_info.device)
    stream = SampleStream(task.num_samples(), 4 // grad_accum, grad_accum, 1, 0)
    run_dir = RunDirectory(tmp_path)
    run_dir.claim(config.to_dict(), resume=False, overwrite=False)
    train_loop(Trainer(engine, optimizer, task, stream, dist_info, torch.float32), run_dir, config, 0)
    return run_dir


def exported(run_dir, step):
    return load_file(str(run_dir.checkpoints / f"step-{step:08d}" / "export" / "w.safetensors"))


def test_a_non_finite_step_is_skipped_and_counted(tmp_path):
    run_dir = run(tmp_path, bad_steps={2})
    records = [json.loads(line) for line in run_dir.metrics_path.read_text().splitlines()]
    assert [r["skipped"] for r in records if "skipped" in r] == [False, False, True, False, False]
    before, after = exported(run_dir, 2), exported(run_dir, 3)  # step index 2 is the third step
    for name in before:
        assert torch.equal(before[name], after[name])  # the skipped step left the weights untouched
    assert not torch.equal(exported(run_dir, 1)["linear.weight"], before["linear.weight"])  # others did move
    for record in records:
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))


def test_too_many_non_finite_steps_stop_the_run(tmp_path):
    with pytest.raises(NonFiniteLossError, match="3 steps in a row had a non-finite loss"):
        run(tmp_path, bad_steps={1, 2, 3}, steps=6, max_bad=3)
    run_dir = RunDirectory(tmp_path)
    # checkpoints were written only for finished steps; every one of them holds finite weights
    tags = run_dir.complete_tags()
    assert tags and tags[-1] == "step-00000003"
    for tag in tags:
        weights = load_file(str(run_dir.checkpoints / tag / "export" / "w.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_grad_accum_steps_every_step_and_equals_one_big_batch(tmp_path):
    """2 micro-batches of 2 per step against 1 of 4 over the same samples: the same weights after every step, the
    same learning-rate schedule (the loss is a mean over samples, so the mean of two halves' gradients is the whole's)."""
    whole, halves = run(tmp_path / "whole", bad_steps=set()), run(tmp_path / "halves", bad_steps=set(), grad_accum=2)
    for step in range(1, 6):
        for name, weight in exported(whole, step).items():
            assert torch.allclose(exported(halves, step)[name], weight, atol=1e-6), (step, name)
    assert not torch.equal(exported(halves, 1)["linear.weight"], exported(halves, 2)["linear.weight"])

    def rates(run_dir):
        return [r["lr"] for r in map(json.loads, run_dir.metrics_path.read_text().splitlines()) if "lr" in r]

    assert rates(halves) == pytest.approx(rates(whole)) and len(set(rates(whole))) == 5


def test_a_non_finite_step_under_grad_accum_leaves_the_weights_untouched(tmp_path):
    run_dir = run(tmp_path, bad_steps={2}, grad_accum=2)
    records = [json.loads(line) for line in run_dir.metrics_path.read_text().splitlines()]
    assert [r["skipped"] for r in records if "skipped" in r] == [False, False, True, False, False]
    for name, weight in exported(run_dir, 2).items():
        assert torch.equal(exported(run_dir, 3)[name], weight)
    assert not torch.equal(exported(run_dir, 3)["linear.weight"], exported(run_dir, 4)["linear.weight"])


def test_step_seeds_differ_by_rank_and_step_and_rank_0_keeps_the_single_process_seed():
    from train import step_seed

    seeds = {step_seed(5, step, rank) for step in range(20_000) for rank in range(8)}
    assert len(seeds) == 20_000 * 8  # brute force: no two (step, rank) pairs share a seed
    assert [step_seed(5, step, 0) for step in (0, 7)] == [5 * 1_000_003, 5 * 1_000_003 + 7]
