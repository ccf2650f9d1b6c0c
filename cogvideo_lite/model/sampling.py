"""Choosing the next code from logits: temperature, top-k, top-p (nucleus), classifier-free guidance and the
weight of an image expert (`generate.py` adds its log-probabilities to the model's).

Knows logits and knobs only; does not know the model or the sequence. Guidance follows Ho & Salimans
(2022), written `scale * cond + (1 - scale) * uncond` (= `uncond + scale * (cond - uncond)`), which gives
the conditional logits bit for bit at scale 1; nucleus sampling follows Holtzman et al. (2020).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class SamplingKnobs:
    """temperature > 0; top_k None (all codes) or >= 1; top_p in (0, 1]; guidance_scale >= 0
    (1: plain conditional sampling, no unconditional pass; 0: unconditional); expert_weight >= 0 (0: no expert;
    w > 0: every generated frame is drawn from p_model * p_expert**w, see `generate.ImageExpert`)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    guidance_scale: float = 1.0
    expert_weight: float = 0.0

    def __post_init__(self) -> None:
        problems = check_knobs(self.temperature, self.top_k, self.top_p)
        for name in ("guidance_scale", "expert_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                problems.append(f"{name}={value!r}: expected a number >= 0")
        if problems:
            raise ValueError("invalid sampling knobs: " + "; ".join(problems))


def check_knobs(temperature: float, top_k: int | None, top_p: float) -> list[str]:
    problems = []
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        problems.append(f"temperature={temperature!r}: expected a number > 0")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        problems.append(f"top_k={top_k!r}: expected null or an integer >= 1")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        problems.append(f"top_p={top_p!r}: expected a number in (0, 1]")
    return problems


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond), exact at scale 0 and 1. Shapes (B, V)."""
    return scale * conditional + (1 - scale) * unconditional


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """logits (B, V) with everything outside the top-k and the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely codes whose probability reaches top_p; the most likely
    code always stays.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probabilities = sorted_logits.softmax(dim=-1)
        mass_before = probabilities.cumsum(dim=-1) - probabilities  # (B, V) mass of more likely codes
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One code per row: logits (B, V) -> (B,) int64 in [0, V)."""
    problems = check_knobs(temperature, top_k, top_p)
    if problems:
        raise ValueError("invalid sampling knobs: " + "; ".join(problems))
    probabilities = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator)[:, 0]


# ---------------------------------------------------------------------------------------------------- command line
# Each knob's value when neither the command line nor the bundle's `sampling.json` gives one.
BUILTIN_KNOBS = {"temperature": 1.0, "top_k": None, "interp_top_k": None, "top_p": 1.0, "cfg": 1.0,
                 "expert_weight": 0.0, "interp_expert_weight": None}


def add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs as options (`sample.py`, `python -m cogvideo_lite.evaluate`); each script checks the values. A knob
    left out takes the bundle's recommendation (`sampling.json`), else BUILTIN_KNOBS: see `fill_knob_defaults`."""
    parser.add_argument("--temperature", type=float, help="> 0; lower is more conservative (default 1)")
    parser.add_argument("--top-k", type=int, help="keep the k most likely codes (default: all)")
    parser.add_argument("--interp-top-k", type=int,
                        help="top-k of the interpolation rounds (default: as --top-k; 1 = greedy in-betweens)")
    parser.add_argument("--top-p", type=float, help="nucleus mass in (0, 1]; 1 (the default) turns it off")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale >= 0; 1 (the default) = none")
    parser.add_argument("--expert-weight", type=float,
                        help="weight >= 0 of the bundle's image expert (default 0: "
                             "none; needs a bundle with an expert/ part)")
    parser.add_argument("--interp-expert-weight", type=float,
                        help="the image expert's weight in the interpolation rounds (default: as --expert-weight)")
    parser.epilog = ((parser.epilog or "") + "\nSampling knobs left out take the bundle's recommended values "
                     "(its sampling.json), else the defaults above.").strip()


def fill_knob_defaults(args: argparse.Namespace, recommended: dict[str, float | int | None]) -> None:
    """Give every knob the command line left out (None) the bundle's recommended value, else the built-in one."""
    for name, builtin in BUILTIN_KNOBS.items():
        if getattr(args, name) is None:
            setattr(args, name, recommended.get(name, builtin))


def check_recommended_knobs(raw: object, where: str) -> dict[str, float | int | None]:
    """A bundle's `sampling.json` mapping, checked: only knob names, each value as the options allow."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of knob names to values, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(BUILTIN_KNOBS))
    if unknown:
        raise ValueError(f"{where}: unknown sampling knob(s) {', '.join(unknown)}; expected some of "
                         f"{', '.join(BUILTIN_KNOBS)}")
    knobs = {**BUILTIN_KNOBS, **raw}
    problems = check_knobs(knobs["temperature"], knobs["top_k"], knobs["top_p"])
    interp_top_k = knobs["interp_top_k"]
    if interp_top_k is not None and (not isinstance(interp_top_k, int) or isinstance(interp_top_k, bool)
                                     or interp_top_k < 1):
        problems.append(f"interp_top_k={interp_top_k!r}: expected null or an integer >= 1")
    for name in ("cfg", "expert_weight", "interp_expert_weight"):
        if name == "interp_expert_weight" and knobs[name] is None:
            continue
        if not isinstance(knobs[name], (int, float)) or isinstance(knobs[name], bool) or not knobs[name] >= 0:
            problems.append(f"{name}={knobs[name]!r}: expected a number >= 0")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return dict(raw)


def missing_expert(args: argparse.Namespace, has_expert: bool) -> str | None:
    """The command-line error when an expert weight > 0 (after defaults) meets a bundle without an expert."""
    weights = [value for value in (args.expert_weight, args.interp_expert_weight) if value]
    if weights and not has_expert:
        return (f"--expert-weight / --interp-expert-weight {weights[0]}: this bundle has no image expert (an "
                "expert/ part; `python -m cogvideo_lite.bundle --expert DIR` adds one); leave them out or at 0")
    return None


def interpolation_knobs(knobs: SamplingKnobs, interp_top_k: int | None,
                        interp_expert_weight: float | None = None) -> SamplingKnobs:
    """The interpolation rounds' knobs: `knobs`, with `--interp-top-k` as top-k and `--interp-expert-weight` as the
    image expert's weight where given."""
    if interp_top_k is not None:
        knobs = replace(knobs, top_k=interp_top_k)
    return knobs if interp_expert_weight is None else replace(knobs, expert_weight=interp_expert_weight)
