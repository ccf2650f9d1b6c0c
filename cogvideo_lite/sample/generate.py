"""Frame generation loops: text-to-image, key frames, and interpolation rounds.

All three share one loop: the known part of the sequence (prefix and given frames) is fed in one pass (the prefill),
then the passes of a `schedule.Schedule`, batched over samples: each pass feeds some query positions and draws the
code after each query that predicts one (one code per pass in `sequential` order, several frames and rows per pass in
`exact` and `diagonal` modes). With classifier-free guidance the unconditional pass (the same tokens with the whole
text masked as padding) rides in the same batch. Each code has its own random numbers (`knobs.code_noise`, drawn from
the sampler's seeded torch.Generator in the sequential order of the codes), so every exact mode draws the same codes,
with and without the KV cache.

Cached passes run `Generator.decode` over a static `KVCache` (static shapes, no host synchronisation); uncached
passes, the reference, rerun the whole sequence (`Generator.forward`) for exact modes.

A loop takes the model, a `Condition` (what the sequences are conditioned on: text ids, pad mask, rate token, BOI
id), the given frames and a `Sampler` (how codes are drawn: knobs, decode mode, seed, cache, image expert). Both are
checked where they are made; the per-pass loop checks nothing and makes no host synchronisation.

An image expert (another text-to-image export of the same layout, e.g. one trained longer than the frozen spatial
channel the video stages stand on) can join every loop: each code is then drawn from p_model * p_expert**w (a product
of experts; w = `knobs.expert_weight`), the expert seeing the text and the codes of the slot being filled, as the image
stage does. It decodes the generated slots side by side, each as its own image, with the same passes.

Knows the generator's forward and decode, the stage registry and the schedules; does not know text tokenization or
the frame tokenizer. The hierarchy (frame 0 -> key frames -> interpolation 5 -> 9 -> 17 -> 33) is CogVideo's
(Hong et al. 2023, section 3.1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cogvideo_lite.model.cache import KVCache
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, Stage, interpolation_positions
from cogvideo_lite.model.transformer import DecodeTables, Generator
from cogvideo_lite.sample.knobs import SamplingKnobs, code_noise, guided_logits, is_greedy, sample_token
from cogvideo_lite.sample.schedule import Pass, parse_mode, schedule

logger = logging.getLogger(__name__)

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
    """How codes are drawn: the knobs (decode mode included), the seed of the loop's torch.Generator, cached (fast) or
    uncached (the reference, exact modes only) decoding, the image expert that joins where knobs.expert_weight > 0,
    and whether cached passes on a CUDA device run as captured CUDA graphs (`_GraphedDecode`)."""

    knobs: SamplingKnobs
    seed: int = 0
    use_cache: bool = True
    expert: Generator | None = None
    cuda_graphs: bool = True  # on a CUDA device, replay each cached pass as a captured graph

    def __post_init__(self) -> None:
        if self.knobs.expert_weight > 0 and self.expert is None:
            raise ValueError(f"expert_weight={self.knobs.expert_weight}: no image expert was given to join")
        if not self.use_cache and not parse_mode(self.knobs.decode).is_exact:
            raise ValueError(f"decode mode {self.knobs.decode}: an approximate mode decodes through the KV cache "
                             "only (what a query saw depends on when it ran); use an exact mode without the cache")


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
    if model.training or (sampler.expert is not None and sampler.expert.training):
        raise ValueError("call model.eval() (and expert.eval()) before generating (dropout would make sampling differ)")
    knobs = sampler.knobs
    batch, num_given = given.shape[:2]
    plan = schedule(layout, stage, model.config.temporal_window, num_given, parse_mode(knobs.decode))
    unknown = given.new_zeros(batch, layout.num_frames - num_given, *layout.grid)  # filler until drawn
    tokens = layout.assemble(condition.text_ids, condition.fps_ids, torch.cat([given, unknown], dim=1),
                             condition.boi_id)  # (B, S), validates every part; every BOI in place
    text_pad, guided = condition.text_pad, knobs.guidance_scale != 1
    if guided:  # the unconditional pass sees no text at all
        tokens, text_pad = tokens.repeat(2, 1), torch.cat([text_pad, torch.ones_like(text_pad)])
    graphs = sampler.use_cache and sampler.cuda_graphs and tokens.device.type == "cuda"
    width = max(len(step.positions) for step in plan.passes) if graphs else None  # one query count: one graph
    passes = [_PassTensors.of(step, tokens.device, width) for step in plan.passes]
    first = passes[0] if graphs else None  # the pass the CUDA graphs are captured on
    if sampler.use_cache:
        decoder = _CachedPasses(model, model.decode_tables(layout, stage, tokens.device), tokens, text_pad,
                                plan.known_length, 0, first)
    else:
        decoder = _UncachedDecoder(model, stage, text_pad)
    expert = None if knobs.expert_weight == 0 else _expert_passes(sampler, layout, num_given, tokens,
                                                                  text_pad[:batch], first)
    noise = None if is_greedy(knobs) else _Noise(sampler.seed, batch, layout.codebook_size, tokens.device)
    for step, on_device in zip(plan.passes, passes):
        logits = decoder.logits(tokens, on_device)  # (B or 2B, D, V) for the D codes the pass draws
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if guided:
            logits = guided_logits(logits[:batch], logits[batch:], knobs.guidance_scale)
        if expert is not None:  # log p_model + w log p_expert, up to a constant per row
            logits = logits.log_softmax(-1) + knobs.expert_weight * expert.logits(tokens, on_device).log_softmax(-1)
        codes = sample_token(logits.flatten(0, 1), knobs, None if noise is None else noise.take(step.order))
        new = codes.view(batch, -1) + layout.image_offset  # (B, D)
        tokens.index_copy_(1, on_device.targets, new.repeat(2, 1) if guided else new)
    return layout.extract_codes(tokens[:batch])


@dataclass(frozen=True)
class _PassTensors:
    """A `schedule.Pass` as int64 tensors on the device, made before the loop. Padded to `width` queries (for one
    captured graph) by repeating the last query: it writes the same key and value to the same position again."""

    positions: torch.Tensor  # (K,)
    sources: torch.Tensor  # (K,)
    shown: torch.Tensor  # (K',)
    draws: torch.Tensor | None  # (D,) indices into the K queries; None when every query draws
    draw_positions: torch.Tensor  # (D,)
    targets: torch.Tensor  # (D,)
    key_limit: int | None  # the last query position + 1 (no query sees further); None for a captured graph

    @classmethod
    def of(cls, step: Pass, device: torch.device, width: int | None = None) -> _PassTensors:
        padding = 0 if width is None else width - len(step.positions)
        lists = (step.positions + step.positions[-1:] * padding, step.sources + step.sources[-1:] * padding,
                 step.shown, step.draws, tuple(step.positions[index] for index in step.draws), step.targets)
        flat = torch.tensor([value for values in lists for value in values], dtype=torch.long, device=device)
        positions, sources, shown, draws, draw_positions, targets = flat.split([len(values) for values in lists])
        return cls(positions, sources, shown, None if len(step.draws) == len(positions) else draws,
                   draw_positions, targets, None if width is not None else max(step.positions) + 1)


class _Noise:
    """Each code's noise (`code_noise`, (B, V)), drawn from a generator seeded with `seed` in the sequential order of
    the codes, on first use, and dropped once used: the numbers the one-code-per-pass sampler (and torch.multinomial
    before it) draws, in any order of passes."""

    def __init__(self, seed: int, rows: int, vocab_size: int, device: torch.device) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.rows, self.vocab_size = rows, vocab_size
        self.waiting: dict[int, torch.Tensor] = {}  # drawn, not used yet
        self.drawn = 0

    def take(self, order: tuple[int, ...]) -> torch.Tensor:
        """The noise of the codes with these sequential indices, (B * D, V) row-major like the pass's logits."""
        for index in range(self.drawn, max(order) + 1):
            self.waiting[index] = code_noise(self.rows, self.vocab_size, self.generator)
        self.drawn = max(self.drawn, max(order) + 1)
        return torch.stack([self.waiting.pop(index) for index in order], dim=1).flatten(0, 1)


