"""Attention rules of the generator's stages: one rule per (layout, stage, channel), read three ways.

Frame-level rules (F full, C causal within the slot, . none) for the TEMPORAL channel:
- keyframe: plain causal over slots: slot f sees slots < f fully and itself causally.
- interpolate: slots hold true frames `[0, 2, 4, 1, 3]` (given frames first, then the generated ones in the
  order they are generated); given slots see each other bidirectionally, generated slots see every given
  slot, earlier generated slots, and themselves causally. Any odd slot count works the same way.
- an optional local window (frames, rows, cols radii) restricts what a frame token sees of OTHER slots: slots within
  `frames` true frames, and there codes within `rows` x `cols` of its own grid position. A BOI stands at row 0,
  column 0, the grid position of the code it predicts: a slot's first code then sees only the first window rows of the
  slots before it, so a frame can start before the one before it ends (exact parallel decoding across frames,
  `sample/schedule.py`).
The SPATIAL channel sees the prefix and its own slot: bidirectionally for given slots, causally otherwise.
Prefix (text + fps token): bidirectional over the non-pad prefix and blind to what follows; frame tokens
see the non-pad prefix in both channels. Pad keys are never attended; a pad query attends to itself only.

A `MaskRule` holds a rule as small per-position tables (slot, true frame, row, column) and a slot-to-slot table, and
answers `allows(query, key)` for any broadcastable positions. Everything else is read from it:
- `stage_masks`: the (S, S) boolean masks (True = may attend), the rule evaluated on every pair; `with_text_padding`
  adds a batch's padding: the dense reference that scaled-dot-product attention takes;
- `slot_blocks`: per run of query rows in one slot, the keys any of them may see (attention that skips the rest);
- `flex_block_tables` + `flex_mask_mod`: FlexAttention's block mask (blocks with nothing visible skipped, blocks
  visible throughout run without a mask) and the per-element rule with the padding of each sample.

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
FLEX_BLOCK = 128  # FlexAttention's default sparse block: queries x keys per tile


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


#################################################################################
#                               The rule as tables                              #
#################################################################################

@dataclass(frozen=True, eq=False)
class MaskRule:
    """One channel's rule over a sequence of S positions.

    slot (S,) int64: the frame slot of each position, T (one past the last slot) for the prefix;
    visibility (T + 1, T + 1) int64: slot-to-slot codes with the prefix as slot T (it sees itself fully, frames see it
    fully, it sees no frame); frame, row, col (S,) int64: true frame index and grid position (a BOI's is that of the
    code it predicts, row 0, column 0; only read under a window); window: (frames, rows, cols) radii or None.
    """

    slot: torch.Tensor
    visibility: torch.Tensor
    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    window: tuple[int, int, int] | None

    def allows(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Bool, broadcast of the int64 positions `query` and `key`: may the query attend to the key (no padding)?"""
        query_slot, key_slot = self.slot[query], self.slot[key]
        code = self.visibility[query_slot, key_slot]
        allowed = (code == _FULL) | ((code == _CAUSAL) & (key <= query))
        if self.window is None:
            return allowed
        frames, rows, cols = self.window
        near_grid = (((self.row[query] - self.row[key]).abs() <= rows)
                     & ((self.col[query] - self.col[key]).abs() <= cols))  # a BOI stands where its code does
        near = ((self.frame[query] - self.frame[key]).abs() <= frames) & near_grid
        prefix = len(self.visibility) - 1
        return allowed & (near | (query_slot == key_slot) | (key_slot == prefix))

    def to(self, device: torch.device) -> MaskRule:
        return MaskRule(*(getattr(self, name).to(device) for name in ("slot", "visibility", "frame", "row", "col")),
                        self.window)


