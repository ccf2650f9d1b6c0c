"""Train any stage of cogvideo_lite through DeepSpeed.

    python train.py --config configs/tokenizer_tiny.yaml [--set train.steps=100 ...] [--resume | --overwrite]
    deepspeed train.py --config configs/image_small.yaml          # one process per GPU

Reads top to bottom: config, distributed init, seed, build, resume, loop, save. The stage (tokenizer, image,
keyframe, interpolate; `cogvideo_lite/model/stages.py`) decides the model, data and export format (its task in
`cogvideo_lite/train/`); this file owns the loop.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from cogvideo_lite.train import distributed
from cogvideo_lite.train.checkpoint import RunDirectory
from cogvideo_lite.train.config import RunConfig, load_config
from cogvideo_lite.train.engine import build_engine, resolve_precision
from cogvideo_lite.train.tasks import Task, build_task
from cogvideo_lite.train.stream import SampleStream, micro_batches

logger = logging.getLogger("train")


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Trainer:
    """What every training step uses: the DeepSpeed engine and its optimizer, the stage's task, the sample stream,
    this rank, and the dtype of floating-point inputs."""

    engine: Any
    optimizer: Any
    task: Task
    stream: SampleStream
    dist_info: distributed.DistInfo
    dtype: torch.dtype


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=100 (repeatable)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


def main(argv=None) -> RunDirectory:
    args = parse_args(argv)
    config = load_config(args.config, args.set)
    dist_info = distributed.init_distributed()
    logging.basicConfig(level=logging.INFO if dist_info.is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = RunDirectory(config.run_dir)
    on_main_rank(lambda: run.claim(config.to_dict(), resume=args.resume, overwrite=args.overwrite))

    torch.manual_seed(config.train.seed)  # identical initial weights on every rank
    task = build_task(config)
    on_main_rank(lambda: run.pin_inputs(task.inputs(), resume=args.resume))
    task.module.to(dist_info.device)
    engine, optimizer, _ = build_engine(task.module, task.trainable_parameters(), config.train,
                                        dist_info.world_size, dist_info.device)
    dtype = torch.bfloat16 if resolve_precision(config.train, dist_info.device) == "bf16" else torch.float32
    start_step = resume(engine, run) if args.resume else 0

    stream = SampleStream(task.num_samples(), config.train.micro_batch, config.train.grad_accum,
                          dist_info.world_size, config.train.seed)
    logger.info("stage %s: %d samples, global batch %d, steps %d -> %d, %d trainable parameters",
                config.stage, stream.num_samples, stream.global_batch, start_step, config.train.steps,
                sum(p.numel() for p in task.trainable_parameters()))
    train_loop(Trainer(engine, optimizer, task, stream, dist_info, dtype), run, config, start_step)
    return run


def on_main_rank(action) -> None:
    """Rank 0 runs `action` (a check of the run directory); an error it raises stops every rank with its message."""
    error = None
    if distributed.is_main():
        try:
            action()
        except Exception as exc:  # shared with the other ranks, then raised everywhere
            error = str(exc)
    error = distributed.broadcast_object(error)
    if error:
        raise SystemExit(f"error: {error}")


def resume(engine, run: RunDirectory) -> int:
    tag = distributed.broadcast_object(run.latest_tag() if distributed.is_main() else None)
    if tag is None:
        logger.warning("--resume: %s has no complete checkpoint yet; starting from step 0", run.root)
        if distributed.is_main():
            run.truncate_metrics(0)  # the lines a run killed before its first checkpoint logged will come again
        return 0
    _, client_state = engine.load_checkpoint(str(run.checkpoints), tag=tag, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
    step = int(client_state["step"])
    # The optimizer state carries the learning rate it was saved with; recompute it from the schedule, which may
    # have changed (a longer train.steps when extending a run).
    scheduler = engine.lr_scheduler
    for group, base_lr, factor in zip(engine.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    if distributed.is_main():
        run.truncate_metrics(step)
    logger.info("resumed from %s (step %d)", tag, step)
    return step


def train_loop(trainer: Trainer, run: RunDirectory, config: RunConfig, start_step: int) -> None:
    train, task, dist_info = config.train, trainer.task, trainer.dist_info
    bad_in_a_row = 0
    bar = tqdm(total=train.steps, initial=start_step, disable=not dist_info.is_main, desc=config.stage, dynamic_ncols=True)
    batches = micro_batches(task, trainer.stream, start_step, train.steps, dist_info.rank, train.num_workers)
    tic, last_logged = time.perf_counter(), start_step
    for step in range(start_step, train.steps):
        torch.manual_seed(step_seed(train.seed, step, dist_info.rank))  # randomness of a step: (seed, step, rank)
        metrics, skipped = training_step(trainer, batches, step)
        bad_in_a_row = bad_in_a_row + 1 if skipped else 0
        if bad_in_a_row >= train.max_bad_steps:
            raise NonFiniteLossError(
                f"{bad_in_a_row} steps in a row had a non-finite loss (last at step {step}); stopping. The last "
                f"checkpoint ({run.latest_tag()}) holds finite weights: lower train.lr or check the data and resume.")
        done = step + 1
        bar.update(1)
        if done % train.log_every == 0 or done == train.steps:
            seconds, tic = time.perf_counter() - tic, time.perf_counter()
            samples_per_second = trainer.stream.global_batch * (done - last_logged) / max(seconds, 1e-9)
            last_logged = done
            log_step(trainer, run, bar, done,
                     {"samples_per_s": round(samples_per_second, 3), "skipped": skipped, **metrics})
        if train.eval_every and done % train.eval_every == 0 and done != train.steps:
            evaluate(task, run, done, dist_info, bar)
        if done % train.save_every == 0 or done == train.steps:
            run.save(trainer.engine, done, {"step": done}, task.export, train.keep_checkpoints)
    bar.close()
    check_replicas(task, run, train.steps, dist_info)
    evaluate(task, run, train.steps, dist_info, bar)
    if dist_info.is_main:
        tag = run.latest_tag()
        if tag is not None:
            logger.info("model exported to %s", run.publish(tag))
    distributed.barrier()


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one rank's step (dropout masks): a function of (seed, step, rank) alone, so a resumed run
    draws what an uninterrupted one would, and ranks draw different masks for their different samples. Rank 0
    keeps the seed of single-process runs; each other rank is shifted past every step count."""
    return seed * 1_000_003 + step + rank * 7_919_000_033


