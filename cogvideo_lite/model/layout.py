"""The token sequence of the generator: where every token sits and which id it carries.

Sequence: `[text, left-padded to L][fps token]` then, per frame slot, `[BOI][h*w codes]`.
Every slot starts with a BOI token so that the first code of each frame is predicted from a position inside
its own slot: within a slot, position j (BOI = 0, codes 1..n) predicts code j, and the last code's position
predicts nothing. Thus the spatial channel, which sees only the prefix and its own slot, stays a
text-to-image model.

Ids live in one joint vocabulary: text ids and special ids (pad, fps, BOI) below `text_vocab_size`, then
image code c at `image_offset + c`.

This module knows nothing of which ids are special (the text tokenizer decides; the BOI id is passed to
`assemble`), nor of attention or stages. Every derived number (slice of a frame, sequence length, offsets)
is computed here once and read from here; CogVideo instead re-typed `64, 464, 2064` in several places.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


def is_integer(value: object) -> bool:
    """An int, not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: object) -> bool:
    """An integer >= 1."""
    return is_integer(value) and value >= 1


def count_problems(owner: object, names: tuple[str, ...]) -> list[str]:
    """`name=value: expected an integer >= 1` for each field of `owner` that is not a count."""
    return [f"{name}={getattr(owner, name)!r}: expected an integer >= 1" for name in names
            if not is_count(getattr(owner, name))]


