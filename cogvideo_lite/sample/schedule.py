"""Decoding schedules: which codes each pass of the generator draws, and which positions it feeds.

A pass feeds K query positions at once (each writes its key and value into the static cache) and draws the code after
each query that predicts one. Three modes (`--decode`):

    sequential      one code per pass, in sequence order: the reference, ~700 passes for a tiny 33-frame video.
    exact           every code in the first pass where every position its query can see (stage mask and temporal
                    window) holds its true key: a wavefront over frames under a local temporal window. The same codes
                    as `sequential`, in fewer passes; with full temporal attention it is `sequential`.
    diagonal-R-F    approximate, for any model: within a frame a row starts R codes after the row above it, and a frame
                    starts F rows after the frame before it (ZipAR, He et al. 2024; diagonal decoding, Ye et al.
                    2025). A query sees only what has been drawn when it runs; a row's first code is predicted from
                    the end of the row above, whose code is not drawn yet, so that position is fed a stand-in (the
                    latest code drawn in its frame, as ZipAR does) whose key stays hidden until the true code
                    overwrites it. diagonal-W-H (W, H the grid) is `sequential` again.

Passes per generation call with G generated slots of n = h*w codes (`tests/test_schedule.py` asserts them):
    sequential      G*n
    exact           n + (G - 1)*s when consecutive generated slots are within the window's frame radius, else n, with
                    s = min(rows, h - 1)*w + min(cols, w - 1) + 1 (s = n without a window): a slot's first code waits
                    for the window rows of the slot before, as the BOI query sees them (`model/masks.py`)
    diagonal-R-F    (G - 1)*F*R + (h - 1)*R + w, for R <= w and F*R <= (h - 1)*R + w

Random numbers: every drawn code has its own noise (`order`: its index in the sequential order), so any two modes that
compute the same logits draw the same codes.

Knows sequence layouts and stage masks; does not know the network nor the sampling knobs. Validation of a mode's
text is here (`parse_mode`), for the command line and a bundle's sampling.json.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.masks import stage_masks
from cogvideo_lite.model.stages import Stage

MODE_FORMS = "sequential, exact, or diagonal-R-F (R, F integers >= 1)"
_DIAGONAL = re.compile(r"diagonal-([0-9]+)-([0-9]+)")
_UNSET = np.iinfo(np.int64).max  # a pass not fixed yet


@dataclass(frozen=True)
class DecodeMode:
    """kind: 'sequential', 'exact' or 'diagonal'; row_lag R and frame_lead F for 'diagonal'."""

    kind: str
    row_lag: int = 0
    frame_lead: int = 0

    @property
    def is_exact(self) -> bool:
        """Draws the codes of the sequential order (any order of passes, the same logits)."""
        return self.kind != "diagonal"

    def __str__(self) -> str:
        return f"diagonal-{self.row_lag}-{self.frame_lead}" if self.kind == "diagonal" else self.kind


def parse_mode(text: object) -> DecodeMode:
    """The mode a `--decode` value names; ValueError saying the forms otherwise."""
    if text in ("sequential", "exact"):
        return DecodeMode(str(text))
    match = _DIAGONAL.fullmatch(text) if isinstance(text, str) else None
    if match is None or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(f"decode mode {text!r}: expected {MODE_FORMS}")
    return DecodeMode("diagonal", int(match[1]), int(match[2]))


def is_mode(text: object) -> bool:
    try:
        parse_mode(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Pass:
    """One pass: queries at `positions` (K,), each fed the token at its `sources` entry (the position itself, or where
    a stand-in's token lies); `shown`: the queries holding their true token, made visible before the pass; `draws`:
    indices of the queries whose logits draw a code, `targets` the positions of those codes (query + 1) and `order`
    their indices in the sequential order (their noise)."""

    positions: tuple[int, ...]
    sources: tuple[int, ...]
    shown: tuple[int, ...]
    draws: tuple[int, ...]
    targets: tuple[int, ...]
    order: tuple[int, ...]


@dataclass(frozen=True)
class Schedule:
    passes: tuple[Pass, ...]
    known_length: int  # positions 0 .. known_length - 1 (prefix and given slots) are filled before the first pass

    @property
    def codes(self) -> int:
        return sum(len(step.draws) for step in self.passes)


@functools.lru_cache(maxsize=None)
def schedule(layout: SequenceLayout, stage: Stage, window: tuple[int, int, int] | None, num_given: int,
             mode: DecodeMode) -> Schedule:
    """The passes that fill slots num_given .. T - 1 of `layout` in `stage` for a model with temporal `window`.
    Cached: one schedule per layout, stage, window, given count and mode."""
    if not 0 <= num_given < layout.num_frames:
        raise ValueError(f"{num_given} given slots of {layout.num_frames}: nothing to draw")
    if mode.kind == "diagonal":
        draw_pass = _diagonal_passes(layout, num_given, mode)
        last_written = draw_pass[:, -1] + 1
    else:
        masks = stage_masks(layout, stage, window)
        sees = masks.spatial if masks.temporal is None else masks.spatial | masks.temporal  # either channel
        draw_pass, last_written = _earliest_passes(layout, num_given, sees.numpy(), mode.kind == "sequential")
    return _assemble(layout, num_given, draw_pass, last_written)


# ---------------------------------------------------------------------------------------------------- draw passes
def _code_positions(layout: SequenceLayout, num_given: int) -> np.ndarray:
    """(G, n) positions of the codes to draw, slot by slot in raster order."""
    starts = layout.prefix_length + np.arange(num_given, layout.num_frames) * layout.slot_length + 1
    return starts[:, None] + np.arange(layout.tokens_per_frame)[None]


def _earliest_passes(layout: SequenceLayout, num_given: int, sees: np.ndarray,
                     one_per_pass: bool) -> tuple[np.ndarray, np.ndarray]:
    """(G, n) pass of each code: the first pass where its query's token is drawn and every key the query sees
    (sees (S, S) bool) is written, a key being written in the pass that feeds its position (keys of the same pass
    count); with `one_per_pass`, also after the code before it in sequence order. And (G,) the pass that writes each
    slot's last code, once every key it sees is written."""
    written = np.full(layout.seq_length, _UNSET)
    known = layout.prefix_length + num_given * layout.slot_length
    written[:known] = -1  # the prefill
    draw_pass = np.zeros((layout.num_frames - num_given, layout.tokens_per_frame), dtype=np.int64)
    last_written = np.zeros(layout.num_frames - num_given, dtype=np.int64)
    last = -1
    for slot, codes in enumerate(_code_positions(layout, num_given)):
        token_ready = 0  # the slot's BOI is known
        for index, target in enumerate(codes):
            query = target - 1
            seen = sees[query].copy()
            seen[query] = False  # its own key is written by this very pass
            waits = written[seen].max(initial=-1)
            assert waits != _UNSET, f"position {query} sees a key after it in the generation order"
            draw = max(token_ready, waits, last + 1 if one_per_pass else 0)
            draw_pass[slot, index] = written[query] = draw
            token_ready, last = draw + 1, draw
        seen = sees[codes[-1]].copy()
        seen[codes[-1]] = False
        written[codes[-1]] = last_written[slot] = max(token_ready, written[seen].max(initial=-1))
    return draw_pass, last_written


def _diagonal_passes(layout: SequenceLayout, num_given: int, mode: DecodeMode) -> np.ndarray:
    """(G, n) pass of each code: slot g starts at g*F*R, its code (r, c) R*r + c passes later."""
    height, width = layout.grid
    rows, cols = np.divmod(np.arange(layout.tokens_per_frame), width)
    slots = np.arange(layout.num_frames - num_given)[:, None]
    return slots * mode.frame_lead * mode.row_lag + (rows * mode.row_lag + cols)[None]


# ---------------------------------------------------------------------------------------------------- passes
def _assemble(layout: SequenceLayout, num_given: int, draw_pass: np.ndarray, last_written: np.ndarray) -> Schedule:
    """Passes from each code's draw pass: the query before a code is fed at its draw pass, with its true token when
    that is drawn by then, else a stand-in (then the true token is fed, to write its key, in the pass after its
    draw); each slot's last code is fed at `last_written` (G,) to write its key, unless no pass comes after.
    Passes that draw nothing are dropped, the keys they would write carried to the next pass that draws (nothing
    reads them before)."""
    positions = _code_positions(layout, num_given)
    drawn_at = dict(zip(positions.flat, draw_pass.flat))
    last_pass = int(draw_pass.max())
    queries: dict[int, list[tuple[int, int, int | None]]] = {}  # pass -> (position, source, order of its draw)

    def feed(at: int, position: int, source: int, order: int | None) -> None:
        queries.setdefault(at, []).append((position, source, order))

    for order, (target, at) in enumerate(zip(positions.flat, draw_pass.flat)):
        query, at = int(target) - 1, int(at)
        ready = drawn_at.get(query, -1) + 1  # a BOI is known from the start
        if ready <= at:
            feed(at, query, query, order)
        else:
            slot_codes = positions[(query - layout.prefix_length) // layout.slot_length - num_given]
            latest = max(int(code) for code in slot_codes if drawn_at[code] < at)
            feed(at, query, latest, order)  # a stand-in predicts the code; the true token follows
            feed(ready, query, query, None)
    for codes, at in zip(positions, last_written):
        if at <= last_pass:
            feed(int(at), int(codes[-1]), int(codes[-1]), None)

    passes, carried = [], []
    for at in sorted(queries):
        entries = sorted(carried + queries[at], key=lambda entry: entry[0])
        if all(order is None for _, _, order in entries):
            carried = entries
            continue
        carried = []
        assert len({position for position, _, _ in entries}) == len(entries), f"pass {at} feeds a position twice"
        draws = tuple(index for index, (_, _, order) in enumerate(entries) if order is not None)
        passes.append(Pass(positions=tuple(position for position, _, _ in entries),
                           sources=tuple(source for _, source, _ in entries),
                           shown=tuple(position for position, source, _ in entries if position == source),
                           draws=draws, targets=tuple(entries[index][0] + 1 for index in draws),
                           order=tuple(entries[index][2] for index in draws)))
    return Schedule(tuple(passes), layout.prefix_length + num_given * layout.slot_length)
