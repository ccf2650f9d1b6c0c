"""Choosing the next code from logits: temperature, top-k, top-p (nucleus), classifier-free guidance, the weight of
an image expert (`generate.py` adds its log-probabilities to the model's) and the decode mode (how many codes a pass
of the generator draws, `schedule.py`).

`SamplingKnobs` is checked once, when it is made, against the one rule table `KNOB_RULES` that also checks a bundle's
sampling.json and, through `resolve_knobs`, the command line (`cogvideo_lite.cli`) and the studio; `sample_token`
trusts it and checks nothing per code.

Knows logits and knobs only; does not know the model or the sequence. Guidance follows Ho & Salimans
(2022), written `scale * cond + (1 - scale) * uncond` (= `uncond + scale * (cond - uncond)`), which gives
the conditional logits bit for bit at scale 1; nucleus sampling follows Holtzman et al. (2020). A code is drawn as
argmax(p / e) with e ~ Exp(1) per code (`code_noise`): the Gumbel-max trick in the form torch.multinomial uses, so each
code's draw depends on its own noise alone, whichever pass draws it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch

from cogvideo_lite.model.layout import is_count
from cogvideo_lite.sample.schedule import MODE_FORMS, is_mode


@dataclass(frozen=True)
class SamplingKnobs:
    """temperature > 0; top_k None (all codes) or >= 1; top_p in (0, 1]; guidance_scale >= 0
    (1: plain conditional sampling, no unconditional pass; 0: unconditional); expert_weight >= 0 (0: no expert;
    w > 0: every generated frame is drawn from p_model * p_expert**w, see `generate.py`); decode: a decode mode
    (`schedule.MODE_FORMS`: sequential, exact or diagonal-R-F)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    guidance_scale: float = 1.0
    expert_weight: float = 0.0
    decode: str = "exact"

    def __post_init__(self) -> None:
        problems = knob_problems({"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                                  "guidance_scale": self.guidance_scale, "expert_weight": self.expert_weight,
                                  "decode": self.decode}, rule_names={"guidance_scale": "cfg"})
        if problems:
            raise ValueError("invalid sampling knobs: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------- knob rules
# Every check of a sampling knob, wherever its value comes from (SamplingKnobs, a bundle's sampling.json, the
# command line of sample.py or evaluate), reads this one table: the knob's name (as in BUILTIN_KNOBS) -> whether
# None means "not set" (a built-in fallback), the test of a set value, what it must be, and a hint for the command line.
@dataclass(frozen=True)
class KnobRule:
    nullable: bool
    accepts: Callable[[object], bool]
    must_be: str
    hint: str

    def allows(self, value: object) -> bool:
        return (value is None and self.nullable) or (value is not None and self.accepts(value))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KNOB_RULES: dict[str, KnobRule] = {
    "temperature": KnobRule(False, lambda v: _number(v) and v > 0, "a number > 0", "try --temperature 1.0"),
    "top_k": KnobRule(True, is_count, "an integer >= 1", "leave it out to keep every code"),
    "interp_top_k": KnobRule(True, is_count, "an integer >= 1", "leave it out to use --top-k"),
    "top_p": KnobRule(False, lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]",
                      "try --top-p 0.9, or 1 to turn it off"),
    "cfg": KnobRule(False, lambda v: _number(v) and v >= 0, "a number >= 0",
                    "it is the guidance scale: 1 means no guidance, try --cfg 3"),
    "expert_weight": KnobRule(False, lambda v: _number(v) and v >= 0, "a number >= 0", "0 turns the expert off"),
    "interp_expert_weight": KnobRule(True, lambda v: _number(v) and v >= 0, "a number >= 0",
                                     "leave it out to use --expert-weight"),
    "decode": KnobRule(False, is_mode, MODE_FORMS, "exact draws the codes of sequential decoding"),
}
# Each knob's value when neither the command line nor the bundle's `sampling.json` gives one.
BUILTIN_KNOBS = {"temperature": 1.0, "top_k": None, "interp_top_k": None, "top_p": 1.0, "cfg": 1.0,
                 "expert_weight": 0.0, "interp_expert_weight": None, "decode": "exact"}


def knob_problems(knobs: Mapping[str, object], rule_names: Mapping[str, str] | None = None) -> list[str]:
    """`name=value: expected ...` for each knob in `knobs` whose value its rule refuses (the rule of
    `rule_names[name]` where a field goes by another name than its knob, e.g. guidance_scale -> cfg)."""
    problems = []
    for name, value in knobs.items():
        rule = KNOB_RULES[(rule_names or {}).get(name, name)]
        if not rule.allows(value):
            problems.append(f"{name}={value!r}: expected {'null or ' if rule.nullable else ''}{rule.must_be}")
    return problems


