"""Dual-channel self-attention: CogVideo's spatial ("base") and temporal ("plus") channels.

Both channels read the same normalised input. The spatial channel is a text-to-image attention trained in
the image stage and then frozen; the temporal channel has its own QKV (initialised as a copy of the spatial
QKV) and its own output projection (also a copy, so that a fresh video model equals the image model on a
frame that sees no other frame). Outputs are mixed per token and per hidden dimension after each
channel's projection: `out = sigmoid(a) * spatial + (1 - sigmoid(a)) * temporal`, `a` (D,) starting at 0.
Prefix tokens use the spatial channel only; without a temporal mask (image stage) out = spatial.

`forward` runs whole sequences (training, the uncached reference); `decode` runs the queries of one decoding pass at
any positions over a static `KVCache`, both channels on every query (a pass feeds frame positions only).

Knows nothing of the layout beyond where the frame positions of the chunk begin, nor of the stage rules:
masks arrive ready. Idea: Hong et al. 2023 (CogVideo), section 3.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogvideo_lite.model.cache import KVCache


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
        self.copy_spatial_to_temporal()

    @torch.no_grad()
    def copy_spatial_to_temporal(self) -> None:
        """Temporal QKV and projection := spatial ones (at init, and after loading image weights)."""
        self.temporal_qkv.load_state_dict(self.spatial_qkv.state_dict())
        self.temporal_proj.load_state_dict(self.spatial_proj.state_dict())

    def forward(self, x: torch.Tensor, spatial_mask: torch.Tensor, temporal_mask: torch.Tensor | None,
                first_frame_row: int) -> torch.Tensor:
        """x (B, C, D), normalised sequence; masks (B, 1, C, C) bool; rows from `first_frame_row` on are frame
        positions. Returns (B, C, D)."""
        spatial = self.spatial_proj(self._attend(self.spatial_qkv, x, spatial_mask, 0))
        if temporal_mask is None:
            return spatial
        temporal = self.temporal_proj(self._attend(self.temporal_qkv, x, temporal_mask, first_frame_row))
        gate = torch.sigmoid(self.mixing)  # (D,)
        frames = gate * spatial[:, first_frame_row:] + (1 - gate) * temporal
        return torch.cat([spatial[:, :first_frame_row], frames], dim=1)  # (B, C, D)

    def _attend(self, qkv: nn.Linear, x: torch.Tensor, mask: torch.Tensor, first_row: int) -> torch.Tensor:
        """Attention of rows `first_row..` over the keys the mask allows. Returns (B, C - first_row, D)."""
        batch, length, dim = x.shape
        query, key, value = qkv(x).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, heads, C, head_dim)
        out = F.scaled_dot_product_attention(
            query[:, :, first_row:], key, value, attn_mask=mask[:, :, first_row:],
            dropout_p=self.dropout if self.training else 0.0)  # (B, heads, C - first_row, head_dim)
        return out.transpose(1, 2).reshape(batch, length - first_row, dim)

    # ---------------------------------------------------------------- decoding over a static cache
    def decode(self, x: torch.Tensor, positions: torch.Tensor, spatial_mask: torch.Tensor,
               temporal_mask: torch.Tensor | None, cache: KVCache, layer: int, first_frame_row: int) -> torch.Tensor:
        """x (B, K, D), the normalised queries of one pass at `positions` (K,) int64; masks (B, 1, K, S') additive
        (0 or -inf) over cached positions 0 .. S' - 1; queries from `first_frame_row` on are frame positions (0 but in
        a prefill of the prefix). Writes the queries' keys and values into `cache`. Returns (B, K, D)."""
        spatial = self.spatial_proj(self._attend_cached(self.spatial_qkv, x, positions, spatial_mask, 0, cache, layer,
                                                        "spatial"))
        if temporal_mask is None:
            return spatial
        temporal = self.temporal_proj(self._attend_cached(self.temporal_qkv, x, positions, temporal_mask,
                                                          first_frame_row, cache, layer, "temporal"))
        gate = torch.sigmoid(self.mixing)  # (D,)
        frames = gate * spatial[:, first_frame_row:] + (1 - gate) * temporal
        return frames if first_frame_row == 0 else torch.cat([spatial[:, :first_frame_row], frames], dim=1)

    def _attend_cached(self, qkv: nn.Linear, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                       first_row: int, cache: KVCache, layer: int, channel: str) -> torch.Tensor:
        """One channel: write the keys and values of all K queries, then attend from rows `first_row..` over the
        cache. Returns (B, K - first_row, D)."""
        batch, length, dim = x.shape
        query, key, value = qkv(x).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, heads, K, head_dim)
        keys, values = cache.write(layer, channel, positions, key, value)  # (B, heads, S, head_dim)
        visible = slice(0, mask.shape[-1])
        out = F.scaled_dot_product_attention(query[:, :, first_row:], keys[:, :, visible], values[:, :, visible],
                                             attn_mask=mask[:, :, first_row:])  # (B, heads, K - first_row, head_dim)
        return out.transpose(1, 2).reshape(batch, length - first_row, dim)