class _CachedPasses:
    """A model's passes through `Generator.decode` over a static KV cache, after a prefill of positions
    0 .. known_length - 1. The cache holds the first rows of the batch (all of them, or for the image expert the
    conditional rows of a guided batch), and a position of the sampled sequence is `offset` further on than in the
    cached model's own sequence (0, or for the expert the given slots it leaves out)."""

    def __init__(self, model: Generator, tables: DecodeTables, tokens: torch.Tensor, text_pad: torch.Tensor,
                 known_length: int, offset: int, graph_first: _PassTensors | None) -> None:
        self.cache, self.offset = model.new_cache(tables, text_pad), offset
        _prefill(model, self.cache, tables, tokens, known_length)
        self.step = _decoder(model, self.cache, tables, tokens, graph_first, offset)

    def logits(self, tokens: torch.Tensor, step: _PassTensors) -> torch.Tensor:
        rows = self.cache.visible.shape[0]
        self.cache.show(step.shown - self.offset)
        logits = self.step(tokens[:rows].index_select(1, step.sources), step.positions - self.offset,
                           None if step.key_limit is None else step.key_limit - self.offset)
        return logits if step.draws is None else logits.index_select(1, step.draws)  # (B, D, V)


class _UncachedDecoder:
    """The model's passes as whole-sequence forwards (the reference): positions not drawn yet hold filler, which no
    query of an exact schedule can see."""

    def __init__(self, model: Generator, stage: Stage, text_pad: torch.Tensor) -> None:
        self.model, self.stage, self.text_pad = model, stage, text_pad

    def logits(self, tokens: torch.Tensor, step: _PassTensors) -> torch.Tensor:
        return self.model(tokens, self.text_pad, self.stage, step.draw_positions)  # (B, D, V)


