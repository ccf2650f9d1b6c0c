"""Attention masks of the generator's stages, built once per (layout, stage) from frame-level rules.

Boolean masks, True = the query (row) may attend to the key (column). Frame-level rules (F full,
C causal within the slot, . none) for the TEMPORAL channel:
- keyframe: plain causal over slots: slot f sees slots < f fully and itself causally.
- interpolate: slots hold true frames `[0, 2, 4, 1, 3]` (given frames first, then the generated ones in the
  order they are generated); given slots see each other bidirectionally, generated slots see every given
  slot, earlier generated slots, and themselves causally. Any odd slot count works the same way.
The SPATIAL channel sees the prefix and its own slot: bidirectionally for given slots, causally otherwise.
Prefix (text + fps token): bidirectional over the non-pad prefix and blind to what follows; frame tokens
see the non-pad prefix in both channels. Pad keys are never attended; a pad query attends to itself only.
Temporal-channel rows of prefix positions repeat the spatial rows: the prefix uses the spatial channel only.

Knows the layout and the stages' frame plans (`stages.py`: which slots are given, which the stage learns); does not
know the network. The rules are CogVideo's (Hong et al. 2023, section 3.2, figure 3), with a BOI token per slot.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import Stage, StagePlan

_NONE, _FULL, _CAUSAL = 0, 1, 2  # slot-to-slot visibility codes


@dataclass(frozen=True)
class StageMasks:
    """spatial (S, S) bool; temporal (S, S) bool, or None in the image stage (no temporal channel)."""

    spatial: torch.Tensor
    temporal: torch.Tensor | None


def slot_visibility(plan: StagePlan, channel: str) -> torch.Tensor:
    """Frame-level rules (T, T) int: 0 none, 1 full, 2 causal within the slot; rows are query slots."""
    if channel not in ("spatial", "temporal"):
        raise ValueError(f"unknown channel {channel!r}; expected 'spatial' or 'temporal'")
    given = set(plan.given_slots)
    num_slots = len(plan.frame_positions)
    visibility = torch.full((num_slots, num_slots), _NONE, dtype=torch.long)
    for query in range(num_slots):
        visibility[query, query] = _FULL if query in given else _CAUSAL
        if channel == "spatial":
            continue
        for key in range(num_slots):
            if key != query and (key in given or (query not in given and key < query)):
                visibility[query, key] = _FULL
    return visibility


def _frame_block(layout: SequenceLayout, visibility: torch.Tensor) -> torch.Tensor:
    """Token-level mask among frame positions (T*n, T*n) from slot-level rules; n = slot_length."""
    n = layout.slot_length
    within = torch.arange(n)
    causal = (within[:, None] >= within[None, :]).repeat(layout.num_frames, layout.num_frames)  # (T*n, T*n)
    full = (visibility == _FULL).repeat_interleave(n, 0).repeat_interleave(n, 1)  # (T*n, T*n)
    causal_slots = (visibility == _CAUSAL).repeat_interleave(n, 0).repeat_interleave(n, 1)  # (T*n, T*n)
    return full | (causal_slots & causal)


def _distance(values: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, N) absolute pairwise differences."""
    return (values[:, None] - values[None, :]).abs()


def _local_window(layout: SequenceLayout, plan: StagePlan, window: tuple[int, int, int]) -> torch.Tensor:
    """(T*n, T*n) bool: pairs in the same slot, or within `window` = (frames, rows, cols) radii.

    Frame distance is measured in true frames. A BOI stands at row 0, column 0, the grid position of the code it
    predicts: a slot's first code then sees only the first window rows of the slots before it, so a frame can start
    before the one before it ends (exact parallel decoding across frames, `sample/schedule.py`).
    """
    frames_radius, rows_radius, cols_radius = window
    n, width = layout.slot_length, layout.grid[1]
    slot = torch.arange(layout.num_frames).repeat_interleave(n)  # (T*n,)
    position = torch.tensor(plan.frame_positions).repeat_interleave(n)  # (T*n,)
    code = (torch.arange(n) - 1).clamp(min=0).repeat(layout.num_frames)  # (T*n,) raster index; a BOI at 0
    row, col = code // width, code % width
    near_grid = (_distance(row) <= rows_radius) & (_distance(col) <= cols_radius)
    return (slot[:, None] == slot[None, :]) | ((_distance(position) <= frames_radius) & near_grid)


def _full_mask(layout: SequenceLayout, frame_block: torch.Tensor) -> torch.Tensor:
    """(S, S) bool: prefix bidirectional and blind to frames; frames see the prefix and `frame_block`."""
    prefix = layout.prefix_length
    mask = torch.zeros(layout.seq_length, layout.seq_length, dtype=torch.bool)
    mask[:, :prefix] = True
    mask[prefix:, prefix:] = frame_block
    return mask


@functools.lru_cache(maxsize=None)
def stage_masks(layout: SequenceLayout, stage: Stage,
                temporal_window: tuple[int, int, int] | None = None) -> StageMasks:
    """The (S, S) masks of a stage, before text padding. Cached: callers must not modify them."""
    plan = stage.plan(layout)
    spatial = _full_mask(layout, _frame_block(layout, slot_visibility(plan, "spatial")))
    if not stage.is_video:
        return StageMasks(spatial, None)
    frame_block = _frame_block(layout, slot_visibility(plan, "temporal"))
    if temporal_window is not None:
        frame_block &= _local_window(layout, plan, temporal_window)
    temporal = _full_mask(layout, frame_block)
    temporal[:layout.prefix_length] = spatial[:layout.prefix_length]
    return StageMasks(spatial, temporal)


@functools.lru_cache(maxsize=None)
def image_slots_mask(layout: SequenceLayout) -> torch.Tensor:
    """(S, S) bool: every slot an image of its own, seeing the prefix and itself causally, as the image stage's
    spatial mask does for its one slot (an image model decoding several slots side by side). Cached."""
    causal_slots = torch.diag(torch.full((layout.num_frames,), _CAUSAL, dtype=torch.long))
    return _full_mask(layout, _frame_block(layout, causal_slots))


def with_text_padding(rows: torch.Tensor, text_pad: torch.Tensor, query_start: int = 0) -> torch.Tensor:
    """Combine mask rows with the per-sample text padding.

    rows (C, K) bool: rows `query_start .. query_start + C - 1` of a stage mask, keys `0 .. K - 1`;
    text_pad (B, L) bool, True at pad positions. Returns (B, 1, C, K) bool: pad keys masked out, and
    pad queries attending to themselves only (so no row is empty).
    """
    num_queries, num_keys = rows.shape
    batch, text_length = text_pad.shape
    overlap = min(num_keys, text_length)
    key_is_pad = torch.zeros(batch, num_keys, dtype=torch.bool, device=rows.device)
    key_is_pad[:, :overlap] = text_pad[:, :overlap]
    mask = rows[None] & ~key_is_pad[:, None, :]  # (B, C, K)
    query_positions = torch.arange(query_start, query_start + num_queries, device=rows.device)  # (C,)
    in_text = query_positions < text_length
    query_is_pad = text_pad[:, query_positions.clamp(max=text_length - 1)] & in_text[None]  # (B, C)
    self_only = query_positions[:, None] == torch.arange(num_keys, device=rows.device)[None]  # (C, K)
    mask = torch.where(query_is_pad[:, :, None], self_only[None], mask)
    return mask[:, None]  # (B, 1, C, K)
