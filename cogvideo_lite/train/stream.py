"""Which samples each rank reads at each step: a deterministic stream of shuffled epochs.

The stream is a function of (seed, step) alone, so a resumed run reads exactly what an uninterrupted one would, and
the global batch of a step is the same set of samples whatever the number of ranks: position p of the stream is
sample `permutation(seed, p // N)[p % N]`, and step s covers positions [s * G, (s + 1) * G) for a global batch G,
cut into (micro-step, rank, slot) in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


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
