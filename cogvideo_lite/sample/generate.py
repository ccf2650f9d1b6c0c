"""Frame generation loops: text-to-image, key frames, and interpolation rounds.

All three share one loop: the known part of the sequence (prefix and given frames) is fed in one pass, then
one code per step, batched over samples; the BOI of each new slot is known and fed with the last code of
the slot before. With classifier-free guidance the unconditional pass (the same tokens with the whole text
masked as padding) rides in the same batch. Random numbers come from one torch.Generator seeded by the sampler's
seed, drawn in the same order with and without the KV cache, so both give identical codes.

A loop takes the model, a `Condition` (what the sequences are conditioned on: text ids, pad mask, rate token, BOI
id), the given frames and a `Sampler` (how codes are drawn: knobs, seed, cache, image expert). Both are checked
where they are made; the per-code loop checks nothing and makes no host synchronisation.

An image expert (`ImageExpert`: another text-to-image export of the same layout, e.g. one trained longer than the
frozen spatial channel the video stages stand on) can join every loop: each code is then drawn from
p_model * p_expert**w (a product of experts; w = `knobs.expert_weight`), the expert seeing the text and the codes of
the slot being filled, as the image stage does.

Knows the generator's forward and the stage registry; does not know text tokenization or the frame tokenizer.
The hierarchy (frame 0 -> key frames -> interpolation 5 -> 9 -> 17 -> 33) is CogVideo's (Hong et al. 2023,
section 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cogvideo_lite.model.cache import KVCache
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, Stage, interpolation_positions
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.sample.knobs import SamplingKnobs, guided_logits, sample_token


@dataclass(frozen=True)
class Condition:
    """What every sequence of a batch is conditioned on: text_ids (B, L) int64, left-padded; text_pad (B, L) bool,
    True at pads; fps_ids (B,) int64, the rate token; boi_id, the text model's begin-of-image id."""

    text_ids: torch.Tensor
    text_pad: torch.Tensor
    fps_ids: torch.Tensor
    boi_id: int

    def rows(self, index: torch.Tensor) -> Condition:
        """The condition of the rows `index` (B',) of the batch."""
        return Condition(self.text_ids[index], self.text_pad[index], self.fps_ids[index], self.boi_id)

    def with_rate(self, fps_id: int) -> Condition:
        """The same texts with every row's rate token `fps_id`."""
        return Condition(self.text_ids, self.text_pad, torch.full_like(self.fps_ids, fps_id), self.boi_id)


@dataclass(frozen=True)
class Sampler:
    """How codes are drawn: the knobs, the seed of the loop's torch.Generator, cached (fast) or uncached (the
    reference) decoding, and the image expert that joins where knobs.expert_weight > 0."""

    knobs: SamplingKnobs
    seed: int = 0
    use_cache: bool = True
    expert: Generator | None = None

    def __post_init__(self) -> None:
        if self.knobs.expert_weight > 0 and self.expert is None:
            raise ValueError(f"expert_weight={self.knobs.expert_weight}: no image expert was given to join")


class ImageExpert:
    """An image-stage model that scores the codes of one slot at a time: `begin` feeds the text, rate token and BOI
    and returns its logits for the slot's first code; `advance` feeds one code and returns the logits for the next.
    Its KV cache holds one slot and is started afresh for every slot."""

    def __init__(self, model: Generator, layout: SequenceLayout) -> None:
        if model.training:
            raise ValueError("call expert.eval() before generating (dropout would make sampling differ)")
        if (model.layout.text_length, model.layout.grid, model.layout.vocab_size) != (
                layout.text_length, layout.grid, layout.vocab_size):
            raise ValueError(f"image expert: its layout (text {model.layout.text_length}, grid {model.layout.grid}, "
                             f"vocabulary {model.layout.vocab_size}) differs from the model's (text "
                             f"{layout.text_length}, grid {layout.grid}, vocabulary {layout.vocab_size})")
        self.model = model
        self.cache: KVCache | None = None
        self.text_pad: torch.Tensor | None = None

    def begin(self, prefix: torch.Tensor, text_pad: torch.Tensor, boi: torch.Tensor) -> torch.Tensor:
        """prefix (B, L + 1) text and rate ids, boi (B, 1) -> logits (B, V) of the slot's first code."""
        self.cache, self.text_pad = self.model.new_cache(prefix.shape[0], 1, IMAGE), text_pad
        return self.model(torch.cat([prefix, boi], dim=1), text_pad, IMAGE, cache=self.cache)[:, -1]

    def advance(self, token: torch.Tensor) -> torch.Tensor:
        """token (B,) joint-vocabulary id of the code just drawn -> logits (B, V) of the next code."""
        return self.model(token[:, None], self.text_pad, IMAGE, cache=self.cache)[:, -1]


def generate_image(model: Generator, condition: Condition, sampler: Sampler) -> torch.Tensor:
    """Frame 0 from text with the spatial channel alone. Returns codes (B, 1, h, w) int64."""
    no_frames = torch.zeros(condition.text_ids.shape[0], 0, *model.layout.grid, dtype=torch.long,
                            device=condition.text_ids.device)
    return _generate(model, model.layout.with_frames(1), IMAGE, condition, no_frames, sampler)


def generate_keyframes(model: Generator, condition: Condition, given: torch.Tensor, sampler: Sampler,
                       num_frames: int | None = None) -> torch.Tensor:
    """Key frames after the given ones (B, k, h, w), 0 <= k < num_frames (default: the model's layout; k = 0: frame 0
    too, for a model trained with `learn_first_frame`). Returns codes (B, num_frames, h, w); the first k are given."""
    num_frames = model.layout.num_frames if num_frames is None else num_frames
    if not 0 <= given.shape[1] < num_frames:
        raise ValueError(f"generate_keyframes: {given.shape[1]} given frames for num_frames={num_frames}; "
                         "expected 0 <= given < num_frames")
    return _generate(model, model.layout.with_frames(num_frames), KEYFRAME, condition, given, sampler)


