"""Key/value cache for incremental decoding, an explicit object passed to the generator's forward.

Holds, per layer and per attention channel, keys and values (B, heads, S_max, head_dim) and the number of
positions filled. A chunk of tokens at positions `length .. length + C - 1` writes its keys and values and
attends over everything filled so far through the rows of the same full stage masks the uncached forward
uses, so cached and uncached decoding are the same math.

Knows nothing of masks or stages beyond remembering which stage and sequence it was made for.
The explicit-object design follows karpathy/nanochat's KVCache.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, batch_size: int, heads: int, head_dim: int, depth: int, max_length: int,
                 channels: tuple[str, ...], stage: str, dtype: torch.dtype, device: torch.device) -> None:
        shape = (depth, batch_size, heads, max_length, head_dim)
        self.keys = {channel: torch.zeros(shape, dtype=dtype, device=device) for channel in channels}
        self.values = {channel: torch.zeros(shape, dtype=dtype, device=device) for channel in channels}
        self.max_length = max_length
        self.stage = stage
        self.length = 0  # positions filled in every layer

    def store(self, layer: int, channel: str, keys: torch.Tensor,
              values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a chunk's keys and values (B, heads, C, head_dim) after the filled positions.

        Returns keys and values of positions 0 .. length + C - 1, each (B, heads, length + C, head_dim).
        """
        stop = self.length + keys.shape[2]
        if stop > self.max_length:
            raise ValueError(f"KV cache overflow: {stop} positions for a cache of {self.max_length}")
        self.keys[channel][layer, :, :, self.length:stop] = keys
        self.values[channel][layer, :, :, self.length:stop] = values
        return self.keys[channel][layer, :, :, :stop], self.values[channel][layer, :, :, :stop]

    def advance(self, count: int) -> None:
        """Mark `count` more positions filled (after every layer stored them)."""
        self.length += count
