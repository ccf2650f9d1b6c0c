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

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from torch.utils.checkpoint import checkpoint

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.attention import AttentionMask, DenseMask, DualChannelAttention, FlexMask, SlotBlockMask
from cogvideo_lite.model.cache import KVCache
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.masks import (FLEX_BLOCK, StageMasks, flex_block_tables, flex_mask_mod, slot_blocks,
                                       stage_masks, stage_rules, with_text_padding)
from cogvideo_lite.model.stages import Stage, StagePlan

INIT_STD = 0.02  # GPT-2 / nanoGPT initialisation of linear and embedding weights
# How the attention channels run (`Generator.attention`): "dense" = one scaled-dot-product attention under the whole
# boolean mask (the reference); "slots" = one per run of query rows in a slot, over only the keys it may see; "flex" =
# FlexAttention over block masks (CUDA for training: it has no backward on CPU, and no attention dropout); "auto" =
# the uncached forward (training, scoring) skips what it masks: flex on CUDA (slots when training with dropout), slots
# elsewhere; cached chunks (sampling) attend densely.
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
                first_frame_row: int, cache: KVCache | None, layer: int) -> torch.Tensor:
        attended = self.attention(self.attention_norm(x), spatial_mask, temporal_mask, first_frame_row, cache, layer)
        x = x + self.attention_dropout(attended)
        return x + self.feed_forward(self.feed_forward_norm(x))  # (B, C, D)


def _is_temporal(name: str) -> bool:
    """Temporal group: temporal QKV / projection, mixing vectors, frame-index embedding."""
    return (name == "frame_embedding" or ".attention.temporal_" in name or name.endswith(".attention.mixing"))


#################################################################################
#                                   Generator                                   #
#################################################################################

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
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, C, codebook_size) of the codes each position predicts.

        tokens (B, C) int64 joint-vocabulary ids: the whole sequence (C = S of some frame count), or with
        `cache`, the next chunk after `cache.length` filled positions. text_pad (B, L) bool, True at pads.
        """
        start = 0 if cache is None else cache.length
        stop = start + tokens.shape[1]
        layout = self.layout.with_frames(self.layout.frames_for_length(stop if cache is None else cache.max_length))
        assert tokens.dtype == torch.long and text_pad.shape == (tokens.shape[0], layout.text_length), \
            f"tokens (B, C) int64 and text_pad (B, {layout.text_length}) bool, got {tokens.dtype} {text_pad.shape}"
        if cache is not None:
            self._assert_chunk_fits(cache, layout, stage, start, stop)
        masks, frame_positions = self._stage_tensors(layout, stage, tokens.device)
        positions = self._position_embedding(layout, stage, frame_positions)[start:stop]  # (C, D)
        x = self.token_embedding(tokens) + positions  # (B, C, D)
        first_frame_row = min(max(layout.prefix_length - start, 0), tokens.shape[1])
        backend = self._attention_backend(tokens.device, cache is not None)
        spatial_mask = self._channel_mask(backend, layout, stage, masks, "spatial", text_pad, start, stop)
        temporal_mask = None if masks.temporal is None else self._channel_mask(
            backend, layout, stage, masks, "temporal", text_pad, start + first_frame_row, stop)
        use_checkpoint = self.config.activation_checkpointing and self.training and cache is None
        blocks = self._compiled_blocks if self.training and cache is None and self._compiled_blocks else self.blocks
        for layer, block in enumerate(blocks):
            arguments = (x, spatial_mask, temporal_mask, first_frame_row, cache, layer)
            x = checkpoint(block, *arguments, use_reentrant=False) if use_checkpoint else block(*arguments)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.head(self.final_norm(x))  # (B, C, codebook_size)

    def compile_blocks(self) -> None:
        """Run each block compiled (torch.compile: fused element-wise work, FlexAttention inside the graph) in the
        training forward; evaluation and cached chunks, whose lengths vary, run eagerly."""
        self._compiled_blocks = [torch.compile(block) for block in self.blocks]

    def new_cache(self, batch_size: int, num_frames: int, stage: Stage) -> KVCache:
        """An empty cache for sequences of `num_frames` slots in `stage` (image: spatial channel only)."""
        layout = self.layout.with_frames(num_frames)
        stage.plan(layout)  # validates the frame count for the stage
        shape = (self.config.depth, batch_size, self.config.heads, layout.seq_length, self.config.head_dim)
        return KVCache(stage, shape, self.head.weight)

    def _assert_chunk_fits(self, cache: KVCache, layout: SequenceLayout, stage: Stage, start: int, stop: int) -> None:
        """A cached chunk belongs to the cache's stage, fits in it, and does not end inside a bidirectional region
        (the prefix, a given slot): its positions would miss keys that come later, and the cache cannot revisit
        them. Python and CPU checks only: no device sync."""
        assert cache.stage is stage, f"cache was made for stage {cache.stage.name!r}, forward called for {stage.name!r}"
        assert stop <= cache.max_length, (f"chunk of {stop - start} after {start} cached positions exceeds the "
                                          f"sequence length {cache.max_length}")
        masks = stage_masks(layout, stage, self.config.temporal_window)  # the CPU copies
        assert not any(mask is not None and mask[start:stop, stop:].any() for mask in (masks.spatial, masks.temporal)), (
            f"cached chunk ends at position {stop}, inside a bidirectional region (the prefix or a given frame); "
            "feed that region in one chunk")

    def _attention_backend(self, device: torch.device, cached: bool) -> str:
        """`self.attention`, with "auto" resolved (see ATTENTION_BACKENDS)."""
        assert self.attention in ATTENTION_BACKENDS, f"attention={self.attention!r}: expected {ATTENTION_BACKENDS}"
        if self.attention != "auto":
            return self.attention
        if cached:
            return "dense"
        dropout = self.training and self.config.dropout > 0
        return "flex" if device.type == "cuda" and not dropout else "slots"

    def _channel_mask(self, backend: str, layout: SequenceLayout, stage: Stage, masks: StageMasks, channel: str,
                      text_pad: torch.Tensor, query_start: int, stop: int) -> AttentionMask:
        """The mask of `channel` for query rows `query_start .. stop - 1` over keys `0 .. stop - 1`, with the text
        padding of each sample, in the form `backend` attends with."""
        window, device = self.config.temporal_window, text_pad.device
        if backend == "flex" and query_start < stop:
            rule = stage_rules(layout, stage, window, device)[channel]
            return FlexMask(BlockMask.from_kv_blocks(
                *flex_block_tables(layout, stage, window, channel, query_start, stop, device), BLOCK_SIZE=FLEX_BLOCK,
                mask_mod=flex_mask_mod(rule, text_pad, query_start), seq_lengths=(stop - query_start, stop)))
        rows = with_text_padding(getattr(masks, channel)[query_start:stop, :stop], text_pad, query_start)  # (B,1,Q,K)
        if backend == "slots" and query_start < stop:
            return SlotBlockMask(rows, slot_blocks(layout, stage, window, channel, query_start, stop, device))
        return DenseMask(rows)

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

    def _position_embedding(self, layout: SequenceLayout, stage: Stage, frame_positions: torch.Tensor) -> torch.Tensor:
        """(S, D): prefix positions; per slot BOI / (row, column) embeddings plus, in a video stage, the
        frame-index embedding of the slot's true frame (`frame_positions` (T,))."""
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


