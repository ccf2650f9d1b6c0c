"""Dual-channel self-attention: CogVideo's spatial ("base") and temporal ("plus") channels.

Both channels read the same normalised input. The spatial channel is a text-to-image attention trained in
the image stage and then frozen; the temporal channel has its own QKV (initialised as a copy of the spatial
QKV) and its own output projection (also a copy, so that a fresh video model equals the image model on a
frame that sees no other frame). Outputs are mixed per token and per hidden dimension after each
channel's projection: `out = sigmoid(a) * spatial + (1 - sigmoid(a)) * temporal`, `a` (D,) starting at 0.
Prefix tokens use the spatial channel only; without a temporal mask (image stage) out = spatial.
An `AttentionRecorder` set on a layer's `recorder` sees every call of `forward` with its queries, keys and dense mask
(the studio's attention inspector computes the weights of the query it shows from them); it changes nothing.
With both channels, their QKV are one matmul over the concatenated weights: the parameters stay two layers (names,
checkpoints, the frozen / trainable split), and the gradient reaches only the weights that require it.

`forward` runs whole sequences (training, the uncached reference); `decode` runs the queries of one decoding pass at
any positions over a static `KVCache`, both channels on every query (a pass feeds frame positions only), under
additive masks made once per pass.

How a channel attends in `forward` is its mask's business (`DenseMask`, `SlotBlockMask`, `FlexMask`, one `attend`
each): the same result, from one scaled-dot-product attention under the whole boolean mask (the reference), from one
per slot over the keys the slot may see, or from FlexAttention over a block mask.

Knows nothing of the layout beyond where the frame positions of the chunk begin, nor of the stage rules:
masks arrive ready. Idea: Hong et al. 2023 (CogVideo), section 3.2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from cogvideo_lite.model.cache import KVCache

# (layer, channel, queries (B, heads, R, head_dim) of the rows first_row.., keys (B, heads, S, head_dim), their mask
# (B, 1, R, S) bool, first_row); the weights the channel uses are softmax(q k^T / sqrt(head_dim)) over the keys the
# mask allows.
AttentionRecorder = Callable[[int, str, torch.Tensor, torch.Tensor, torch.Tensor, int], None]


#################################################################################
#                          Masks, and how each attends                          #
#################################################################################

class DenseMask:
    """The reference: one scaled-dot-product attention under mask (B, 1, Q, K) bool (True = may attend)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float) -> torch.Tensor:
        """query (B, heads, Q, head_dim), key and value (B, heads, K, head_dim) -> (B, heads, Q, head_dim)."""
        return F.scaled_dot_product_attention(query, key, value, attn_mask=self.mask, dropout_p=dropout)


class SlotBlockMask(DenseMask):
    """The same mask, attended per run of query rows over only the keys the run may see: `blocks` lists (first row,
    last row + 1, keys as a slice or an int64 index); key blocks nothing in the run sees are never computed. The runs
    cover the query rows in order."""

    def __init__(self, mask: torch.Tensor, blocks: tuple[tuple[int, int, slice | torch.Tensor], ...]) -> None:
        super().__init__(mask)
        self.blocks = blocks
        self.block_masks = [mask[:, :, first:last, keys] for first, last, keys in blocks]  # cut once, for every layer

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float) -> torch.Tensor:
        parts = []
        runs = query.split([last - first for first, last, _ in self.blocks], dim=2)  # one gradient copy, not one a run
        for run, (_, _, keys), mask in zip(runs, self.blocks, self.block_masks):
            parts.append(F.scaled_dot_product_attention(  # (B, heads, rows, head_dim)
                run, key[:, :, keys], value[:, :, keys], attn_mask=mask, dropout_p=dropout))
        return torch.cat(parts, dim=2)  # (B, heads, Q, head_dim)


class FlexMask:
    """FlexAttention over `block_mask` (torch.nn.attention.flex_attention.BlockMask): tiles with nothing visible are
    skipped, tiles visible throughout run without the mask. No attention dropout."""

    def __init__(self, block_mask: BlockMask) -> None:
        self.block_mask = block_mask

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float) -> torch.Tensor:
        assert dropout == 0, "FlexAttention has no attention dropout"
        return _flex_attention(query.device.type)(query, key, value, block_mask=self.block_mask)


