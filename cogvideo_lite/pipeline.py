"""The sampling pipeline: prompt -> frame 0 -> key frames -> interpolation rounds -> decoded video.

`Pipeline.load(bundle)` checks the bundle's contracts (`bundle.check_contracts`) and builds the frame tokenizer,
the text tokenizer and the three generator stages. `generate_videos` runs CogVideo's hierarchy (Hong et al. 2023,
section 3.1; DESIGN.md section 5) for every (prompt, sample) pair, in batches:

    frame 0        image model, spatial channel alone          fps token of the key-frame rate r
                   (or the key-frame model, when it was trained with `learn_first_frame`)
    frames 1..T-1  key-frame model (T = its layout, 5)          fps token r
    round k        interpolation model, every triplet at once   fps token r * 2**k (the round's OUTPUT rate)
    decode         frame tokenizer, all frames of the batch

matching how the stages were trained (`tasks/generator_task.py`): key-frame clips carry the fps token of their
rate, interpolation clips the token of the rate they produce, the image stage the token of its clip.

Seeds: pairs are ordered prompt by prompt, sample by sample, and cut into batches of `batch_size`; each step of
batch b draws from its own generator seeded by `derive_seed(seed, b, step)` (step 0 image, 1 key frames, 2 + k
interpolation round k). The same arguments (batch size included) give the same videos; the key frames do not
depend on the number of rounds, so a video with more rounds keeps the key frames of one with fewer.

This module knows the stage order and the frame rates; it does not know file formats (`bundle.py`, `generator_io`)
nor how to write videos (`sample.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cogvideo_lite.bundle import check_contracts, read_recommended_knobs, resolve_parts
from cogvideo_lite.generator_io import load_image_model, load_stage
from cogvideo_lite.model.generate import generate_image, generate_keyframes, interpolate
from cogvideo_lite.model.sampling import SamplingKnobs
from cogvideo_lite.model.transformer import Generator
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
    steady_margins: dict[str, float] = field(default_factory=dict)
    # the bundle's recommended sampling knobs (its optional sampling.json): defaults for sample.py and evaluate
    recommended_knobs: dict[str, float | int | None] = field(default_factory=dict)
    # the bundle's optional image expert (`expert/`): joins the frame loops where knobs.expert_weight > 0
    expert: Generator | None = None

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Pipeline:
        """Check the bundle's contracts, then build every part on `device` in eval mode."""
        directory, device = Path(directory), torch.device(device)
        parts = resolve_parts(directory)
        specs = check_contracts(parts)
        image, _ = load_image_model(parts["image"], device)
        keyframe, keyframe_spec = load_stage(parts["keyframe"], image_dir=parts["image"], device=device)
        interpolation, interpolate_spec = load_stage(parts["interpolate"], image_dir=parts["image"], device=device)
        expert = load_image_model(parts["expert"], device)[0] if "expert" in parts else None
        return cls(directory=directory, tokenizer=load_tokenizer(parts["tokenizer"], device),
                   text=TextTokenizer.load(parts["text"]), image=image, keyframe=keyframe,
                   interpolate=interpolation, rates=tuple(specs["image"]["rates"]), device=device,
                   keyframe_makes_first_frame=bool(keyframe_spec.get("learns_first_frame", False)),
                   steady_margins={"keyframe": float(keyframe_spec.get("steady_margin", 0.0)),
                                   "interpolate": float(interpolate_spec.get("steady_margin", 0.0))},
                   recommended_knobs=read_recommended_knobs(directory), expert=expert)

    @property
    def num_key_frames(self) -> int:
        return self.keyframe.layout.num_frames

    @property
    def text_length(self) -> int:
        return self.image.layout.text_length


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


def check_rate_and_rounds(rates: tuple[int, ...], key_rate: int, rounds: int) -> None:
    allowed = max_rounds(rates, key_rate)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= allowed:
        raise ValueError(f"rounds={rounds!r}: from {key_rate} fps the rate set {tuple(rates)} allows 0..{allowed} "
                         "interpolation rounds")


