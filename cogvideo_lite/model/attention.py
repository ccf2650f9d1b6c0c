"""Dual-channel self-attention: CogVideo's spatial ("base") and temporal ("plus") channels.

Both channels read the same normalised input. The spatial channel is a text-to-image attention trained in
the image stage and then frozen; the temporal channel has its own QKV (initialised as a copy of the spatial
QKV) and its own output projection (also a copy, so that a fresh video model equals the image model on a
frame that sees no other frame). Outputs are mixed per token and per hidden dimension after each
channel's projection: `out = sigmoid(a) * spatial + (1 - sigmoid(a)) * temporal`, `a` (D,) starting at 0.
Prefix tokens use the spatial channel only; without a temporal mask (image stage) out = spatial.
An `AttentionRecorder` set on a layer's `recorder` sees every call's queries, keys and dense mask (the studio's
attention inspector computes the weights of the query it shows from them); it changes nothing.
With both channels, their QKV are one matmul over the concatenated weights: the parameters stay two layers (names,
checkpoints, the frozen / trainable split), and the gradient reaches only the weights that require it.

How a channel attends is its mask's business (`DenseMask`, `SlotBlockMask`, `FlexMask`, one `attend` each): the
same result, from one scaled-dot-product attention under the whole boolean mask (the reference), from one per
slot over the keys the slot may see, or from FlexAttention over a block mask.

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

# (layer, channel, queries (B, heads, R, head_dim) of the chunk's rows first_row.., keys (B, heads, K, head_dim), their
# mask (B, 1, R, K) bool, first_row); the weights the channel uses are softmax(q k^T / sqrt(head_dim)) over the keys
# the mask allows.
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
    last row + 1, keys as a slice or an int64 index); key blocks nothing in the run sees are never computed."""

    def __init__(self, mask: torch.Tensor, blocks: tuple[tuple[int, int, slice | torch.Tensor], ...]) -> None:
        super().__init__(mask)
        self.blocks = blocks

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float) -> torch.Tensor:
        parts = []
        for first, last, keys in self.blocks:
            parts.append(F.scaled_dot_product_attention(  # (B, heads, rows, head_dim)
                query[:, :, first:last], key[:, :, keys], value[:, :, keys],
                attn_mask=self.mask[:, :, first:last, keys], dropout_p=dropout))
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
    projections' (each output is the same dot product over D)."""
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
        self.recorder: AttentionRecorder | None = None  # an observer of every call (the studio's inspector)
        self.copy_spatial_to_temporal()

    @torch.no_grad()
    def copy_spatial_to_temporal(self) -> None:
        """Temporal QKV and projection := spatial ones (at init, and after loading image weights)."""
        self.temporal_qkv.load_state_dict(self.spatial_qkv.state_dict())
        self.temporal_proj.load_state_dict(self.spatial_proj.state_dict())

    def forward(self, x: torch.Tensor, spatial_mask: AttentionMask, temporal_mask: AttentionMask | None,
                first_frame_row: int, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x (B, C, D), normalised chunk; the spatial mask covers its C rows, the temporal mask its rows from
        `first_frame_row` on (the frame positions), both over K = filled cache + C keys. Returns (B, C, D)."""
        if temporal_mask is None:
            return self.spatial_proj(self._attend(self.spatial_qkv(x), spatial_mask, 0, cache, layer, "spatial"))
        spatial_qkv, temporal_qkv = fused_qkv(x, self.spatial_qkv, self.temporal_qkv)
        spatial = self.spatial_proj(self._attend(spatial_qkv, spatial_mask, 0, cache, layer, "spatial"))
        temporal = self._attend(temporal_qkv, temporal_mask, first_frame_row, cache, layer, "temporal")
        temporal = self.temporal_proj(temporal)  # (B, C - first_frame_row, D)
        gate = torch.sigmoid(self.mixing)  # (D,)
        frames = gate * spatial[:, first_frame_row:] + (1 - gate) * temporal
        return torch.cat([spatial[:, :first_frame_row], frames], dim=1)  # (B, C, D)

    def _attend(self, qkv: torch.Tensor, mask: AttentionMask, first_row: int, cache: KVCache | None, layer: int,
                channel: str) -> torch.Tensor:
        """Attention of rows `first_row..` of the chunk over all visible keys; qkv (B, C, 3D).
        Returns (B, C - first_row, D)."""
        batch, length, dim = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        query, key, value = qkv.view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, heads, C, head_dim)
        if cache is not None:
            key, value = cache.store(layer, channel, key, value)  # (B, heads, K, head_dim)
        if self.recorder is not None:
            assert isinstance(mask, DenseMask), "a recorder reads the dense mask: set Generator.attention = 'dense'"
            self.recorder(layer, channel, query[:, :, first_row:], key, mask.mask, first_row)
        out = mask.attend(query[:, :, first_row:], key, value, self.dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(batch, length - first_row, dim)  # (B, C - first_row, D)