def _expert_passes(sampler: Sampler, layout: SequenceLayout, num_given: int, tokens: torch.Tensor,
                   text_pad: torch.Tensor, graph_first: _PassTensors | None) -> _CachedPasses | _UncachedExpert:
    """The image expert over the generated slots side by side: its sequence is the prefix and those slots, each seen
    as an image of its own, so a position of the model's sequence is the given slots further on than in the
    expert's. text_pad (B, L): the conditional rows only."""
    expert = sampler.expert
    if (expert.layout.text_length, expert.layout.grid, expert.layout.vocab_size) != (
            layout.text_length, layout.grid, layout.vocab_size):
        raise ValueError(f"image expert: its layout (text {expert.layout.text_length}, grid {expert.layout.grid}, "
                         f"vocabulary {expert.layout.vocab_size}) differs from the model's (text "
                         f"{layout.text_length}, grid {layout.grid}, vocabulary {layout.vocab_size})")
    if not sampler.use_cache:
        return _UncachedExpert(expert, layout, text_pad)
    tables = expert.image_slot_tables(layout.with_frames(layout.num_frames - num_given), tokens.device)
    return _CachedPasses(expert, tables, tokens, text_pad, layout.prefix_length, num_given * layout.slot_length,
                         graph_first)


class _UncachedExpert:
    """The image expert on whole image sequences (the reference): for each code to draw, the prefix and its slot."""

    def __init__(self, expert: Generator, layout: SequenceLayout, text_pad: torch.Tensor) -> None:
        self.expert, self.layout, self.text_pad = expert, layout, text_pad

    def logits(self, tokens: torch.Tensor, step: _PassTensors) -> torch.Tensor:
        layout, batch = self.layout, self.text_pad.shape[0]
        prefix, slot_length = layout.prefix_length, layout.slot_length
        within = (step.draw_positions - prefix) % slot_length  # (D,) the query's place in its slot
        slot_start = step.draw_positions - within
        columns = torch.cat([torch.arange(prefix, device=tokens.device).expand(len(within), -1),
                             slot_start[:, None] + torch.arange(slot_length, device=tokens.device)], dim=1)
        images = tokens[:batch, columns].flatten(0, 1)  # (B * D, prefix + slot)
        logits = self.expert(images, self.text_pad.repeat_interleave(len(within), 0), IMAGE)
        rows = torch.arange(images.shape[0], device=tokens.device)
        return logits[rows, prefix + within.repeat(batch)].view(batch, len(within), -1)  # (B, D, V)


def _decoder(model: Generator, cache: KVCache, tables: DecodeTables, tokens: torch.Tensor,
             graph_first: _PassTensors | None, offset: int) -> Callable[..., torch.Tensor]:
    """(tokens (B, K), positions (K,), key limit) -> logits (B, K, V) of one pass: `Generator.decode`, or its CUDA graph
    captured on the first pass (`graph_first`, positions `offset` further on than the model's); eager where capture
    fails."""
    def eager(step_tokens: torch.Tensor, positions: torch.Tensor, key_limit: int | None) -> torch.Tensor:
        return model.decode(step_tokens, positions, cache, tables, key_limit=key_limit)

    if graph_first is None:
        return eager
    try:
        return _GraphedDecode(eager, tokens[:cache.visible.shape[0]].index_select(1, graph_first.sources),
                              graph_first.positions - offset)
    except RuntimeError as error:  # e.g. an operation CUDA graphs cannot hold on this build
        logger.warning("CUDA graph capture failed (%s); decoding eagerly", error)
        return eager


class _GraphedDecode:
    """One pass of fixed shapes (all S keys) captured as a CUDA graph: every launch of a pass in one replay (LlamaGen
    and gpt-fast get the same through torch.compile's "reduce-overhead"). The inputs are copied into the graph's own
    buffers; the cache and tables stay at their addresses, so each replay writes and reads the live cache. Captured
    with the first pass's inputs: the capture's writes into the cache are the first replay's writes."""

    def __init__(self, decode: Callable[..., torch.Tensor], tokens: torch.Tensor, positions: torch.Tensor) -> None:
        self.tokens, self.positions = tokens.clone(), positions.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (kernel selection, workspace allocation)
            decode(self.tokens, self.positions, None)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decode(self.tokens, self.positions, None)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, key_limit: None) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.graph.replay()
        return self.logits  # overwritten by the next replay: read it before


def _prefill(model: Generator, cache: KVCache, tables: DecodeTables, tokens: torch.Tensor, length: int) -> None:
    """Feed positions 0 .. length - 1 (prefix and given slots) in one pass, all visible to each other."""
    positions = torch.arange(length, device=tokens.device)
    cache.show(positions)
    model.decode(tokens[:cache.visible.shape[0], :length], positions, cache, tables, model.layout.prefix_length,
                 key_limit=length)