def interpolate(model: Generator, condition: Condition, frames: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """One interpolation round: frames (B, T, h, w) -> (B, 2T - 1, h, w), the given codes unchanged.

    The model's layout has W (odd) slots: each group of g = (W + 1) / 2 consecutive frames (overlapping by
    one; triplets for W = 5) becomes true frames 0, 2, .., W - 1 and the frames between are generated.
    All groups of all samples form one batch. The condition's rate token is that of the result.
    """
    window = len(INTERPOLATE.plan(model.layout).frame_positions)  # validates: odd, >= 3
    group = (window + 1) // 2
    batch, num_frames = frames.shape[:2]
    if num_frames < group or (num_frames - 1) % (group - 1):
        raise ValueError(f"interpolate: {num_frames} frames cannot be cut into groups of {group} overlapping "
                         f"by one (the model's layout has {window} slots); expected 1 + n*{group - 1} frames")
    num_groups = (num_frames - 1) // (group - 1)
    starts = torch.arange(num_groups, device=frames.device) * (group - 1)
    indices = starts[:, None] + torch.arange(group, device=frames.device)[None]  # (n, g)
    groups = frames[:, indices].flatten(0, 1)  # (B*n, g, h, w)
    rows = torch.arange(batch, device=frames.device).repeat_interleave(num_groups)  # (B*n,) each group's sample
    slots = _generate(model, model.layout, INTERPOLATE, condition.rows(rows), groups, sampler)  # (B*n, W, h, w)
    in_time = torch.empty_like(slots)
    in_time[:, list(interpolation_positions(window))] = slots  # (B*n, W, h, w) in true frame order
    in_time = in_time.unflatten(0, (batch, num_groups))  # (B, n, W, h, w)
    return torch.cat([in_time[:, :, :-1].flatten(1, 2), in_time[:, -1, -1:]], dim=1)  # (B, 2T - 1, h, w)


@torch.no_grad()
def _generate(model: Generator, layout: SequenceLayout, stage: Stage, condition: Condition, given: torch.Tensor,
              sampler: Sampler) -> torch.Tensor:
    """Fill the slots after the `given` ones (B, k, h, w). Returns codes (B, T, h, w)."""
    if model.training:
        raise ValueError("call model.eval() before generating (dropout would make sampling differ)")
    knobs = sampler.knobs
    scorer = ImageExpert(sampler.expert, layout) if knobs.expert_weight > 0 else None
    batch, num_given = given.shape[:2]
    guided = knobs.guidance_scale != 1
    placeholder = torch.zeros(batch, 1, *layout.grid, dtype=torch.long, device=given.device)
    known = layout.with_frames(max(num_given, 1)).assemble(  # validates every part
        condition.text_ids, condition.fps_ids, given if num_given else placeholder, condition.boi_id)
    known = known[:, :layout.prefix_length + num_given * layout.slot_length]
    boi = known.new_full((batch, 1), condition.boi_id)
    sequence, text_pad = torch.cat([known, boi], dim=1), condition.text_pad  # (B, P + 1)
    if guided:  # the unconditional pass sees no text at all
        sequence, text_pad = sequence.repeat(2, 1), torch.cat([text_pad, torch.ones_like(text_pad)])
    cache = model.new_cache(sequence.shape[0], layout.num_frames, stage) if sampler.use_cache else None
    generator = torch.Generator(device=sequence.device).manual_seed(sampler.seed)
    num_new = sequence.shape[1]
    for slot in range(num_given, layout.num_frames):
        if scorer is not None:
            expert_logits = scorer.begin(known[:, :layout.prefix_length], text_pad[:batch], boi)
        for index in range(layout.tokens_per_frame):
            logits = _next_logits(model, layout, stage, sequence, num_new, text_pad, cache)  # (B or 2B, V)
            if guided:
                logits = guided_logits(logits[:batch], logits[batch:], knobs.guidance_scale)
            if scorer is not None:  # log p_model + w log p_expert, up to a constant per row
                logits = logits.log_softmax(-1) + knobs.expert_weight * expert_logits.log_softmax(-1)
            code = sample_token(logits, knobs, generator)  # (B,)
            if scorer is not None and index < layout.tokens_per_frame - 1:
                expert_logits = scorer.advance(code + layout.image_offset)
            new = [code + layout.image_offset]
            if index == layout.tokens_per_frame - 1 and slot < layout.num_frames - 1:
                new.append(boi[:, 0])  # the next slot begins
            new_tokens = torch.stack(new, dim=1).repeat(2 if guided else 1, 1)
            sequence, num_new = torch.cat([sequence, new_tokens], dim=1), new_tokens.shape[1]
    return layout.extract_codes(sequence[:batch])


def _next_logits(model: Generator, layout: SequenceLayout, stage: Stage, sequence: torch.Tensor, num_new: int,
                 text_pad: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits (B, V) at the last position of `sequence` (B, C). Cached: feed the `num_new` newest tokens.
    Uncached: run the whole sequence, padded with filler tokens that the last position cannot see."""
    if cache is not None:
        return model(sequence[:, -num_new:], text_pad, stage, cache=cache)[:, -1]
    filler = sequence.new_zeros(sequence.shape[0], layout.seq_length - sequence.shape[1])
    return model(torch.cat([sequence, filler], dim=1), text_pad, stage)[:, sequence.shape[1] - 1]
