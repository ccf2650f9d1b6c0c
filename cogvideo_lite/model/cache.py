"""Static key/value cache for decoding, an explicit object passed to the generator's `decode`.

Holds, per layer and per attention channel, keys and values (B, heads, S, head_dim) preallocated to the whole
sequence, and `visible` (B, S) bool: the positions whose keys a query may attend to (written with their true token,
and not text padding). A decoding pass writes the keys and values of its query positions by index, wherever they are
(several frames and rows at once), and attends over all S positions through the stage mask's rows AND `visible`; so the
shapes of a pass depend on the number of its queries only, never on how far decoding has come.

A position may be written and kept hidden (`show` not called): an approximate decoder feeds a stand-in token at a
position whose true code is not drawn yet, to predict the code after it; the true token overwrites it later.

Knows nothing of masks or of which positions a pass feeds. The explicit-object design follows karpathy/nanochat's
KVCache; the static, index-written layout follows gpt-fast and LlamaGen.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, channels: tuple[str, ...], shape: tuple[int, int, int, int, int], like: torch.Tensor,
                 text_pad: torch.Tensor) -> None:
        """shape (depth, B, heads, S, head_dim) per channel in `channels`, in the dtype and on the device of `like`;
        text_pad (B, L) bool, True at pads: those positions never become visible."""
        _, batch, _, length, _ = shape
        self.keys = {channel: like.new_zeros(shape) for channel in channels}
        self.values = {channel: like.new_zeros(shape) for channel in channels}
        self.visible = torch.zeros(batch, length, dtype=torch.bool, device=like.device)
        self.showable = torch.ones(batch, length, dtype=torch.bool, device=like.device)  # False at text pads
        self.showable[:, :text_pad.shape[1]] = ~text_pad

    def write(self, layer: int, channel: str, positions: torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys and values (B, heads, K, head_dim) of `positions` (K,) int64. Returns the layer's keys and values
        of all S positions, each (B, heads, S, head_dim)."""
        layer_keys, layer_values = self.keys[channel][layer], self.values[channel][layer]
        layer_keys.index_copy_(2, positions, keys)
        layer_values.index_copy_(2, positions, values)
        return layer_keys, layer_values

    def show(self, positions: torch.Tensor) -> None:
        """Make `positions` (K,) int64 visible to every later query (and to this pass's), text pads excepted."""
        self.visible.index_copy_(1, positions, self.showable.index_select(1, positions))