def encode_prompts(pipeline: Pipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (ids (P, L) int64, pad (P, L) bool) on the pipeline's device. An empty or non-string prompt is a
    ValueError naming its index; one longer than the text length raises PromptTooLong naming both lengths."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts: expected a non-empty list of strings, got {prompts!r}")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {index} is {prompt!r}: expected a non-empty string")
    ids, pad = pipeline.text.encode_batch(list(prompts), pipeline.text_length)  # (P, L)
    return ids.to(pipeline.device), pad.to(pipeline.device)


def _check_codes(pipeline: Pipeline, codes: torch.Tensor, name: str) -> None:
    grid, codebook_size = pipeline.image.layout.grid, pipeline.image.layout.codebook_size
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long or codes.dim() != 4 \
            or tuple(codes.shape[2:]) != grid or codes.shape[1] < 1:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"{name}: expected int64 codes (B, T, {grid[0]}, {grid[1]}), got {shape}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"{name}: codes outside [0, {codebook_size})")


def _check_integer(name: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name}={value!r}: expected an integer >= {least}")


def _check_init_codes(pipeline: Pipeline, init_codes: torch.Tensor, num_prompts: int) -> None:
    _check_codes(pipeline, init_codes, "init_codes")
    if init_codes.shape[0] not in (1, num_prompts):
        raise ValueError(f"init_codes: batch {init_codes.shape[0]}, expected 1 (shared) or one per prompt "
                         f"({num_prompts})")
    if init_codes.shape[1] > pipeline.num_key_frames:
        raise ValueError(f"init_codes: {init_codes.shape[1]} frames, the key-frame model makes "
                         f"{pipeline.num_key_frames}; expected 1..{pipeline.num_key_frames}")


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------

def derive_seed(seed: int, batch_index: int, step: int) -> int:
    """A 32-bit seed for one step of one batch, fixed by (seed, batch_index, step)."""
    return int(np.random.SeedSequence([seed, batch_index, step]).generate_state(1)[0])


