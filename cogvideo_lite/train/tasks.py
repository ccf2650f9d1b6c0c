"""What `train.py` needs from a stage: a module whose forward returns the loss, a dataset view, an export.

A `Task` owns the stage's model, its data, and its checkpoint format; `train.py` owns the loop, DeepSpeed, the run
directory and logging. The training module's forward takes a batch dict and the step, and returns a `StepOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from cogvideo_lite.model.stages import STAGES
from cogvideo_lite.provenance import Provenance
from cogvideo_lite.train.config import RunConfig


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to back-propagate
    metrics: dict[str, float]  # logged, averaged over ranks and micro-steps


class Task(Protocol):
    module: torch.nn.Module  # what DeepSpeed wraps: forward(batch: dict, step: int) -> StepOutput
    progress_keys: tuple[str, ...]  # metrics shown on the progress bar
    eval_progress_keys: dict[str, str]  # eval-time measures shown on the progress bar, by their short names

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def num_samples(self) -> int: ...

    def batch(self, items: list[tuple[int, int]], step: int, device: torch.device) -> dict[str, Any]: ...

    def export(self, directory: Path) -> None: ...

    def evaluate(self, device: torch.device) -> dict[str, float]: ...

    def inputs(self) -> Provenance: ...  # sha256 of the files read besides the config; pinned for --resume


def build_task(config: RunConfig) -> Task:
    """The task of the config's stage: a generator stage's, or the frame tokenizer's."""
    if STAGES[config.stage].is_generator:
        from cogvideo_lite.train.generator_task import GeneratorTask

        return GeneratorTask(config)
    from cogvideo_lite.train.tokenizer_task import TokenizerTask

    return TokenizerTask(config)