@dataclass(frozen=True)
class SequenceLayout:
    """Geometry of one token sequence.

    text_length: L, text positions (left-padded) before the fps token.
    num_frames: T, frame slots in the sequence.
    grid: (h, w), code grid of one frame.
    text_vocab_size: size of the text vocabulary including its special ids.
    codebook_size: number of image codes of the frame tokenizer.
    """

    text_length: int
    num_frames: int
    grid: tuple[int, int]
    text_vocab_size: int
    codebook_size: int

    def __post_init__(self) -> None:
        problems = count_problems(self, ("text_length", "num_frames", "text_vocab_size", "codebook_size"))
        grid = tuple(self.grid) if isinstance(self.grid, (list, tuple)) else self.grid
        if not (isinstance(grid, tuple) and len(grid) == 2 and all(map(is_count, grid))):
            problems.append(f"grid={self.grid!r}: expected two integers (h, w) >= 1")
        if problems:
            raise ValueError("invalid SequenceLayout: " + "; ".join(problems))
        object.__setattr__(self, "grid", grid)  # a YAML list becomes a hashable tuple

    # ---------------------------------------------------------------- derived numbers
    @property
    def prefix_length(self) -> int:
        """Text positions plus the fps token."""
        return self.text_length + 1

    @property
    def fps_position(self) -> int:
        return self.text_length

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def slot_length(self) -> int:
        """BOI plus the codes of one frame."""
        return 1 + self.tokens_per_frame

    @property
    def seq_length(self) -> int:
        return self.prefix_length + self.num_frames * self.slot_length

    @property
    def image_offset(self) -> int:
        """Code c has id `image_offset + c`."""
        return self.text_vocab_size

    @property
    def vocab_size(self) -> int:
        """Joint vocabulary: text and special ids, then image codes."""
        return self.text_vocab_size + self.codebook_size

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.num_frames:
            raise IndexError(f"slot {slot} out of range for a layout of {self.num_frames} frame slots")

    def slot_start(self, slot: int) -> int:
        """Position of slot `slot`'s BOI token."""
        self._check_slot(slot)
        return self.prefix_length + slot * self.slot_length

    def slot_slice(self, slot: int) -> slice:
        """Positions of the whole slot: BOI and codes."""
        start = self.slot_start(slot)
        return slice(start, start + self.slot_length)

    def code_slice(self, slot: int) -> slice:
        """Positions holding slot `slot`'s codes."""
        start = self.slot_start(slot)
        return slice(start + 1, start + self.slot_length)

    def prediction_slice(self, slot: int) -> slice:
        """Positions whose logits predict slot `slot`'s codes (BOI up to the second-to-last code)."""
        start = self.slot_start(slot)
        return slice(start, start + self.tokens_per_frame)

    def prediction_rows(self, slots: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """(len(slots) * tokens_per_frame,) int64 on `device`: the positions whose logits predict the codes of
        `slots`, in slot order (a stage's loss rows)."""
        starts = torch.tensor([self.slot_start(slot) for slot in slots], device=device)
        return (starts[:, None] + torch.arange(self.tokens_per_frame, device=device)).flatten()

    def with_frames(self, num_frames: int) -> SequenceLayout:
        """The same layout with another number of frame slots (the image stage uses 1)."""
        return replace(self, num_frames=num_frames)

    def frames_for_length(self, seq_length: int) -> int:
        """Number of frame slots of a sequence of `seq_length` tokens; error if none fits."""
        frame_tokens = seq_length - self.prefix_length
        if frame_tokens < self.slot_length or frame_tokens % self.slot_length:
            raise ValueError(
                f"sequence length {seq_length} is not prefix {self.prefix_length} + a whole number (>= 1) "
                f"of slots of {self.slot_length} tokens")
        return frame_tokens // self.slot_length

    # ---------------------------------------------------------------- token sequences
    def assemble(self, text_ids: torch.Tensor, fps_ids: torch.Tensor, codes: torch.Tensor,
                 boi_id: int) -> torch.Tensor:
        """Token sequence from its parts.

        text_ids (B, L) int64, left-padded text ids < text_vocab_size; fps_ids (B,) int64;
        codes (B, T, h, w) int64 in [0, codebook_size); boi_id a text-vocabulary special id.
        Returns tokens (B, S) int64.
        """
        batch = text_ids.shape[0]
        self._check_parts(text_ids, fps_ids, codes, boi_id)
        boi = torch.full((batch, self.num_frames, 1), boi_id, dtype=torch.long, device=codes.device)
        frames = torch.cat([boi, codes.reshape(batch, self.num_frames, -1) + self.image_offset], dim=2)  # (B, T, 1+h*w)
        return torch.cat([text_ids.long(), fps_ids.long()[:, None], frames.reshape(batch, -1)], dim=1)  # (B, S)

    def extract_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codes (B, T, h, w) int64 back from tokens (B, S); error if a code position holds a non-code id."""
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_length:
            raise ValueError(f"tokens have shape {tuple(tokens.shape)}, expected (B, {self.seq_length})")
        frames = tokens[:, self.prefix_length:].reshape(tokens.shape[0], self.num_frames, self.slot_length)
        codes = frames[:, :, 1:] - self.image_offset  # (B, T, h*w)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"code positions hold ids outside [{self.image_offset}, {self.vocab_size})")
        return codes.reshape(tokens.shape[0], self.num_frames, *self.grid)

    def _check_parts(self, text_ids: torch.Tensor, fps_ids: torch.Tensor, codes: torch.Tensor,
                     boi_id: int) -> None:
        problems = []
        batch = text_ids.shape[0]
        if tuple(text_ids.shape) != (batch, self.text_length):
            problems.append(f"text_ids shape {tuple(text_ids.shape)}, expected (B, {self.text_length})")
        if tuple(fps_ids.shape) != (batch,):
            problems.append(f"fps_ids shape {tuple(fps_ids.shape)}, expected ({batch},)")
        if tuple(codes.shape) != (batch, self.num_frames, *self.grid):
            problems.append(f"codes shape {tuple(codes.shape)}, expected ({batch}, {self.num_frames}, "
                            f"{self.grid[0]}, {self.grid[1]})")
        for name, ids, limit in (("text_ids", text_ids, self.text_vocab_size),
                                 ("fps_ids", fps_ids, self.text_vocab_size),
                                 ("codes", codes, self.codebook_size)):
            if ids.numel() and (ids.min() < 0 or ids.max() >= limit):
                problems.append(f"{name} hold values outside [0, {limit})")
        if not 0 <= boi_id < self.text_vocab_size:
            problems.append(f"boi_id={boi_id} outside the text vocabulary [0, {self.text_vocab_size})")
        if problems:
            raise ValueError("cannot assemble tokens: " + "; ".join(problems))
