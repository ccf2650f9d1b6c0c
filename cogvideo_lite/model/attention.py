"""Dual-channel self-attention: CogVideo's spatial ("base") and temporal ("plus") channels.

Both channels read the same normalised input. The spatial channel is a text-to-image attention trained in
the image stage and then frozen; the temporal channel has its own QKV (initialised as a copy of the spatial
QKV) and its own output projection (also a copy, so that a fresh video model equals the image model on a
frame that sees no other frame). Outputs are mixed per token and per hidden dimension after each
channel's projection: `out = sigmoid(a) * spatial + (1 - sigmoid(a)) * temporal`, `a` (D,) starting at 0.
Prefix tokens use the spatial channel only; without a temporal mask (image stage) out = spatial.
An `AttentionRecorder` set on a layer's `recorder` sees every call's queries, keys and mask (the studio's attention
inspector computes the weights of the query it shows from them); it changes nothing.

Knows nothing of the layout beyond where the frame positions of the chunk begin, nor of the stage rules:
masks arrive ready. Idea: Hong et al. 2023 (CogVideo), section 3.2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cogvideo_lite.model.cache import KVCache

# (layer, channel, queries (B, heads, C, head_dim) of the chunk's rows, keys (B, heads, K, head_dim), mask (B, 1, C, K)
# bool); the weights the channel uses are softmax(q k^T / sqrt(head_dim)) over the keys the mask allows.
AttentionRecorder = Callable[[int, str, torch.Tensor, torch.Tensor, torch.Tensor], None]


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

    def forward(self, x: torch.Tensor, spatial_mask: torch.Tensor, temporal_mask: torch.Tensor | None,
                first_frame_row: int, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x (B, C, D), normalised chunk; masks (B, 1, C, K) bool with K = filled cache + C (K = C uncached);
        rows from `first_frame_row` on are frame positions. Returns (B, C, D)."""
        spatial = self.spatial_proj(self._attend(self.spatial_qkv, x, spatial_mask, 0, cache, layer, "spatial"))
        if temporal_mask is None:
            return spatial
        temporal = self._attend(self.temporal_qkv, x, temporal_mask, first_frame_row, cache, layer, "temporal")
        temporal = self.temporal_proj(temporal)  # (B, C - first_frame_row, D)
        gate = torch.sigmoid(self.mixing)  # (D,)
        frames = gate * spatial[:, first_frame_row:] + (1 - gate) * temporal
        return torch.cat([spatial[:, :first_frame_row], frames], dim=1)  # (B, C, D)

    def _attend(self, qkv: nn.Linear, x: torch.Tensor, mask: torch.Tensor, first_row: int,
                cache: KVCache | None, layer: int, channel: str) -> torch.Tensor:
        """Attention of rows `first_row..` of the chunk over all visible keys. Returns (B, C - first_row, D)."""
        batch, length, dim = x.shape
        query, key, value = qkv(x).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, heads, C, head_dim)
        if cache is not None:
            key, value = cache.store(layer, channel, key, value)  # (B, heads, K, head_dim)
        if self.recorder is not None:
            self.recorder(layer, channel, query, key, mask)
        out = F.scaled_dot_product_attention(
            query[:, :, first_row:], key, value, attn_mask=mask[:, :, first_row:],
            dropout_p=self.dropout if self.training else 0.0)  # (B, heads, C - first_row, head_dim)
        return out.transpose(1, 2).reshape(batch, length - first_row, dim)
