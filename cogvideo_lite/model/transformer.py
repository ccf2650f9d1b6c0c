"""The generator: a pre-norm transformer with dual-channel attention over the joint text/image sequence.

Embeddings: tokens over the joint vocabulary; a learned 1-D position embedding for the prefix; a learned
(row, column) embedding for code positions and a learned BOI embedding (these belong to the image model);
a frame-index embedding, indexed by the TRUE frame each slot holds, that belongs to the video stages and
starts at zero. Each layer: LayerNorm -> dual-channel attention -> residual; LayerNorm -> MLP -> residual.
A final LayerNorm and a head that predicts image codes only (`codebook_size` logits), as CogVideo does.

Parameter groups: temporal = temporal QKV and projection, mixing vectors, frame-index embedding; spatial =
everything else. The image stage trains the spatial group; the video stages freeze it and train the
temporal group alone, whose state dict is all a video-stage checkpoint needs beside the image checkpoint.

Knows the layout, the stage registry and the masks; does not know text tokenization, the frame tokenizer, training or
sampling. Layout ideas: nanoGPT (model shape), DiT (section banners), CogVideo (dual channel, code-only head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from torch.utils.checkpoint import checkpoint

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.attention import AttentionMask, DenseMask, DualChannelAttention, FlexMask, SlotBlockMask
from cogvideo_lite.model.cache import KVCache
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.masks import (FLEX_BLOCK, StageMasks, flex_block_tables, flex_mask_mod, image_slots_mask,
                                       slot_blocks, stage_masks, stage_rules, with_text_padding)
from cogvideo_lite.model.stages import IMAGE, Stage, StagePlan

INIT_STD = 0.02  # GPT-2 / nanoGPT initialisation of linear and embedding weights
# How the attention channels of `forward` run (`Generator.attention`): "dense" = one scaled-dot-product attention under
# the whole boolean mask (the reference); "slots" = one per run of query rows in a slot, over only the keys it may see;
# "flex" = FlexAttention over block masks (CUDA for training: it has no backward on CPU, and no attention dropout);
# "auto" = skip what is masked: flex on CUDA (slots when training with dropout), slots elsewhere. Decoding passes
# (`decode`) attend densely over the cache.
ATTENTION_BACKENDS = ("auto", "dense", "slots", "flex")


#################################################################################
#                                 Building blocks                               #
#################################################################################

class FeedForward(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.dim)
        self.attention = DualChannelAttention(config.dim, config.heads, config.dropout)
        self.attention_dropout = nn.Dropout(config.dropout)
        self.feed_forward_norm = nn.LayerNorm(config.dim)
        self.feed_forward = FeedForward(config.dim, config.mlp_ratio, config.dropout)

    def forward(self, x: torch.Tensor, spatial_mask: AttentionMask, temporal_mask: AttentionMask | None,
                first_frame_row: int, layer: int) -> torch.Tensor:
        x = x + self.attention_dropout(self.attention(self.attention_norm(x), spatial_mask, temporal_mask,
                                                      first_frame_row, layer))
        return x + self.feed_forward(self.feed_forward_norm(x))  # (B, C, D)

    def decode(self, x: torch.Tensor, positions: torch.Tensor, spatial_mask: torch.Tensor,
               temporal_mask: torch.Tensor | None, cache: KVCache, layer: int, first_frame_row: int) -> torch.Tensor:
        x = x + self.attention.decode(self.attention_norm(x), positions, spatial_mask, temporal_mask, cache, layer,
                                      first_frame_row)
        return x + self.feed_forward(self.feed_forward_norm(x))  # (B, K, D)


def _is_temporal(name: str) -> bool:
    """Temporal group: temporal QKV / projection, mixing vectors, frame-index embedding."""
    return (name == "frame_embedding" or ".attention.temporal_" in name or name.endswith(".attention.mixing"))


#################################################################################
#                                   Generator                                   #
#################################################################################

@dataclass(frozen=True)
class DecodeTables:
    """What every decoding pass over sequences of one layout and stage reads, made once per generation call:
    positions (S, D) position embeddings; spatial, temporal (S, S) bool stage masks (temporal None: spatial channel
    only); columns (S,) int64, 0 .. S - 1."""

    positions: torch.Tensor
    spatial: torch.Tensor
    temporal: torch.Tensor | None
    columns: torch.Tensor


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig, layout: SequenceLayout) -> None:
        super().__init__()
        if layout.num_frames > config.max_frames:
            raise ValueError(f"layout has {layout.num_frames} frame slots but max_frames={config.max_frames}")
        self.config = config
        self.layout = layout
        dim = config.dim
        self.token_embedding = nn.Embedding(layout.vocab_size, dim)
        self.prefix_position = nn.Parameter(torch.randn(layout.prefix_length, dim) * INIT_STD)
        self.row_embedding = nn.Parameter(torch.randn(layout.grid[0], dim) * INIT_STD)
        self.column_embedding = nn.Parameter(torch.randn(layout.grid[1], dim) * INIT_STD)
        self.boi_embedding = nn.Parameter(torch.randn(dim) * INIT_STD)
        self.frame_embedding = nn.Parameter(torch.zeros(config.max_frames, dim))  # zero: video starts as image
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, layout.codebook_size)
        self.apply(self._init_module)
        self.initialise_temporal_from_spatial()
        self.attention = "auto"  # one of ATTENTION_BACKENDS
        self._compiled_blocks: list[nn.Module] = []  # compile_blocks()
        self._stage_cache: dict[tuple, tuple[StageMasks, torch.Tensor]] = {}

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=INIT_STD)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def initialise_temporal_from_spatial(self) -> None:
        """Copy each layer's spatial QKV and projection into its temporal channel (call after loading
        image-stage weights into a fresh video-stage model)."""
        for block in self.blocks:
            block.attention.copy_spatial_to_temporal()

    def set_spatial_share(self, share: float) -> None:
        """Every layer's mix gives the spatial channel `share` (0 < share < 1) in each dimension, the temporal
        channel the rest."""
        if not 0 < share < 1:
            raise ValueError(f"spatial share {share!r}: expected a number strictly between 0 and 1")
        with torch.no_grad():
            for block in self.blocks:
                block.attention.mixing.fill_(math.log(share / (1 - share)))  # the logit: sigmoid(mixing) = share

    # ---------------------------------------------------------------- forward
    def forward(self, tokens: torch.Tensor, text_pad: torch.Tensor, stage: Stage,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, S, codebook_size) of the codes each position predicts, or (B, N, codebook_size) at `rows` only.

        tokens (B, S) int64 joint-vocabulary ids, the whole sequence of some frame count; text_pad (B, L) bool, True at
        pads; rows (N,) int64 positions, e.g. the loss rows (`SequenceLayout.prediction_rows`): the head, the widest
        matmul, then runs on those alone.
        """
        layout = self.layout.with_frames(self.layout.frames_for_length(tokens.shape[1]))
        assert tokens.dtype == torch.long and text_pad.shape == (tokens.shape[0], layout.text_length), \
            f"tokens (B, S) int64 and text_pad (B, {layout.text_length}) bool, got {tokens.dtype} {text_pad.shape}"
        masks, frame_positions = self._stage_tensors(layout, stage, tokens.device)
        x = self.token_embedding(tokens) + self._position_embedding(layout, stage, frame_positions)  # (B, S, D)
        backend = self._attention_backend(tokens.device)
        spatial_mask = self._channel_mask(backend, layout, stage, masks, "spatial", text_pad, 0)
        temporal_mask = None if masks.temporal is None else self._channel_mask(
            backend, layout, stage, masks, "temporal", text_pad, layout.prefix_length)
        use_checkpoint = self.config.activation_checkpointing and self.training
        blocks = self._compiled_blocks if self.training and self._compiled_blocks else self.blocks
        for layer, block in enumerate(blocks):
            arguments = (x, spatial_mask, temporal_mask, layout.prefix_length, layer)
            x = checkpoint(block, *arguments, use_reentrant=False) if use_checkpoint else block(*arguments)
        return self.head(self.final_norm(x if rows is None else x[:, rows]))  # (B, S or N, codebook_size)

    def compile_blocks(self) -> None:
        """Run each block compiled (torch.compile: fused element-wise work, FlexAttention inside the graph) in the
        training forward; evaluation and decoding run eagerly."""
        self._compiled_blocks = [torch.compile(block) for block in self.blocks]

    def _attention_backend(self, device: torch.device) -> str:
        """`self.attention`, with "auto" resolved (see ATTENTION_BACKENDS)."""
        assert self.attention in ATTENTION_BACKENDS, f"attention={self.attention!r}: expected {ATTENTION_BACKENDS}"
        if self.attention != "auto":
            return self.attention
        dropout = self.training and self.config.dropout > 0
        return "flex" if device.type == "cuda" and not dropout else "slots"

    def _channel_mask(self, backend: str, layout: SequenceLayout, stage: Stage, masks: StageMasks, channel: str,
                      text_pad: torch.Tensor, query_start: int) -> AttentionMask:
        """The mask of `channel` for query rows `query_start .. S - 1` over all S keys, with the text padding of each
        sample, in the form `backend` attends with."""
        window, device, stop = self.config.temporal_window, text_pad.device, layout.seq_length
        if backend == "flex" and query_start < stop:
            rule = stage_rules(layout, stage, window, device)[channel]
            return FlexMask(BlockMask.from_kv_blocks(
                *flex_block_tables(layout, stage, window, channel, query_start, stop, device), BLOCK_SIZE=FLEX_BLOCK,
                mask_mod=flex_mask_mod(rule, text_pad, query_start), seq_lengths=(stop - query_start, stop)))
        rows = with_text_padding(getattr(masks, channel)[query_start:], text_pad, query_start)  # (B,1,Q,S)
        if backend == "slots" and query_start < stop:
            return SlotBlockMask(rows, slot_blocks(layout, stage, window, channel, query_start, stop, device))
        return DenseMask(rows)

    # ---------------------------------------------------------------- decoding
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, tables: DecodeTables,
               first_frame_row: int = 0, key_limit: int | None = None) -> torch.Tensor:
        """Logits (B, K, codebook_size) of the codes the queries predict: one decoding pass.

        tokens (B, K) int64 joint-vocabulary ids at `positions` (K,) int64 of the sequence that `tables` describes.
        Their keys and values are written into `cache`; each query attends to the positions its stage mask row allows
        and `cache.visible` holds, and to itself. Queries before `first_frame_row` are prefix positions, which use the
        spatial channel alone (a prefill); a pass feeds frame positions only. key_limit: attend over positions
        0 .. key_limit - 1 only, exact when no query sees a later position (none does but in a bidirectional given
        slot); None: all S, static shapes for a captured graph. Nothing reads a tensor's value on the host.
        """
        x = self.token_embedding(tokens) + tables.positions.index_select(0, positions)  # (B, K, D)
        keys = slice(0, key_limit)
        allowed = cache.visible[:, None, keys] | (positions[:, None] == tables.columns[keys])  # (B, K, S')
        spatial_mask = _additive(tables.spatial.index_select(0, positions)[:, keys] & allowed, x.dtype)
        temporal_mask = None if tables.temporal is None else _additive(
            tables.temporal.index_select(0, positions)[:, keys] & allowed, x.dtype)
        for layer, block in enumerate(self.blocks):
            x = block.decode(x, positions, spatial_mask, temporal_mask, cache, layer, first_frame_row)
        return self.head(self.final_norm(x))  # (B, K, codebook_size)

    def decode_tables(self, layout: SequenceLayout, stage: Stage, device: torch.device) -> DecodeTables:
        """What every pass of decoding sequences of `layout` in `stage` reads."""
        masks, frame_positions = self._stage_tensors(layout, stage, device)
        return self._decode_tables(layout, stage, frame_positions, masks)

    def image_slot_tables(self, layout: SequenceLayout, device: torch.device) -> DecodeTables:
        """Decoding the slots of `layout` side by side with the spatial channel alone, each slot an image of its own
        (an image model beside a video stage)."""
        spatial = image_slots_mask(layout).to(device)
        return self._decode_tables(layout, IMAGE, None, StageMasks(spatial, None))

    def _decode_tables(self, layout: SequenceLayout, stage: Stage, frame_positions: torch.Tensor | None,
                       masks: StageMasks) -> DecodeTables:
        with torch.no_grad():
            positions = self._position_embedding(layout, stage, frame_positions)  # (S, D)
        columns = torch.arange(layout.seq_length, device=masks.spatial.device)
        return DecodeTables(positions, masks.spatial, masks.temporal, columns)

    def new_cache(self, tables: DecodeTables, text_pad: torch.Tensor) -> KVCache:
        """An empty cache for a batch of sequences (text_pad (B, L)) that `tables` describes, for its channels."""
        channels = ("spatial",) if tables.temporal is None else ("spatial", "temporal")
        shape = (self.config.depth, text_pad.shape[0], self.config.heads, tables.positions.shape[0],
                 self.config.head_dim)
        return KVCache(channels, shape, self.head.weight, text_pad)

    def _stage_tensors(self, layout: SequenceLayout, stage: Stage,
                       device: torch.device) -> tuple[StageMasks, torch.Tensor]:
        """The stage's masks and its slots' true frame indices (T,) int64 on `device`, made once per layout."""
        key = (layout, stage, device)
        if key not in self._stage_cache:
            masks = stage_masks(layout, stage, self.config.temporal_window)
            self._stage_cache[key] = (
                StageMasks(masks.spatial.to(device), None if masks.temporal is None else masks.temporal.to(device)),
                torch.tensor(stage.plan(layout).frame_positions, device=device))
        return self._stage_cache[key]

    def _position_embedding(self, layout: SequenceLayout, stage: Stage,
                            frame_positions: torch.Tensor | None) -> torch.Tensor:
        """(S, D): prefix positions; per slot BOI / (row, column) embeddings plus, in a video stage, the
        frame-index embedding of the slot's true frame (`frame_positions` (T,); unused in the image stage)."""
        height, width = layout.grid
        codes = (self.row_embedding[:, None] + self.column_embedding[None, :]).reshape(height * width, -1)
        slot = torch.cat([self.boi_embedding[None], codes])  # (1 + h*w, D)
        frames = slot[None].expand(layout.num_frames, -1, -1)  # (T, 1 + h*w, D)
        if stage.is_video:
            frames = frames + self.frame_embedding[frame_positions][:, None]
        return torch.cat([self.prefix_position, frames.reshape(-1, frames.shape[-1])])  # (S, D)

    # ---------------------------------------------------------------- parameter groups
    def temporal_parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters() if _is_temporal(name)]

    def spatial_parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters() if not _is_temporal(name)]

    def freeze_spatial(self) -> None:
        """Stop gradients to the spatial group (video stages train the temporal group alone)."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(_is_temporal(name))

    def temporal_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach().clone() for name, parameter in self.named_parameters()
                if _is_temporal(name)}

    @torch.no_grad()
    def load_temporal_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load exactly the temporal group; missing or unexpected names are an error."""
        parameters = dict(self.named_parameters())
        expected = set(self.temporal_parameter_names())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"temporal state dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            if value.shape != parameters[name].shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)}, expected {tuple(parameters[name].shape)}")
            parameters[name].copy_(value)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (B, K, S') -> (B, 1, K, S') additive attention bias, 0 where allowed and -inf elsewhere: made once
    per pass instead of once per layer and channel."""
    return torch.full(mask.shape, float("-inf"), dtype=dtype, device=mask.device).masked_fill_(mask, 0.0)[:, None]


def stage_loss(logits: torch.Tensor, tokens: torch.Tensor, layout: SequenceLayout,
               loss_slots: tuple[int, ...], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the codes of `loss_slots`, or its `weights`-weighted mean.

    logits (B, N, codebook_size) at the loss rows, `Generator.forward(..., rows=layout.prediction_rows(loss_slots))`
    (N = len(loss_slots) * tokens per frame); tokens (B, S) the sequence; layout with the sequence's frame count;
    loss_slots e.g. `stage.plan(layout).loss_slots`; weights (B, N) >= 0, one per code of the loss slots in slot
    order, e.g. `change_weights`.
    """
    if not loss_slots:
        raise ValueError("stage_loss needs at least one loss slot")
    expected = (tokens.shape[0], len(loss_slots) * layout.tokens_per_frame)
    if tokens.shape[1] != layout.seq_length or logits.shape[:2] != expected:
        raise ValueError(f"stage_loss: tokens {tuple(tokens.shape)} and logits {tuple(logits.shape)} do not fit "
                         f"the loss slots {tuple(loss_slots)} of a layout of {layout.num_frames} frames "
                         f"({layout.seq_length} tokens; logits {expected} at the loss rows expected)")
    targets = torch.cat([tokens[:, layout.code_slice(slot)] for slot in loss_slots], dim=1) - layout.image_offset
    if targets.min() < 0 or targets.max() >= layout.codebook_size:
        raise ValueError(f"loss slots {tuple(loss_slots)} hold ids that are not image codes")
    if weights is None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, N)
    return (losses * weights).sum() / weights.sum()


def change_weights(tokens: torch.Tensor, layout: SequenceLayout, plan: StagePlan, weight: float) -> torch.Tensor:
    """(B, N) loss weights for the codes of `plan.loss_slots`: `weight` where a code differs from the code at the
    same grid position in the frame one step earlier in time (where the motion is), 1 elsewhere and in frame 0.
    Most codes of a video repeat the frame before; a plain mean leaves a stage that copies frames nearly as good as
    one that moves them."""
    slot_of_frame = {frame: slot for slot, frame in enumerate(plan.frame_positions)}
    parts = []
    for slot in plan.loss_slots:
        codes = tokens[:, layout.code_slice(slot)]  # (B, n)
        before = slot_of_frame.get(plan.frame_positions[slot] - 1)
        changed = torch.zeros_like(codes, dtype=torch.bool) if before is None else \
            codes != tokens[:, layout.code_slice(before)]
        parts.append(1 + (weight - 1) * changed.float())
    return torch.cat(parts, dim=1)  # (B, N)
