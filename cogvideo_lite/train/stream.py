"""Which samples each rank reads at each step: a deterministic stream of shuffled epochs.

The stream is a function of (seed, step) alone, so a resumed run reads exactly what an uninterrupted one would, and
the global batch of a step is the same set of samples whatever the number of ranks: position p of the stream is
sample `permutation(seed, p // N)[p % N]`, and step s covers positions [s * G, (s + 1) * G) for a global batch G,
cut into (micro-step, rank, slot) in that order.

A micro-batch is a pure function of (step, micro-step, rank) through the stream and the task's `batch`, so worker
processes can build them ahead of time without changing what is trained (`micro_batches`): a run with workers and one
without see identical batches, and a resumed run starts the stream at its step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


@lru_cache(maxsize=4)
def _permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(num_samples)


@dataclass(frozen=True)
class SampleStream:
    num_samples: int
    micro_batch: int
    grad_accum: int
    world_size: int
    seed: int

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError("the training set is empty: no usable sample was found (see the warnings above)")

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def micro_batch_indices(self, step: int, micro_step: int, rank: int) -> list[tuple[int, int]]:
        """(epoch, sample index) pairs of one rank's micro-batch."""
        start = step * self.global_batch + (micro_step * self.world_size + rank) * self.micro_batch
        out = []
        for position in range(start, start + self.micro_batch):
            epoch, offset = divmod(position, self.num_samples)
            out.append((epoch, int(_permutation(self.num_samples, self.seed, epoch)[offset])))
        return out

    def epoch_at(self, step: int) -> float:
        return step * self.global_batch / self.num_samples


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