def check_recommended_knobs(raw: object, where: str) -> dict[str, float | int | None]:
    """A bundle's `sampling.json` mapping, checked: only knob names, each value as the options allow."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of knob names to values, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(BUILTIN_KNOBS))
    if unknown:
        raise ValueError(f"{where}: unknown sampling knob(s) {', '.join(unknown)}; expected some of "
                         f"{', '.join(BUILTIN_KNOBS)}")
    problems = knob_problems({**BUILTIN_KNOBS, **raw})
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return dict(raw)


def interpolation_knobs(knobs: SamplingKnobs, interp_top_k: int | None,
                        interp_expert_weight: float | None = None) -> SamplingKnobs:
    """The interpolation rounds' knobs: `knobs`, with `--interp-top-k` as top-k and `--interp-expert-weight` as the
    image expert's weight where given."""
    if interp_top_k is not None:
        knobs = replace(knobs, top_k=interp_top_k)
    return knobs if interp_expert_weight is None else replace(knobs, expert_weight=interp_expert_weight)


# ---------------------------------------------------------------------------------------------------- at the edges
@dataclass(frozen=True)
class Spelling:
    """How an edge names an input and its value in a message: sample.py's options (`--top-k 0`) or the studio's
    JSON fields (`top_k 0`, the value as JSON)."""

    name: Callable[[str], str]  # a knob's name (top_k), or fps, rounds -> how the edge spells it
    value: Callable[[object], str] = str

    def __call__(self, name: str, value: object) -> str:
        return f"{self.name(name)} {self.value(value)}"


def resolve_knobs(given: Mapping[str, object], recommended: Mapping[str, object], has_expert: bool,
                  spelling: Spelling) -> dict[str, object]:
    """Every knob of BUILTIN_KNOBS: its `given` value, else the bundle's `recommended` one (its sampling.json), else
    the built-in one. A value its rule refuses (a null is a value: top_k null keeps every code), or an expert weight
    without an image expert, is a ValueError that says what it must be."""
    knobs = {name: given.get(name, recommended.get(name, builtin)) for name, builtin in BUILTIN_KNOBS.items()}
    for name, value in knobs.items():
        rule = KNOB_RULES[name]
        if not rule.allows(value):
            raise ValueError(f"{spelling(name, value)}: must be {rule.must_be}; {rule.hint}")
    weights = [value for value in (knobs["expert_weight"], knobs["interp_expert_weight"]) if value]
    if weights and not has_expert:  # worded with sample.py's options wherever it is raised
        raise ValueError(f"--expert-weight / --interp-expert-weight {weights[0]}: this bundle has no image expert "
                         "(an expert/ part; `python -m cogvideo_lite.bundle --expert DIR` adds one); leave them out "
                         "or at 0")
    return knobs


def knobs_from(values: Mapping[str, object]) -> tuple[SamplingKnobs, SamplingKnobs]:
    """(knobs of frame 0 and the key frames, knobs of the interpolation rounds) from every knob's value, as
    `resolve_knobs` gives them."""
    knobs = SamplingKnobs(temperature=values["temperature"], top_k=values["top_k"], top_p=values["top_p"],
                          guidance_scale=values["cfg"], expert_weight=values["expert_weight"], decode=values["decode"])
    return knobs, interpolation_knobs(knobs, values["interp_top_k"], values["interp_expert_weight"])


# ---------------------------------------------------------------------------------------------------- drawing
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


def is_greedy(knobs: SamplingKnobs) -> bool:
    """top-k 1: every code is the most likely one, and no noise is drawn."""
    return knobs.top_k == 1


def code_noise(rows: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, V) float32 Exp(1) noise for one code of each row: the numbers torch.multinomial draws from `generator` to
    draw one code per row of float32 probabilities."""
    return torch.empty(rows, vocab_size, device=generator.device).exponential_(generator=generator)


def sample_token(logits: torch.Tensor, knobs: SamplingKnobs, noise: torch.Tensor | None) -> torch.Tensor:
    """One code per row: logits (N, V) -> (N,) int64 in [0, V), with the knobs' temperature, top-k and top-p.

    noise (N, V) from `code_noise`: the code is argmax(p / noise), which is torch.multinomial(p, 1) with the same
    numbers. Greedy knobs (`is_greedy`) take the argmax and need no noise (None).
    """
    if is_greedy(knobs):
        return logits.argmax(dim=-1)
    probabilities = filter_logits(logits / knobs.temperature, knobs.top_k, knobs.top_p).softmax(dim=-1)
    return (probabilities / noise).argmax(dim=-1)