@functools.cache
def _flex_attention(device_type: str):
    """Compiled on CUDA (its fused kernel); eager elsewhere (a reference that computes every pair, forward only)."""
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


AttentionMask = DenseMask | FlexMask


#################################################################################
#                       Both channels' QKV in one matmul                        #
#################################################################################

class _FusedQKV(torch.autograd.Function):
    """x (B, C, D) times the spatial and the temporal QKV weights (3D, D) at once -> (B, C, 6D). The backward computes
    a weight's gradient only where one is required: a frozen spatial channel costs no weight-gradient matmul (autograd
    through `torch.cat` of the weights would compute the whole (6D, D) gradient and slice it)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, spatial_weight, spatial_bias, temporal_weight, temporal_bias):
        ctx.save_for_backward(x, spatial_weight, temporal_weight)
        return F.linear(x, torch.cat([spatial_weight, temporal_weight]), torch.cat([spatial_bias, temporal_bias]))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        x, spatial_weight, temporal_weight = ctx.saved_tensors
        grads = [None] * 5
        if ctx.needs_input_grad[0]:
            grads[0] = grad @ torch.cat([spatial_weight, temporal_weight])  # (B, C, D)
        rows = x.reshape(-1, x.shape[-1])  # (B*C, D)
        for index, part in zip((1, 3), grad.reshape(-1, grad.shape[-1]).chunk(2, dim=-1)):  # (B*C, 3D) each
            if ctx.needs_input_grad[index]:
                grads[index] = part.t() @ rows  # (3D, D)
            if ctx.needs_input_grad[index + 1]:
                grads[index + 1] = part.sum(0)
        return tuple(grads)


def fused_qkv(x: torch.Tensor, spatial: nn.Linear, temporal: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Both channels' QKV (B, C, 3D) of x (B, C, D), from one matmul; on CPU in float32 bit for bit the separate
    projections' (each output is the same dot product over D). Without autograd (sampling) the two projections run
    apart: concatenating the weights on every decoding pass would cost more memory traffic than the matmul saves."""
    if not torch.is_grad_enabled():
        return spatial(x), temporal(x)
    return _FusedQKV.apply(x, spatial.weight, spatial.bias, temporal.weight, temporal.bias).chunk(2, dim=-1)


#################################################################################
#                                  The module                                   #
#################################################################################

class DualChannelAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.spatial_qkv = nn.Linear(dim, 3 * dim)
        self.spatial_proj = nn.Linear(dim, dim)
        self.temporal_qkv = nn.Linear(dim, 3 * dim)
        self.temporal_proj = nn.Linear(dim, dim)
        self.mixing = nn.Parameter(torch.zeros(dim))  # sigmoid(0) = 0.5: both channels weigh the same
        self.recorder: AttentionRecorder | None = None  # an observer of every forward call (the studio's inspector)
        self.copy_spatial_to_temporal()

    @torch.no_grad()
    def copy_spatial_to_temporal(self) -> None:
        """Temporal QKV and projection := spatial ones (at init, and after loading image weights)."""
        self.temporal_qkv.load_state_dict(self.spatial_qkv.state_dict())
        self.temporal_proj.load_state_dict(self.spatial_proj.state_dict())

    def forward(self, x: torch.Tensor, spatial_mask: AttentionMask, temporal_mask: AttentionMask | None,
                first_frame_row: int, layer: int = 0) -> torch.Tensor:
        """x (B, C, D), normalised sequence; the spatial mask covers its C rows, the temporal mask its rows from
        `first_frame_row` on (the frame positions), both over the C keys; `layer` names the call to the recorder.
        Returns (B, C, D)."""
        if temporal_mask is None:
            return self.spatial_proj(self._attend(self.spatial_qkv(x), spatial_mask, 0, layer, "spatial"))
        spatial_qkv, temporal_qkv = fused_qkv(x, self.spatial_qkv, self.temporal_qkv)
        spatial = self.spatial_proj(self._attend(spatial_qkv, spatial_mask, 0, layer, "spatial"))
        temporal = self.temporal_proj(self._attend(temporal_qkv, temporal_mask, first_frame_row, layer, "temporal"))
        return self._mixed(spatial, temporal, first_frame_row)  # (B, C, D)

    def _attend(self, qkv: torch.Tensor, mask: AttentionMask, first_row: int, layer: int,
                channel: str) -> torch.Tensor:
        """Attention of rows `first_row..` over the keys the mask allows; qkv (B, C, 3D).
        Returns (B, C - first_row, D)."""
        query, key, value = self._heads(qkv)  # (B, heads, C, head_dim)
        if self.recorder is not None:
            assert isinstance(mask, DenseMask), "a recorder reads the dense mask: set Generator.attention = 'dense'"
            self.recorder(layer, channel, query[:, :, first_row:], key, mask.mask, first_row)
        out = mask.attend(query[:, :, first_row:], key, value, self.dropout if self.training else 0.0)
        return self._merged(out)  # (B, C - first_row, D)

    # ---------------------------------------------------------------- decoding over a static cache
    def decode(self, x: torch.Tensor, positions: torch.Tensor, spatial_mask: torch.Tensor,
               temporal_mask: torch.Tensor | None, cache: KVCache, layer: int, first_frame_row: int) -> torch.Tensor:
        """x (B, K, D), the normalised queries of one pass at `positions` (K,) int64; masks (B, 1, K, S') additive
        (0 or -inf) over cached positions 0 .. S' - 1; queries from `first_frame_row` on are frame positions (0 but in
        a prefill of the prefix). Writes the queries' keys and values into `cache`. Returns (B, K, D)."""
        if temporal_mask is None:
            return self.spatial_proj(self._attend_cached(self.spatial_qkv(x), positions, spatial_mask, 0, cache, layer,
                                                         "spatial"))
        spatial_qkv, temporal_qkv = fused_qkv(x, self.spatial_qkv, self.temporal_qkv)
        spatial = self.spatial_proj(self._attend_cached(spatial_qkv, positions, spatial_mask, 0, cache, layer,
                                                        "spatial"))
        temporal = self.temporal_proj(self._attend_cached(temporal_qkv, positions, temporal_mask, first_frame_row,
                                                          cache, layer, "temporal"))
        return self._mixed(spatial, temporal, first_frame_row)  # (B, K, D)

    def _attend_cached(self, qkv: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, first_row: int,
                       cache: KVCache, layer: int, channel: str) -> torch.Tensor:
        """One channel: write the keys and values of all K queries (qkv (B, K, 3D)), then attend from rows
        `first_row..` over the cache's first S' positions. Returns (B, K - first_row, D)."""
        query, key, value = self._heads(qkv)  # (B, heads, K, head_dim)
        keys, values = cache.write(layer, channel, positions, key, value)  # (B, heads, S, head_dim)
        visible = slice(0, mask.shape[-1])
        out = F.scaled_dot_product_attention(query[:, :, first_row:], keys[:, :, visible], values[:, :, visible],
                                             attn_mask=mask[:, :, first_row:])  # (B, heads, K - first_row, head_dim)
        return self._merged(out)

    # ---------------------------------------------------------------- shared by both
    def _heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """qkv (B, C, 3D) -> query, key, value (B, heads, C, head_dim)."""
        batch, length, dim = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        query, key, value = qkv.view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        return tuple(t.transpose(1, 2) for t in (query, key, value))

    @staticmethod
    def _merged(out: torch.Tensor) -> torch.Tensor:
        """(B, heads, C, head_dim) -> (B, C, D)."""
        return out.transpose(1, 2).flatten(2)

    def _mixed(self, spatial: torch.Tensor, temporal: torch.Tensor, first_frame_row: int) -> torch.Tensor:
        """spatial (B, C, D) and temporal (B, C - first_frame_row, D) outputs -> (B, C, D): the frame rows mixed per
        hidden dimension, the prefix rows spatial alone."""
        gate = torch.sigmoid(self.mixing)  # (D,)
        frames = gate * spatial[:, first_frame_row:] + (1 - gate) * temporal
        return frames if first_frame_row == 0 else torch.cat([spatial[:, :first_frame_row], frames], dim=1)