def _rule(layout: SequenceLayout, frame_positions: tuple[int, ...], visibility: torch.Tensor,
          window: tuple[int, int, int] | None) -> MaskRule:
    num_slots, n, width = layout.num_frames, layout.slot_length, layout.grid[1]
    in_prefix = torch.zeros(layout.prefix_length, dtype=torch.long)  # the prefix's (unused) frame, row and column
    code = (torch.arange(n) - 1).clamp(min=0).repeat(num_slots)  # (T*n,): raster index of the code; a BOI at 0
    table = torch.full((num_slots + 1, num_slots + 1), _NONE, dtype=torch.long)
    table[:num_slots, :num_slots] = visibility
    table[:, num_slots] = _FULL  # everything sees the prefix, which sees no frame
    return MaskRule(slot=torch.cat([in_prefix + num_slots, torch.arange(num_slots).repeat_interleave(n)]),
                    visibility=table,
                    frame=torch.cat([in_prefix, torch.tensor(frame_positions).repeat_interleave(n)]),
                    row=torch.cat([in_prefix, code // width]), col=torch.cat([in_prefix, code % width]),
                    window=window)


@functools.lru_cache(maxsize=None)
def stage_rules(layout: SequenceLayout, stage: Stage, temporal_window: tuple[int, int, int] | None = None,
                device: torch.device = torch.device("cpu")) -> dict[str, MaskRule]:
    """The rule of each channel the stage runs (`stage.channels`), its tables on `device`. Cached: do not modify."""
    if device != torch.device("cpu"):
        return {channel: rule.to(device) for channel, rule in stage_rules(layout, stage, temporal_window).items()}
    plan = stage.plan(layout)
    return {channel: _rule(layout, plan.frame_positions, slot_visibility(plan, channel),
                           temporal_window if channel == "temporal" else None) for channel in stage.channels}


#################################################################################
#                       Dense masks and the text padding                        #
#################################################################################

@functools.lru_cache(maxsize=None)
def stage_masks(layout: SequenceLayout, stage: Stage,
                temporal_window: tuple[int, int, int] | None = None) -> StageMasks:
    """The (S, S) masks of a stage, before text padding. Cached: callers must not modify them."""
    positions = torch.arange(layout.seq_length)
    masks = {channel: rule.allows(positions[:, None], positions[None, :])
             for channel, rule in stage_rules(layout, stage, temporal_window).items()}
    return StageMasks(masks["spatial"], masks.get("temporal"))


@functools.lru_cache(maxsize=None)
def image_slots_mask(layout: SequenceLayout) -> torch.Tensor:
    """(S, S) bool: every slot an image of its own, seeing the prefix and itself causally, as the image stage's
    spatial mask does for its one slot (an image model decoding several slots side by side). Cached."""
    causal_slots = torch.diag(torch.full((layout.num_frames,), _CAUSAL, dtype=torch.long))
    rule = _rule(layout, tuple(range(layout.num_frames)), causal_slots, None)
    positions = torch.arange(layout.seq_length)
    return rule.allows(positions[:, None], positions[None, :])


def pad_table(text_pad: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) bool, True at the pad positions of the text (B, L) and False after it."""
    table = torch.zeros(text_pad.shape[0], max(length, text_pad.shape[1]), dtype=torch.bool, device=text_pad.device)
    table[:, :text_pad.shape[1]] = text_pad
    return table[:, :length]


def _padded(allowed: torch.Tensor, query: torch.Tensor, key: torch.Tensor, query_is_pad: torch.Tensor,
            key_is_pad: torch.Tensor) -> torch.Tensor:
    """The padding rule on top of `allowed`: pad keys are hidden, a pad query sees itself only (no row is empty)."""
    return torch.where(query_is_pad, key == query, allowed & ~key_is_pad)


def with_text_padding(rows: torch.Tensor, text_pad: torch.Tensor, query_start: int = 0) -> torch.Tensor:
    """Combine mask rows with the per-sample text padding.

    rows (C, K) bool: rows `query_start .. query_start + C - 1` of a stage mask, keys `0 .. K - 1`;
    text_pad (B, L) bool, True at pad positions. Returns (B, 1, C, K) bool.
    """
    num_queries, num_keys = rows.shape
    query = torch.arange(query_start, query_start + num_queries, device=rows.device)[:, None]  # (C, 1)
    key = torch.arange(num_keys, device=rows.device)[None, :]  # (1, K)
    pads = pad_table(text_pad, max(query_start + num_queries, num_keys))  # (B, N)
    return _padded(rows[None], query, key, pads[:, query], pads[:, key])[:, None]  # (B, 1, C, K)


#################################################################################
#                    Blocks: the keys a run of queries may see                  #
#################################################################################

@functools.lru_cache(maxsize=256)
def slot_blocks(layout: SequenceLayout, stage: Stage, temporal_window: tuple[int, int, int] | None, channel: str,
                query_start: int, stop: int, device: torch.device) -> tuple[tuple[int, int, torch.Tensor | slice], ...]:
    """Rows `query_start .. stop - 1` split where their slot changes; per run (first, last + 1) relative to
    `query_start`, and the keys below `stop` that some row of the run may see, as a slice when they are contiguous,
    else an int64 index on `device`. Keys hidden by text padding are kept here (padding differs per sample)."""
    mask = getattr(stage_masks(layout, stage, temporal_window), channel)[query_start:stop, :stop]
    slots = stage_rules(layout, stage, temporal_window)[channel].slot[query_start:stop]
    edges = [0, *((slots[1:] != slots[:-1]).nonzero()[:, 0] + 1).tolist(), len(slots)]
    blocks = []
    for first, last in zip(edges, edges[1:]):
        keys = mask[first:last].any(0).nonzero()[:, 0]  # never empty: a row sees at least itself
        contiguous = int(keys[-1] - keys[0]) + 1 == len(keys)
        blocks.append((first, last, slice(int(keys[0]), int(keys[-1]) + 1) if contiguous else keys.to(device)))
    return tuple(blocks)


@functools.lru_cache(maxsize=256)
def flex_block_tables(layout: SequenceLayout, stage: Stage, temporal_window: tuple[int, int, int] | None,
                      channel: str, query_start: int, stop: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """FlexAttention's block tables for rows `query_start .. stop - 1` and keys `0 .. stop - 1`, in tiles of
    FLEX_BLOCK x FLEX_BLOCK: (kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices), each (1, 1, ...) int32
    on `device`. A tile with nothing visible is left out; a tile visible throughout is `full` (the kernel skips the
    mask there) unless it holds text rows or keys, where the padding of each sample still applies."""
    mask = getattr(stage_masks(layout, stage, temporal_window), channel)[query_start:stop, :stop]
    rows, keys = -(-mask.shape[0] // FLEX_BLOCK), -(-mask.shape[1] // FLEX_BLOCK)
    tiles = torch.zeros(rows * FLEX_BLOCK, keys * FLEX_BLOCK, dtype=torch.bool)
    tiles[:mask.shape[0], :mask.shape[1]] = mask
    tiles = tiles.view(rows, FLEX_BLOCK, keys, FLEX_BLOCK)  # (query tile, row, key tile, column)
    seen, full = tiles.any(dim=(1, 3)), tiles.all(dim=(1, 3))  # (rows, keys)
    text_rows = query_start + torch.arange(rows) * FLEX_BLOCK < layout.text_length
    text_keys = torch.arange(keys) * FLEX_BLOCK < layout.text_length
    full &= ~text_rows[:, None] & ~text_keys[None, :]
    return (*_ordered(seen & ~full, device), *_ordered(full, device))


def _ordered(tiles: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, keys) bool tiles -> per row the count (1, 1, rows) and the key tiles first (1, 1, rows, keys), int32."""
    indices = torch.argsort((~tiles).to(torch.int8), dim=1, stable=True)
    return (tiles.sum(1).to(device, torch.int32)[None, None], indices.to(device, torch.int32)[None, None])


def flex_mask_mod(rule: MaskRule, text_pad: torch.Tensor, query_start: int):
    """FlexAttention's mask_mod (b, h, q, kv) -> bool for queries counted from `query_start`: the rule and the padding
    of sample b (text_pad (B, L) bool, on the rule's device), read from per-position tables."""
    pads = pad_table(text_pad, len(rule.slot))  # (B, S)

    def mask_mod(b, h, q_idx, kv_idx):
        query = q_idx + query_start
        return _padded(rule.allows(query, kv_idx), query, kv_idx, pads[b, query], pads[b, kv_idx])

    return mask_mod
