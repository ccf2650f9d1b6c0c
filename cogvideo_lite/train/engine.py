"""The DeepSpeed engine of a run: its JSON config built from the typed training config, the optimizer and schedule.

DeepSpeed enters the project in three places only: `build_engine` here (deepspeed.initialize), the training step in
`train.py` (engine.backward + engine.step) and `RunDirectory.save` / `train.py`'s resume
(engine.save_checkpoint / engine.load_checkpoint). Everything else is plain PyTorch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from cogvideo_lite.train.config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_precision(train: TrainConfig, device: torch.device) -> str:
    if train.precision != "auto":
        return train.precision
    return "bf16" if device.type == "cuda" else "fp32"


def deepspeed_config(train: TrainConfig, world_size: int, device: torch.device) -> dict[str, Any]:
    """The base JSON (configs/deepspeed/*.json) with batch sizes, ZeRO stage, precision and clipping set from `train`."""
    path = Path(train.deepspeed_config)
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"train.deepspeed_config: {train.deepspeed_config} does not exist")
    config = json.loads(path.read_text())
    config["train_micro_batch_size_per_gpu"] = train.micro_batch
    config["gradient_accumulation_steps"] = train.grad_accum
    config["train_batch_size"] = train.micro_batch * train.grad_accum * world_size
    config.setdefault("zero_optimization", {})["stage"] = train.zero_stage
    config["bf16"] = {"enabled": resolve_precision(train, device) == "bf16"}
    config["fp16"] = {"enabled": False}
    config["gradient_clipping"] = train.grad_clip
    config["steps_per_print"] = 10**9  # we log ourselves
    config.setdefault("wall_clock_breakdown", False)
    return config


def lr_factor(step: int, train: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to `min_lr_ratio` at `train.steps`."""
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    span = max(1, train.steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_engine(module: torch.nn.Module, parameters: list[torch.nn.Parameter], train: TrainConfig, world_size: int,
                 device: torch.device):
    """deepspeed.initialize with an AdamW over `parameters` only (frozen weights never reach the optimizer)."""
    import deepspeed

    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(train, world_size, device)
    )
    return engine, optimizer, scheduler