def stage_loss(logits: torch.Tensor, tokens: torch.Tensor, layout: SequenceLayout,
               loss_slots: tuple[int, ...], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the codes of `loss_slots`, or its `weights`-weighted mean.

    logits (B, S, codebook_size) from `Generator.forward`; tokens (B, S) the same sequence; layout with the
    sequence's frame count; loss_slots e.g. `stage.plan(layout).loss_slots`; weights (B, N) >= 0, one per code of
    the loss slots in slot order (N = len(loss_slots) * tokens per frame), e.g. `change_weights`.
    """
    if not loss_slots:
        raise ValueError("stage_loss needs at least one loss slot")
    if tokens.shape[1] != layout.seq_length or logits.shape[:2] != tokens.shape:
        raise ValueError(f"stage_loss: tokens {tuple(tokens.shape)} and logits {tuple(logits.shape)} do not fit "
                         f"a layout of {layout.num_frames} frames ({layout.seq_length} tokens)")
    rows = torch.cat([torch.arange(layout.prediction_slice(slot).start, layout.prediction_slice(slot).stop)
                      for slot in loss_slots]).to(logits.device)
    predictions = logits[:, rows]  # (B, N, V): one gather, whose backward fills one gradient of the logits' size
    targets = torch.cat([tokens[:, layout.code_slice(slot)] for slot in loss_slots], dim=1) - layout.image_offset
    if targets.min() < 0 or targets.max() >= layout.codebook_size:
        raise ValueError(f"loss slots {tuple(loss_slots)} hold ids that are not image codes")
    if weights is None:
        return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1))
    losses = F.cross_entropy(predictions.transpose(1, 2), targets, reduction="none")  # (B, N)
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