def generate_videos(pipeline: Pipeline, prompts: list[str], knobs: SamplingKnobs, key_rate: int, rounds: int,
                    seed: int, num_samples: int = 1, batch_size: int = 8, use_cache: bool = True,
                    progress: bool = True, init_codes: torch.Tensor | None = None,
                    interpolation_knobs: SamplingKnobs | None = None,
                    on_step: StepObserver | None = None) -> list[Video]:
    """`num_samples` videos per prompt, prompt by prompt. init_codes (B, k, h, w) int64, B = 1 or len(prompts),
    1 <= k <= key frames: given first key frames (frame 0 is not generated; with k = all key frames only the
    interpolation rounds run). interpolation_knobs: the rounds' own knobs (default `knobs`); greedy in-betweens
    (top_k=1) stay on the line between their neighbours while the key frames keep their variety.
    on_step: called with a `Step` after every generation step of every batch."""
    interpolation_knobs = knobs if interpolation_knobs is None else interpolation_knobs
    for name, value in (("knobs", knobs), ("interpolation_knobs", interpolation_knobs)):
        if not isinstance(value, SamplingKnobs):
            raise ValueError(f"{name}: expected SamplingKnobs, got {type(value).__name__}")
    check_rate_and_rounds(pipeline.rates, key_rate, rounds)
    for value in {knobs.expert_weight, interpolation_knobs.expert_weight} - {0}:
        if pipeline.expert is None:
            raise ValueError(f"expert_weight={value}: the bundle {pipeline.directory} has no image expert (an expert/ "
                             "part); leave the weight at 0")
    for name, value, least in (("num_samples", num_samples, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        _check_integer(name, value, least)
    text_ids, text_pad = encode_prompts(pipeline, prompts)  # (P, L)
    if init_codes is not None:
        _check_init_codes(pipeline, init_codes, len(prompts))
        init_codes = init_codes.to(pipeline.device)

    pairs = [(prompt, sample) for prompt in range(len(prompts)) for sample in range(num_samples)]
    batches = [pairs[start:start + batch_size] for start in range(0, len(pairs), batch_size)]
    num_given = 0 if init_codes is None else init_codes.shape[1]
    image_step = num_given == 0 and not pipeline.keyframe_makes_first_frame
    steps_per_batch = image_step + (num_given < pipeline.num_key_frames) + rounds + 1
    videos = []
    with tqdm(total=len(batches) * steps_per_batch, disable=not progress, unit="step") as bar:
        for batch_index, batch in enumerate(batches):
            rows = torch.tensor([prompt for prompt, _ in batch], device=pipeline.device)
            given = None if init_codes is None else (
                init_codes[rows] if init_codes.shape[0] > 1 else init_codes.expand(len(batch), -1, -1, -1))
            label = f"batch {batch_index + 1}/{len(batches)}"
            observe = None if on_step is None else (  # called within this batch only
                lambda name, done, codes: on_step(Step(batch_index, name, done, codes)))
            keys = _key_frames(pipeline, text_ids[rows], text_pad[rows], key_rate, given, knobs, seed,
                               batch_index, use_cache, bar, label, observe)
            codes = _interpolation_rounds(pipeline, keys, text_ids[rows], text_pad[rows], key_rate, rounds,
                                          interpolation_knobs,
                                          [derive_seed(seed, batch_index, FIRST_ROUND_STEP + k) for k in range(rounds)],
                                          use_cache, bar, label, observe)  # (b, T, h, w)
            bar.set_description(f"{label}: decode")
            frames = decode_codes(pipeline, codes)  # (b, T, H, W, 3)
            bar.update()
            stride = 2 ** rounds
            for row, (prompt, sample) in enumerate(batch):
                videos.append(Video(prompt=prompts[prompt], seed=seed, sample_index=sample, key_rate=key_rate,
                                    fps=key_rate * stride, codes=codes[row].cpu(), frames=frames[row],
                                    key_indices=list(range(0, codes.shape[1], stride))))
    return videos


def _key_frames(pipeline: Pipeline, text_ids: torch.Tensor, text_pad: torch.Tensor, key_rate: int,
                given: torch.Tensor | None, knobs: SamplingKnobs, seed: int, batch_index: int, use_cache: bool,
                bar: tqdm, label: str, observe: Callable | None = None) -> torch.Tensor:
    """Key frames (b, T, h, w): frame 0 from the image model unless given (or made by the key-frame model), the rest
    from the key-frame model. observe(name, rounds done, codes so far) after each step."""
    fps_ids = torch.full((text_ids.shape[0],), pipeline.text.fps_id(key_rate), device=pipeline.device)
    boi_id = pipeline.text.boi_id
    if given is None and pipeline.keyframe_makes_first_frame:
        given = torch.zeros(text_ids.shape[0], 0, *pipeline.image.layout.grid, dtype=torch.long,
                            device=pipeline.device)  # (b, 0, h, w): the key-frame model starts at frame 0
    if given is None:
        bar.set_description(f"{label}: frame 0")
        given = generate_image(pipeline.image, text_ids, text_pad, fps_ids, boi_id, knobs,
                               derive_seed(seed, batch_index, IMAGE_STEP), use_cache, pipeline.expert)  # (b, 1, h, w)
        bar.update()
        if observe is not None:
            observe("frame 0", 0, given)
    if given.shape[1] == pipeline.num_key_frames:
        return given
    bar.set_description(f"{label}: key frames")
    keys = generate_keyframes(pipeline.keyframe, text_ids, text_pad, fps_ids, boi_id, given,
                              pipeline.num_key_frames, knobs, derive_seed(seed, batch_index, KEYFRAME_STEP),
                              use_cache, pipeline.expert)  # (b, T, h, w)
    bar.update()
    if observe is not None:
        observe("key frames", 0, keys)
    return keys


def _interpolation_rounds(pipeline: Pipeline, codes: torch.Tensor, text_ids: torch.Tensor, text_pad: torch.Tensor,
                          start_rate: int, rounds: int, knobs: SamplingKnobs, seeds: list[int], use_cache: bool,
                          bar: tqdm | None = None, label: str = "", observe: Callable | None = None) -> torch.Tensor:
    """codes (b, T, h, w) -> (b, (T - 1) * 2**rounds + 1, h, w); round k uses seeds[k] and the fps token of
    its output rate start_rate * 2**(k + 1). observe(name, rounds done, codes so far) after each round."""
    for round_index in range(rounds):
        rate = start_rate * 2 ** (round_index + 1)
        if bar is not None:
            bar.set_description(f"{label}: interpolating to {rate} fps")
        fps_ids = torch.full((codes.shape[0],), pipeline.text.fps_id(rate), device=codes.device)
        codes = interpolate(pipeline.interpolate, text_ids, text_pad, fps_ids, pipeline.text.boi_id, codes, knobs,
                            seeds[round_index], use_cache, pipeline.expert)  # (b, 2T - 1, h, w)
        if bar is not None:
            bar.update()
        if observe is not None:
            observe(f"round {round_index + 1}", round_index + 1, codes)
    return codes


def interpolate_codes(pipeline: Pipeline, codes: torch.Tensor, prompts: list[str], start_rate: int, rounds: int,
                      knobs: SamplingKnobs, seed: int, use_cache: bool = True) -> torch.Tensor:
    """Interpolation rounds alone: codes (B, T, h, w) at `start_rate` with one prompt per row ->
    (B, (T - 1) * 2**rounds + 1, h, w), the given codes unchanged. Round k draws from derive_seed(seed, 0, 2 + k)."""
    check_rate_and_rounds(pipeline.rates, start_rate, rounds)
    _check_integer("seed", seed, 0)
    _check_codes(pipeline, codes, "codes")
    text_ids, text_pad = encode_prompts(pipeline, prompts)
    if len(prompts) != codes.shape[0]:
        raise ValueError(f"interpolate_codes: {len(prompts)} prompts for {codes.shape[0]} code sequences; "
                         "expected one prompt per row")
    seeds = [derive_seed(seed, 0, FIRST_ROUND_STEP + k) for k in range(rounds)]
    return _interpolation_rounds(pipeline, codes.to(pipeline.device), text_ids, text_pad, start_rate, rounds, knobs,
                                 seeds, use_cache)


@torch.no_grad()
def decode_codes(pipeline: Pipeline, codes: torch.Tensor) -> np.ndarray:
    """codes (B, T, h, w) int64 -> frames (B, T, H, W, 3) uint8, decoded DECODE_CHUNK_FRAMES frames at a time."""
    flat = codes.to(pipeline.device).flatten(0, 1)[:, None]  # (B*T, 1, h, w): one frame per decoder row
    pieces = [to_uint8(pipeline.tokenizer.decode(flat[start:start + DECODE_CHUNK_FRAMES])[:, 0])
              for start in range(0, flat.shape[0], DECODE_CHUNK_FRAMES)]  # each (n, H, W, 3)
    frames = np.concatenate(pieces)  # (B*T, H, W, 3)
    return frames.reshape(codes.shape[0], codes.shape[1], *frames.shape[1:])


def encode_frames(pipeline: Pipeline, frames: torch.Tensor, stage: str) -> torch.Tensor:
    """frames (T, 3, H, W) in [-1, 1] at the tokenizer's size -> codes (1, T, h, w) int64 on the pipeline's device,
    encoded as the shards of `stage` (keyframe / interpolate), which the frames are given to, were."""
    return pipeline.tokenizer.encode(frames[None].to(pipeline.device), pipeline.steady_margins.get(stage, 0.0))
