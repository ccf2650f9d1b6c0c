"""Frame generation loops: text-to-image, key frames, and interpolation rounds.

All three share one loop: the known part of the sequence (prefix and given frames) is fed in one pass, then
one code per step, batched over samples; the BOI of each new slot is known and fed with the last code of
the slot before. With classifier-free guidance the unconditional pass (the same tokens with the whole text
masked as padding) rides in the same batch. Random numbers come from one torch.Generator seeded by `seed`,
drawn in the same order with and without the KV cache, so both give identical codes.

An image expert (`ImageExpert`: another text-to-image export of the same layout, e.g. one trained longer than the
frozen spatial channel the video stages stand on) can join every loop: each code is then drawn from
p_model * p_expert**w (a product of experts; w = `knobs.expert_weight`), the expert seeing the text and the codes of
the slot being filled, as the image stage does.

Knows the generator's forward and the stage rules; does not know text tokenization or the frame tokenizer:
callers pass text ids, pad mask, fps ids and the BOI id. The hierarchy (frame 0 -> key frames ->
interpolation 5 -> 9 -> 17 -> 33) is CogVideo's (Hong et al. 2023, section 3.1).
"""

from __future__ import annotations

import torch

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.cache import KVCache
from cogvideo_lite.model.masks import interpolation_positions, stage_plan
from cogvideo_lite.sample.knobs import SamplingKnobs, guided_logits, sample_token
from cogvideo_lite.model.transformer import Generator


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
        self.cache, self.text_pad = self.model.new_cache(prefix.shape[0], 1, "image"), text_pad
        return self.model(torch.cat([prefix, boi], dim=1), text_pad, "image", cache=self.cache)[:, -1]

    def advance(self, token: torch.Tensor) -> torch.Tensor:
        """token (B,) joint-vocabulary id of the code just drawn -> logits (B, V) of the next code."""
        return self.model(token[:, None], self.text_pad, "image", cache=self.cache)[:, -1]


def generate_image(model: Generator, text_ids: torch.Tensor, text_pad: torch.Tensor, fps_ids: torch.Tensor,
                   boi_id: int, knobs: SamplingKnobs, seed: int, use_cache: bool = True,
                   expert: Generator | None = None) -> torch.Tensor:
    """Frame 0 from text with the spatial channel alone. text_ids (B, L), text_pad (B, L) bool, fps_ids (B,).
    Returns codes (B, 1, h, w) int64."""
    height, width = model.layout.grid
    no_frames = torch.zeros(text_ids.shape[0], 0, height, width, dtype=torch.long, device=text_ids.device)
    return _generate(model, model.layout.with_frames(1), "image", text_ids, text_pad, fps_ids, boi_id,
                     no_frames, knobs, seed, use_cache, expert)


def generate_keyframes(model: Generator, text_ids: torch.Tensor, text_pad: torch.Tensor, fps_ids: torch.Tensor,
                       boi_id: int, first_frame_codes: torch.Tensor, num_frames: int, knobs: SamplingKnobs,
                       seed: int, use_cache: bool = True, expert: Generator | None = None) -> torch.Tensor:
    """Key frames after the given ones. first_frame_codes (B, k, h, w) with 0 <= k < num_frames (k = 0: frame 0 too,
    for a model trained with `learn_first_frame`). Returns codes (B, num_frames, h, w); the first k are the given.
    expert: an image-stage model joined with weight `knobs.expert_weight` (used only when that is > 0)."""
    given = first_frame_codes.shape[1]
    if not 0 <= given < num_frames:
        raise ValueError(f"generate_keyframes: {given} given frames for num_frames={num_frames}; "
                         "expected 0 <= given < num_frames")
    return _generate(model, model.layout.with_frames(num_frames), "keyframe", text_ids, text_pad, fps_ids,
                     boi_id, first_frame_codes, knobs, seed, use_cache, expert)


