"""Key/value cache for incremental decoding, an explicit object passed to the generator's forward.

Holds, per layer and per attention channel, keys and values (B, heads, S_max, head_dim) and the number of
positions filled. A chunk of tokens at positions `length .. length + C - 1` writes its keys and values and
attends over everything filled so far through the rows of the same full stage masks the uncached forward
uses, so cached and uncached decoding are the same math.

Knows nothing of masks beyond remembering the stage (and so the channels) it was made for.
The explicit-object design follows karpathy/nanochat's KVCache.
"""

from __future__ import annotations

import torch

from cogvideo_lite.model.stages import Stage


class KVCache:
    def __init__(self, stage: Stage, shape: tuple[int, int, int, int, int], like: torch.Tensor) -> None:
        """shape (depth, B, heads, S_max, head_dim) per channel of `stage`, in the dtype and on the device of
        `like`."""
        self.keys = {channel: like.new_zeros(shape) for channel in stage.channels}
        self.values = {channel: like.new_zeros(shape) for channel in stage.channels}
        self.stage = stage
        self.max_length = shape[3]
        self.length = 0  # positions filled in every layer

    def store(self, layer: int, channel: str, keys: torch.Tensor,
              values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a chunk's keys and values (B, heads, C, head_dim) after the filled positions.

        Returns keys and values of positions 0 .. length + C - 1, each (B, heads, length + C, head_dim).
        """
        stop = self.length + keys.shape[2]
        self.keys[channel][layer, :, :, self.length:stop] = keys
        self.values[channel][layer, :, :, self.length:stop] = values
        return self.keys[channel][layer, :, :, :stop], self.values[channel][layer, :, :, :stop]

    def advance(self, count: int) -> None:
        """Mark `count` more positions filled (after every layer stored them)."""
        self.length += count