def training_step(trainer: Trainer, batches, step: int) -> tuple[dict[str, float], bool]:
    """One optimizer step over grad_accum micro-batches. A non-finite micro-batch loss contributes no gradient;
    a step whose every micro-batch was non-finite leaves the weights unchanged (its learning rate is 0).

    DeepSpeed's pattern: `engine.step()` after every micro-batch's `backward`; the engine counts micro-batches,
    scales each loss by 1/grad_accum and steps the optimizer and the schedule only at the last one (the
    accumulation boundary)."""
    engine, task, stream, dist_info = trainer.engine, trainer.task, trainer.stream, trainer.dist_info
    totals: dict[str, float] = {}
    bad, optimizer_steps = 0, engine.global_steps
    for micro_step in range(stream.grad_accum):
        batch = {k: to_device(v, dist_info.device, trainer.dtype) for k, v in next(batches).items()}
        output = engine(batch, step)
        loss = output.loss
        if distributed.any_rank(not bool(torch.isfinite(loss.detach()).all()), dist_info.device):
            bad += 1
            loss = sum(p.sum() for p in task.trainable_parameters()) * 0.0  # keeps DeepSpeed's counters in step
        else:
            for key, value in output.metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        engine.backward(loss)
        if micro_step == stream.grad_accum - 1 and bad == stream.grad_accum:
            for group in trainer.optimizer.param_groups:  # the boundary step below then changes nothing
                group["lr"] = 0.0
        engine.step()
    if engine.global_steps != optimizer_steps + 1:
        raise RuntimeError(f"step {step}: DeepSpeed did not step the optimizer after {stream.grad_accum} "
                           "micro-batch(es); its gradient_accumulation_steps must equal train.grad_accum")
    good = stream.grad_accum - bad
    metrics = {k: v / good for k, v in totals.items()} if good else {}
    return distributed.mean_over_ranks(metrics, dist_info.device), bad == stream.grad_accum


def to_device(value, device: torch.device, dtype: torch.dtype):
    """Tensors to the engine's device; floating ones to its compute dtype (bf16 engines take bf16 inputs)."""
    if not torch.is_tensor(value):
        return value
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


def log_step(trainer: Trainer, run: RunDirectory, bar: tqdm, done: int, metrics: dict[str, Any]) -> None:
    """One metrics.jsonl line on rank 0: step, epoch, learning rate, then `metrics` (speed, skipped, the losses)."""
    if not trainer.dist_info.is_main:
        return
    run.log_metrics({"step": done, "epoch": round(trainer.stream.epoch_at(done), 4), "lr": trainer.engine.get_lr()[0],
                     **metrics})
    bar.set_postfix({k: f"{metrics[k]:.4g}" for k in trainer.task.progress_keys
                     if k in metrics and math.isfinite(metrics[k])})


def check_replicas(task: Task, run: RunDirectory, step: int, dist_info: distributed.DistInfo) -> None:
    """Every rank must end with the same weights and buffers (codebooks included); say so in the metrics."""
    if dist_info.world_size == 1:
        return
    identical = distributed.replicas_identical(task.module)
    if dist_info.is_main:
        run.log_metrics({"step": step, "replicas_identical": identical})
        if not identical:
            logger.error("ranks ended with different weights or buffers: a rank-local update is out of step")


def evaluate(task: Task, run: RunDirectory, step: int, dist_info: distributed.DistInfo, bar) -> None:
    """The task's eval-time measures, logged as an `eval` line of metrics.jsonl; the headline ones (the task's
    `eval_progress_keys`) stay on the progress bar until the next evaluation."""
    if dist_info.is_main:
        results = task.evaluate(dist_info.device)
        if results:
            run.log_metrics({"step": step, "eval": True, **results})
            logger.info("eval at step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
            shown = [f"{short} {results[key]:.3g}" for key, short in task.eval_progress_keys.items() if key in results]
            if shown:
                bar.set_description(f"{bar.desc.split(' [')[0]} [{', '.join(shown)}]")
    distributed.barrier()


if __name__ == "__main__":
    main()
