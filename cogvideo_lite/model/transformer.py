"""The generator: a pre-norm transformer with dual-channel attention over the joint text/image sequence.

Embeddings: tokens over the joint vocabulary; a learned 1-D position embedding for the prefix; a learned
(row, column) embedding for code positions and a learned BOI embedding (these belong to the image model);
a frame-index embedding, indexed by the TRUE frame each slot holds, that belongs to the video stages and
starts at zero. Each layer: LayerNorm -> dual-channel attention -> residual; LayerNorm -> MLP -> residual.
A final LayerNorm and a head that predicts image codes only (`codebook_size` logits), as CogVideo does.

Parameter groups: temporal = temporal QKV and projection, mixing vectors, frame-index embedding; spatial =
everything else. The image stage trains the spatial group; the video stages freeze it and train the
temporal group alone, whose state dict is all a video-stage checkpoint needs beside the image checkpoint.

Knows the layout and the stage masks; does not know text tokenization, the frame tokenizer, training or
sampling. Layout ideas: nanoGPT (model shape), DiT (section banners), CogVideo (dual channel, code-only head).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.attention import DualChannelAttention
from cogvideo_lite.model.cache import KVCache
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.masks import StageMasks, stage_masks, stage_plan, with_text_padding

INIT_STD = 0.02  # GPT-2 / nanoGPT initialisation of linear and embedding weights


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

    def forward(self, x: torch.Tensor, spatial_mask: torch.Tensor, temporal_mask: torch.Tensor | None,
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
        self._masks: dict[tuple, StageMasks] = {}

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
    def forward(self, tokens: torch.Tensor, text_pad: torch.Tensor, stage: str,
                frame_positions: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, C, codebook_size) of the codes each position predicts.

        tokens (B, C) int64 joint-vocabulary ids: the whole sequence (C = S of some frame count), or with
        `cache`, the next chunk after `cache.length` filled positions. text_pad (B, L) bool, True at pads.
        frame_positions (T,) int64, the true frame index per slot; default: the stage's own (see masks.py).
        """
        layout = self.layout.with_frames(self.layout.frames_for_length(
            tokens.shape[1] if cache is None else cache.max_length))
        start = 0 if cache is None else cache.length
        stop = start + tokens.shape[1]
        self._check_inputs(tokens, text_pad, stage, cache)
        if cache is not None:
            self._check_chunk_end(layout, stage, start, stop)
        positions = self._position_embedding(layout, stage, frame_positions)[start:stop]  # (C, D)
        x = self.token_embedding(tokens) + positions  # (B, C, D)
        masks = self._stage_masks(layout, stage, tokens.device)
        spatial_mask = with_text_padding(masks.spatial[start:stop, :stop], text_pad, start)  # (B, 1, C, K)
        temporal_mask = None if masks.temporal is None else with_text_padding(
            masks.temporal[start:stop, :stop], text_pad, start)
        first_frame_row = min(max(layout.prefix_length - start, 0), tokens.shape[1])
        use_checkpoint = self.config.activation_checkpointing and self.training and cache is None
        for layer, block in enumerate(self.blocks):
            arguments = (x, spatial_mask, temporal_mask, first_frame_row, cache, layer)
            x = checkpoint(block, *arguments, use_reentrant=False) if use_checkpoint else block(*arguments)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.head(self.final_norm(x))  # (B, C, codebook_size)

    def new_cache(self, batch_size: int, num_frames: int, stage: str) -> KVCache:
        """An empty cache for sequences of `num_frames` slots in `stage` (image: spatial channel only)."""
        stage_plan(self.layout.with_frames(num_frames), stage)  # validates the frame count for the stage
        parameter = self.head.weight
        return KVCache(batch_size, self.config.heads, self.config.head_dim, self.config.depth,
                       self.layout.with_frames(num_frames).seq_length,
                       ("spatial",) if stage == "image" else ("spatial", "temporal"),
                       stage, parameter.dtype, parameter.device)

    def _check_inputs(self, tokens: torch.Tensor, text_pad: torch.Tensor, stage: str,
                      cache: KVCache | None) -> None:
        problems = []
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            problems.append(f"tokens must be (B, C) int64, got {tuple(tokens.shape)} {tokens.dtype}")
        elif tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.layout.vocab_size):
            problems.append(f"token ids outside the joint vocabulary [0, {self.layout.vocab_size})")
        if tuple(text_pad.shape) != (tokens.shape[0], self.layout.text_length) or text_pad.dtype != torch.bool:
            problems.append(f"text_pad must be ({tokens.shape[0]}, {self.layout.text_length}) bool, "
                            f"got {tuple(text_pad.shape)} {text_pad.dtype}")
        if cache is not None and cache.stage != stage:
            problems.append(f"cache was made for stage {cache.stage!r}, forward called for {stage!r}")
        if cache is not None and cache.length + tokens.shape[1] > cache.max_length:
            problems.append(f"chunk of {tokens.shape[1]} after {cache.length} cached positions exceeds "
                            f"the sequence length {cache.max_length}")
        if problems:
            raise ValueError("Generator.forward: " + "; ".join(problems))

    def _check_chunk_end(self, layout: SequenceLayout, stage: str, start: int, stop: int) -> None:
        """A cached chunk must not end inside a bidirectional region (the prefix, a given slot): its
        positions would miss keys that come later, and the cache cannot revisit them."""
        masks = stage_masks(layout, stage, self.config.temporal_window)  # CPU copies: no device sync
        for mask in (masks.spatial, masks.temporal):
            if mask is not None and mask[start:stop, stop:].any():
                raise ValueError(f"cached chunk ends at position {stop}, inside a bidirectional region "
                                 "(the prefix or a given frame); feed that region in one chunk")

    def _stage_masks(self, layout: SequenceLayout, stage: str, device: torch.device) -> StageMasks:
        key = (layout, stage, device)
        if key not in self._masks:
            masks = stage_masks(layout, stage, self.config.temporal_window)
            self._masks[key] = StageMasks(masks.spatial.to(device),
                                          None if masks.temporal is None else masks.temporal.to(device))
        return self._masks[key]

    def _position_embedding(self, layout: SequenceLayout, stage: str,
                            frame_positions: torch.Tensor | None) -> torch.Tensor:
        """(S, D): prefix positions; per slot BOI / (row, column) embeddings plus, outside the image stage,
        the frame-index embedding of the slot's true frame."""
        height, width = layout.grid
        codes = (self.row_embedding[:, None] + self.column_embedding[None, :]).reshape(height * width, -1)
        slot = torch.cat([self.boi_embedding[None], codes])  # (1 + h*w, D)
        frames = slot[None].expand(layout.num_frames, -1, -1)  # (T, 1 + h*w, D)
        if stage != "image":
            if frame_positions is None:
                frame_positions = torch.tensor(stage_plan(layout, stage).frame_positions)
            self._check_frame_positions(frame_positions, layout)
            frames = frames + self.frame_embedding[frame_positions.to(self.frame_embedding.device)][:, None]
        return torch.cat([self.prefix_position, frames.reshape(-1, frames.shape[-1])])  # (S, D)

    def _check_frame_positions(self, frame_positions: torch.Tensor, layout: SequenceLayout) -> None:
        if (tuple(frame_positions.shape) != (layout.num_frames,) or frame_positions.min() < 0
                or frame_positions.max() >= self.config.max_frames):
            raise ValueError(f"frame_positions {frame_positions.tolist()}: expected {layout.num_frames} "
                             f"true frame indices in [0, {self.config.max_frames})")

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
               loss_slots: tuple[int, ...]) -> torch.Tensor:
    """Mean cross-entropy over the codes of `loss_slots`.

    logits (B, S, codebook_size) from `Generator.forward`; tokens (B, S) the same sequence; layout with the
    sequence's frame count; loss_slots e.g. `stage_plan(layout, stage).loss_slots`.
    """
    if not loss_slots:
        raise ValueError("stage_loss needs at least one loss slot")
    if tokens.shape[1] != layout.seq_length or logits.shape[:2] != tokens.shape:
        raise ValueError(f"stage_loss: tokens {tuple(tokens.shape)} and logits {tuple(logits.shape)} do not fit "
                         f"a layout of {layout.num_frames} frames ({layout.seq_length} tokens)")
    predictions = torch.cat([logits[:, layout.prediction_slice(slot)] for slot in loss_slots], dim=1)  # (B, N, V)
    targets = torch.cat([tokens[:, layout.code_slice(slot)] for slot in loss_slots], dim=1) - layout.image_offset
    if targets.min() < 0 or targets.max() >= layout.codebook_size:
        raise ValueError(f"loss slots {tuple(loss_slots)} hold ids that are not image codes")
    return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1))
