"""The sampling pipeline: prompt -> frame 0 -> key frames -> interpolation rounds -> decoded video.

`Pipeline.load(bundle)` checks the bundle's contracts (`bundle/parts.py`) and builds the frame tokenizer, the text
tokenizer and the three generator stages. `generate_videos` runs CogVideo's hierarchy (Hong et al. 2023,
section 3.1) for every (prompt, sample) pair of a `Request`, in batches:

    frame 0        image model, spatial channel alone          fps token of the key-frame rate r
                   (or the key-frame model, when it was trained with `learn_first_frame`)
    frames 1..T-1  key-frame model (T = its layout, 5)          fps token r
    round k        interpolation model, every triplet at once   fps token r * 2**k (the round's OUTPUT rate)
    decode         frame tokenizer, all frames of the batch

matching how the stages were trained (`train/generator_task.py`): key-frame clips carry the fps token of their
rate, interpolation clips the token of the rate they produce, the image stage the token of its clip.

Seeds: pairs are ordered prompt by prompt, sample by sample, and cut into batches of `batch_size`; each step of
batch b draws from its own generator seeded by `derive_seed(seed, b, step)` (step 0 image, 1 key frames, 2 + k
interpolation round k). The same arguments (batch size included) give the same videos; the key frames do not
depend on the number of rounds, so a video with more rounds keeps the key frames of one with fewer.

A request is checked once, before anything is generated. This module knows the stage order and the frame rates; it
does not know file formats (`bundle/`) nor how to write videos (`sample.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cogvideo_lite.bundle.exports import extend_image, load_image_model
from cogvideo_lite.bundle.parts import check_contracts, read_recommended_knobs, resolve_parts
from cogvideo_lite.model.layout import is_integer
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, TOKENIZER, Stage
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.provenance import Provenance
from cogvideo_lite.sample.generate import Condition, Sampler, generate_image, generate_keyframes, interpolate
from cogvideo_lite.sample.knobs import SamplingKnobs, Spelling
from cogvideo_lite.text import TextTokenizer
from tokenizer.frames import to_uint8
from tokenizer.io import load_tokenizer
from tokenizer.model import VQVAE

IMAGE_STEP, KEYFRAME_STEP, FIRST_ROUND_STEP = 0, 1, 2  # the `step` of derive_seed
DECODE_CHUNK_FRAMES = 64  # frames per decoder call: bounds the decoder's activation memory at large sizes


@dataclass
class Pipeline:
    directory: Path
    tokenizer: VQVAE
    text: TextTokenizer
    image: Generator
    keyframe: Generator
    interpolate: Generator
    rates: tuple[int, ...]
    device: torch.device
    keyframe_makes_first_frame: bool = False  # the key-frame model learnt frame 0 (`learn_first_frame`)
    # per video stage, the `prepare --steady-margin` its training codes were encoded with (exports before it: 0)
    steady_margins: dict[Stage, float] = field(default_factory=dict)
    # the bundle's recommended sampling knobs (its optional sampling.json): defaults for sample.py and evaluate
    recommended_knobs: dict[str, float | int | None] = field(default_factory=dict)
    # the bundle's optional image expert (`expert/`): joins the frame loops where knobs.expert_weight > 0
    expert: Generator | None = None
    # on a GPU, replay cached passes as CUDA graphs (`Sampler`); False runs them eagerly (benchmarks compare both)
    cuda_graphs: bool = True

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> Pipeline:
        """Check the bundle's contracts, then build every part on `device` in eval mode; the generator stages (and the
        expert) in `dtype`, by default bfloat16 on a GPU and float32 elsewhere (the frame tokenizer stays float32)."""
        directory, device = Path(directory), torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        parts = resolve_parts(directory)
        text, specs = check_contracts(parts)  # the video stages' records of the image weights' checksum included
        image, image_spec = load_image_model(parts[IMAGE.name], device)
        keyframe, interpolation = (extend_image(parts[stage.name], specs[stage], image, image_spec)
                                   for stage in (KEYFRAME, INTERPOLATE))
        tokenizer = load_tokenizer(parts[TOKENIZER.name], device).to(memory_format=torch.channels_last)  # faster convs
        return cls(directory=directory, tokenizer=tokenizer, text=text, image=image.to(dtype),
                   keyframe=keyframe.to(dtype), interpolate=interpolation.to(dtype),
                   rates=tuple(specs[IMAGE]["rates"]),
                   device=device, keyframe_makes_first_frame=bool(specs[KEYFRAME].get("learns_first_frame", False)),
                   steady_margins={stage: Provenance.of_export(specs[stage]).steady_margin
                                   for stage in (KEYFRAME, INTERPOLATE)},
                   recommended_knobs=read_recommended_knobs(directory),
                   expert=load_image_model(parts["expert"], device)[0].to(dtype) if "expert" in parts else None)

    @property
    def num_key_frames(self) -> int:
        return self.keyframe.layout.num_frames

    @property
    def text_length(self) -> int:
        return self.image.layout.text_length

    def condition(self, prompts: list[str], rate: int) -> Condition:
        """The prompts' text ids (on the pipeline's device) with the fps token of `rate`. An empty or non-string
        prompt is a ValueError naming its index; one longer than the text length raises PromptTooLong."""
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError(f"prompts: expected a non-empty list of strings, got {prompts!r}")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {index} is {prompt!r}: expected a non-empty string")
        ids, pad = self.text.encode_batch(list(prompts), self.text_length)  # (P, L)
        fps_ids = torch.full((len(prompts),), self.text.fps_id(rate), device=self.device)
        return Condition(ids.to(self.device), pad.to(self.device), fps_ids, self.text.boi_id)


@dataclass(frozen=True)
class Request:
    """What to generate: `num_samples` videos per prompt with key frames at `key_rate` and `rounds` interpolation
    rounds, from `seed`. init_codes (B, k, h, w) int64, B = 1 (shared) or one per prompt, 1 <= k <= key frames: given
    first key frames (frame 0 is then not generated; with k = all key frames only the interpolation rounds run)."""

    prompts: list[str]
    key_rate: int
    rounds: int
    seed: int = 0
    num_samples: int = 1
    init_codes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name, least in (("rounds", 0), ("seed", 0), ("num_samples", 1)):
            value = getattr(self, name)
            if not is_integer(value) or value < least:
                raise ValueError(f"{name}={value!r}: expected an integer >= {least}")


@dataclass
class Video:
    prompt: str
    seed: int
    sample_index: int
    key_rate: int            # frame rate of the key frames
    fps: int                 # final frame rate (key_rate * 2**rounds)
    codes: torch.Tensor      # (T, h, w) int64, all frames in time order
    frames: np.ndarray       # (T, H, W, 3) uint8 decoded
    key_indices: list[int]   # positions of the key frames within `frames`


@dataclass
class Step:
    """What `generate_videos` tells its `on_step` observer after each step of a batch (frame 0, the key frames,
    each interpolation round), e.g. to show a video filling in; an exception it raises stops the generation."""
    batch_index: int
    name: str              # "frame 0", "key frames", "round 1", ...
    round: int             # interpolation rounds done: 0 for frame 0 and the key frames
    codes: torch.Tensor    # (b, T, h, w) int64, the frames made so far in time order, at key_rate * 2**round fps


StepObserver = Callable[[Step], None]


# ----------------------------------------------------------------------------------------------------------------
# Checks (all before any generation)
# ----------------------------------------------------------------------------------------------------------------

def max_rounds(rates: tuple[int, ...], key_rate: int) -> int:
    """How many doublings of `key_rate` stay inside the rate set: 1 in {1, 2, 4, 8} -> 3, 8 -> 0."""
    if key_rate not in rates:
        raise ValueError(f"key-frame rate {key_rate!r} is not one of the configured rates {tuple(rates)}")
    rounds = 0
    while key_rate * 2 ** (rounds + 1) in rates:
        rounds += 1
    return rounds


def resolve_rate_and_rounds(rates: tuple[int, ...], rate: object, rounds: object,
                            spelling: Spelling) -> tuple[int, int]:
    """The key-frame rate (default the lowest of `rates`) and the interpolation rounds (default as many as the rates
    allow), checked: a ValueError says what they may be, naming them (fps, rounds) as the edge does."""
    rate = min(rates) if rate is None else rate
    if not is_integer(rate) or rate not in rates:
        raise ValueError(f"{spelling('fps', rate)}: not a configured key-frame rate; choose one of "
                         f"{', '.join(map(str, rates))}")
    allowed = max_rounds(rates, rate)
    rounds = allowed if rounds is None else rounds
    if not is_integer(rounds) or not 0 <= rounds <= allowed:
        raise ValueError(f"{spelling('rounds', rounds)}: from {rate} fps the rates {rates} allow 0..{allowed} "
                         f"interpolation rounds; pass {spelling('rounds', allowed)} or fewer, or a lower "
                         f"{spelling.name('fps')}")
    return rate, rounds


def _check(pipeline: Pipeline, request: Request, knobs: tuple[SamplingKnobs, SamplingKnobs], batch_size: int) -> None:
    """Everything a request can get wrong against this pipeline, before any generation."""
    allowed = max_rounds(pipeline.rates, request.key_rate)
    if request.rounds > allowed:
        raise ValueError(f"rounds={request.rounds}: from {request.key_rate} fps the rate set {pipeline.rates} allows "
                         f"0..{allowed} interpolation rounds")
    for value in knobs:
        if not isinstance(value, SamplingKnobs):
            raise ValueError(f"knobs: expected SamplingKnobs, got {type(value).__name__}")
        if value.expert_weight and pipeline.expert is None:
            raise ValueError(f"expert_weight={value.expert_weight}: the bundle {pipeline.directory} has no image expert "
                             "(an expert/ part); leave the weight at 0")
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
    codes, grid = request.init_codes, pipeline.image.layout.grid
    if codes is None:
        return
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long or codes.dim() != 4 \
            or tuple(codes.shape[2:]) != grid or codes.shape[1] < 1:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"init_codes: expected int64 codes (B, T, {grid[0]}, {grid[1]}), got {shape}")
    if codes.min() < 0 or codes.max() >= pipeline.image.layout.codebook_size:
        raise ValueError(f"init_codes: codes outside [0, {pipeline.image.layout.codebook_size})")
    if codes.shape[0] not in (1, len(request.prompts)):
        raise ValueError(f"init_codes: batch {codes.shape[0]}, expected 1 (shared) or one per prompt "
                         f"({len(request.prompts)})")
    if codes.shape[1] > pipeline.num_key_frames:
        raise ValueError(f"init_codes: {codes.shape[1]} frames, the key-frame model makes "
                         f"{pipeline.num_key_frames}; expected 1..{pipeline.num_key_frames}")


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------

def derive_seed(seed: int, batch_index: int, step: int) -> int:
    """A 32-bit seed for one step of one batch, fixed by (seed, batch_index, step)."""
    return int(np.random.SeedSequence([seed, batch_index, step]).generate_state(1)[0])


def generate_videos(pipeline: Pipeline, request: Request, knobs: SamplingKnobs,
                    interpolation_knobs: SamplingKnobs | None = None, batch_size: int = 8, use_cache: bool = True,
                    progress: bool = True, on_step: StepObserver | None = None) -> list[Video]:
    """The request's videos, prompt by prompt. interpolation_knobs: the rounds' own knobs (default `knobs`); greedy
    in-betweens (top_k=1) stay on the line between their neighbours while the key frames keep their variety.
    on_step: called with a `Step` after every generation step of every batch."""
    interpolation_knobs = knobs if interpolation_knobs is None else interpolation_knobs
    _check(pipeline, request, (knobs, interpolation_knobs), batch_size)
    condition = pipeline.condition(request.prompts, request.key_rate)  # (P, L)
    init_codes = None if request.init_codes is None else request.init_codes.to(pipeline.device)
    samplers = tuple(Sampler(value, use_cache=use_cache, expert=pipeline.expert,
                             cuda_graphs=pipeline.cuda_graphs)
                     for value in (knobs, interpolation_knobs))

    pairs = [(prompt, sample) for prompt in range(len(request.prompts)) for sample in range(request.num_samples)]
    batches = [pairs[start:start + batch_size] for start in range(0, len(pairs), batch_size)]
    num_given = 0 if init_codes is None else init_codes.shape[1]
    image_step = num_given == 0 and not pipeline.keyframe_makes_first_frame
    steps_per_batch = image_step + (num_given < pipeline.num_key_frames) + request.rounds + 1
    videos = []
    with tqdm(total=len(batches) * steps_per_batch, disable=not progress, unit="step") as bar:
        for batch_index, batch in enumerate(batches):
            rows = torch.tensor([prompt for prompt, _ in batch], device=pipeline.device)
            given = None if init_codes is None else (
                init_codes[rows] if init_codes.shape[0] > 1 else init_codes.expand(len(batch), -1, -1, -1))
            steps = _Steps(pipeline, bar, f"batch {batch_index + 1}/{len(batches)}", request.seed, batch_index,
                           on_step)
            keys = steps.key_frames(condition.rows(rows), given, samplers[0])
            codes = steps.rounds(condition.rows(rows), keys, request.key_rate, request.rounds, samplers[1])
            frames = steps.decode(codes)  # (b, T, H, W, 3)
            stride = 2 ** request.rounds
            for row, (prompt, sample) in enumerate(batch):
                videos.append(Video(prompt=request.prompts[prompt], seed=request.seed, sample_index=sample,
                                    key_rate=request.key_rate, fps=request.key_rate * stride, codes=codes[row].cpu(),
                                    frames=frames[row], key_indices=list(range(0, codes.shape[1], stride))))
    return videos


@dataclass
class _Steps:
    """The steps of one batch, each with its seed (`derive_seed`), a line on the progress bar and, when done, a
    `Step` for the observer."""

    pipeline: Pipeline
    bar: tqdm
    label: str
    seed: int
    batch_index: int
    on_step: StepObserver | None = None

    def _step(self, name: str, step: int, sampler: Sampler) -> Sampler:
        self.bar.set_description(f"{self.label}: {name}")
        return replace(sampler, seed=derive_seed(self.seed, self.batch_index, step))

    def _done(self, name: str, rounds: int, codes: torch.Tensor) -> None:
        """A generation step has made `codes` (b, T, h, w) with `rounds` interpolation rounds done."""
        self.bar.update()
        if self.on_step is not None:
            self.on_step(Step(self.batch_index, name, rounds, codes))

    def key_frames(self, condition: Condition, given: torch.Tensor | None, sampler: Sampler) -> torch.Tensor:
        """Key frames (b, T, h, w): frame 0 from the image model unless given (or made by the key-frame model),
        the rest from the key-frame model."""
        pipeline = self.pipeline
        if given is None and pipeline.keyframe_makes_first_frame:
            given = torch.zeros(condition.text_ids.shape[0], 0, *pipeline.image.layout.grid, dtype=torch.long,
                                device=pipeline.device)  # (b, 0, h, w): the key-frame model starts at frame 0
        if given is None:
            given = generate_image(pipeline.image, condition, self._step("frame 0", IMAGE_STEP, sampler))
            self._done("frame 0", 0, given)
        if given.shape[1] == pipeline.num_key_frames:
            return given
        keys = generate_keyframes(pipeline.keyframe, condition, given, self._step("key frames", KEYFRAME_STEP, sampler))
        self._done("key frames", 0, keys)
        return keys  # (b, T, h, w)

    def rounds(self, condition: Condition, codes: torch.Tensor, key_rate: int, rounds: int,
               sampler: Sampler) -> torch.Tensor:
        """codes (b, T, h, w) -> (b, (T - 1) * 2**rounds + 1, h, w); round k with the fps token of its output rate
        key_rate * 2**(k + 1)."""
        for round_index in range(rounds):
            rate = key_rate * 2 ** (round_index + 1)
            step = self._step(f"interpolating to {rate} fps", FIRST_ROUND_STEP + round_index, sampler)
            codes = interpolate(self.pipeline.interpolate, condition.with_rate(self.pipeline.text.fps_id(rate)),
                                codes, step)  # (b, 2T - 1, h, w)
            self._done(f"round {round_index + 1}", round_index + 1, codes)
        return codes

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        self.bar.set_description(f"{self.label}: decode")
        frames = decode_codes(self.pipeline, codes)
        self.bar.update()
        return frames


@torch.no_grad()
def decode_codes(pipeline: Pipeline, codes: torch.Tensor) -> np.ndarray:
    """codes (B, T, h, w) int64 -> frames (B, T, H, W, 3) uint8, decoded DECODE_CHUNK_FRAMES frames at a time."""
    flat = codes.to(pipeline.device).flatten(0, 1)[:, None]  # (B*T, 1, h, w): one frame per decoder row
    pieces = [to_uint8(pipeline.tokenizer.decode(flat[start:start + DECODE_CHUNK_FRAMES])[:, 0])
              for start in range(0, flat.shape[0], DECODE_CHUNK_FRAMES)]  # each (n, H, W, 3)
    frames = np.concatenate(pieces)  # (B*T, H, W, 3)
    return frames.reshape(codes.shape[0], codes.shape[1], *frames.shape[1:])


def encode_frames(pipeline: Pipeline, frames: torch.Tensor, stage: Stage) -> torch.Tensor:
    """frames (T, 3, H, W) in [-1, 1] at the tokenizer's size -> codes (1, T, h, w) int64 on the pipeline's device,
    encoded as the shards of the video stage `stage`, which the frames are given to, were."""
    return pipeline.tokenizer.encode(frames[None].to(pipeline.device), pipeline.steady_margins.get(stage, 0.0))