def interpolate(model: Generator, text_ids: torch.Tensor, text_pad: torch.Tensor, fps_ids: torch.Tensor,
                boi_id: int, frames: torch.Tensor, knobs: SamplingKnobs, seed: int,
                use_cache: bool = True, expert: Generator | None = None) -> torch.Tensor:
    """One interpolation round: frames (B, T, h, w) -> (B, 2T - 1, h, w), the given codes unchanged.

    The model's layout has W (odd) slots: each group of g = (W + 1) / 2 consecutive frames (overlapping by
    one; triplets for W = 5) becomes true frames 0, 2, .., W - 1 and the frames between are generated.
    All groups of all samples form one batch. fps_ids is the frame rate of the result.
    """
    window = len(stage_plan(model.layout, "interpolate").frame_positions)  # validates: odd, >= 3
    group = (window + 1) // 2
    batch, num_frames = frames.shape[:2]
    if num_frames < group or (num_frames - 1) % (group - 1):
        raise ValueError(f"interpolate: {num_frames} frames cannot be cut into groups of {group} overlapping "
                         f"by one (the model's layout has {window} slots); expected 1 + n*{group - 1} frames")
    num_groups = (num_frames - 1) // (group - 1)
    starts = torch.arange(num_groups, device=frames.device) * (group - 1)
    indices = starts[:, None] + torch.arange(group, device=frames.device)[None]  # (n, g)
    groups = frames[:, indices].flatten(0, 1)  # (B*n, g, h, w)
    text_ids, text_pad, fps_ids = (part.repeat_interleave(num_groups, dim=0) for part in (text_ids, text_pad, fps_ids))
    slots = _generate(model, model.layout, "interpolate", text_ids, text_pad, fps_ids, boi_id, groups, knobs, seed,
                      use_cache, expert)  # (B*n, W, h, w) in slot order
    in_time = torch.empty_like(slots)
    in_time[:, list(interpolation_positions(window))] = slots  # (B*n, W, h, w) in true frame order
    in_time = in_time.unflatten(0, (batch, num_groups))  # (B, n, W, h, w)
    return torch.cat([in_time[:, :, :-1].flatten(1, 2), in_time[:, -1, -1:]], dim=1)  # (B, 2T - 1, h, w)


@torch.no_grad()
def _generate(model: Generator, layout: SequenceLayout, stage: str, text_ids: torch.Tensor,
              text_pad: torch.Tensor, fps_ids: torch.Tensor, boi_id: int, given: torch.Tensor,
              knobs: SamplingKnobs, seed: int, use_cache: bool, expert: Generator | None = None) -> torch.Tensor:
    """Fill the slots after the `given` ones (B, k, h, w). Returns codes (B, T, h, w)."""
    if model.training:
        raise ValueError("call model.eval() before generating (dropout would make sampling differ)")
    if knobs.expert_weight > 0 and expert is None:
        raise ValueError(f"expert_weight={knobs.expert_weight}: no image expert was given to join")
    scorer = ImageExpert(expert, layout) if knobs.expert_weight > 0 else None
    batch, num_given = given.shape[:2]
    guided = knobs.guidance_scale != 1
    placeholder = torch.zeros(batch, 1, *layout.grid, dtype=torch.long, device=given.device)
    known = layout.with_frames(max(num_given, 1)).assemble(  # validates every part
        text_ids, fps_ids, given if num_given else placeholder, boi_id)
    known = known[:, :layout.prefix_length + num_given * layout.slot_length]
    boi = known.new_full((batch, 1), boi_id)
    sequence = torch.cat([known, boi], dim=1)  # (B, P + 1)
    if guided:  # the unconditional pass sees no text at all
        sequence, text_pad = sequence.repeat(2, 1), torch.cat([text_pad, torch.ones_like(text_pad)])
    cache = model.new_cache(sequence.shape[0], layout.num_frames, stage) if use_cache else None
    generator = torch.Generator(device=sequence.device).manual_seed(seed)
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
            code = sample_token(logits, knobs.temperature, knobs.top_k, knobs.top_p, generator)  # (B,)
            if scorer is not None and index < layout.tokens_per_frame - 1:
                expert_logits = scorer.advance(code + layout.image_offset)
            new = [code + layout.image_offset]
            if index == layout.tokens_per_frame - 1 and slot < layout.num_frames - 1:
                new.append(boi[:, 0])  # the next slot begins
            new_tokens = torch.stack(new, dim=1).repeat(2 if guided else 1, 1)
            sequence, num_new = torch.cat([sequence, new_tokens], dim=1), new_tokens.shape[1]
    return layout.extract_codes(sequence[:batch])


def _next_logits(model: Generator, layout: SequenceLayout, stage: str, sequence: torch.Tensor, num_new: int,
                 text_pad: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits (B, V) at the last position of `sequence` (B, C). Cached: feed the `num_new` newest tokens.
    Uncached: run the whole sequence, padded with filler tokens that the last position cannot see."""
    if cache is not None:
        return model(sequence[:, -num_new:], text_pad, stage, cache=cache)[:, -1]
    filler = sequence.new_zeros(sequence.shape[0], layout.seq_length - sequence.shape[1])
    return model(torch.cat([sequence, filler], dim=1), text_pad, stage)[:, sequence.shape[1] - 1]
