"""Micro-batches in training order, optionally built ahead of time by worker processes.

A micro-batch is a pure function of (step, micro-step, rank) through the sample stream and the task's `batch`, so
worker processes can build them in parallel without changing what is trained: a run with workers and one without
see identical batches, and a resumed run starts the stream at its step.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from cogvideo_lite.train.stream import SampleStream


class MicroBatches(Dataset):
    def __init__(self, task, stream: SampleStream, start_step: int, steps: int, rank: int):
        self.task, self.stream, self.start_step, self.steps, self.rank = task, stream, start_step, steps, rank

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.stream.grad_accum

    def __getitem__(self, k: int) -> dict:
        offset, micro_step = divmod(k, self.stream.grad_accum)
        step = self.start_step + offset
        items = self.stream.micro_batch_indices(step, micro_step, self.rank)
        return self.task.batch(items, step, torch.device("cpu"))


def micro_batches(task, stream: SampleStream, start_step: int, steps: int, rank: int, workers: int):
    """An iterator over this rank's micro-batches from `start_step` to `steps`, in order."""
    dataset = MicroBatches(task, stream, start_step, steps, rank)
    if workers == 0:
        return (dataset[k] for k in range(len(dataset)))
    return iter(DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=4,
                           persistent_workers=False))
