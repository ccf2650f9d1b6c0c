"""The generation form: a JSON body -> a checked `GenerationRequest`, or a `RequestError` whose one-line message the
page and the API show as they are.

The wording is sample.py's, with the API's field names where sample.py names an option (a knob rule's hint and the
missing-expert message keep sample.py's flag names): prompt messages come from
`text.py` (the functions sample.py calls), knob messages from the knob rules of `sample/knobs.py` (which the command
line reads too), and the frame rate and rounds follow the sentences of `cli.rate_and_rounds`. Fields left out take
the defaults sample.py takes: the lowest rate, as many rounds as the rates allow, seed 0, and the bundle's recommended
knobs (its `sampling.json`), else the built-in ones. Knows the pipeline's rates and text model; does not know HTTP nor
generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cogvideo_lite.sample.knobs import BUILTIN_KNOBS, KNOB_RULES, SamplingKnobs, interpolation_knobs, missing_expert
from cogvideo_lite.sample.pipeline import Pipeline, max_rounds
from cogvideo_lite.text import EXAMPLE_PROMPT, blank_prompt_problem, not_utf8, prompt_token_problem

KNOB_NAMES = tuple(BUILTIN_KNOBS)  # temperature, top_k, interp_top_k, top_p, cfg, expert_weight, ..., decode
FIELDS = ("prompt", "seed", "fps", "rounds", *KNOB_NAMES)
MAX_SEED = 2 ** 63 - 1  # the largest seed torch.Generator.manual_seed takes
EXAMPLE_BODY = json.dumps({"prompt": EXAMPLE_PROMPT})


class RequestError(ValueError):
    """A request the studio refuses; `status` is its HTTP status (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    seed: int
    fps: int       # the key-frame rate
    rounds: int    # interpolation rounds: the video has (key frames - 1) * 2**rounds + 1 frames at fps * 2**rounds
    knobs: dict    # every name of KNOB_NAMES -> its value after the defaults

    def sampling_knobs(self) -> tuple[SamplingKnobs, SamplingKnobs]:
        """(knobs of frame 0 and the key frames, knobs of the interpolation rounds), as sample.py builds them."""
        knobs = SamplingKnobs(temperature=self.knobs["temperature"], top_k=self.knobs["top_k"],
                              top_p=self.knobs["top_p"], guidance_scale=self.knobs["cfg"],
                              expert_weight=self.knobs["expert_weight"], decode=self.knobs["decode"])
        return knobs, interpolation_knobs(knobs, self.knobs["interp_top_k"], self.knobs["interp_expert_weight"])


def read_json(body: bytes) -> dict:
    """A request body -> its JSON object; RequestError saying why it is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"request body: {not_utf8(error)}; send it as UTF-8") from None
    try:
        fields = json.loads(text)
    except ValueError as error:
        reason = f"{error.msg} at line {error.lineno} column {error.colno}" if isinstance(
            error, json.JSONDecodeError) else str(error)
        raise RequestError(f"request body: not JSON ({reason}); send a JSON object like {EXAMPLE_BODY}") from None
    if not isinstance(fields, dict):
        raise RequestError(f"request body: expected a JSON object like {EXAMPLE_BODY}, got {type(fields).__name__}")
    return fields


def _shown(value: object) -> str:
    """A field's value as the user wrote it in JSON: 1.5, "x", null."""
    return json.dumps(value, ensure_ascii=False)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_prompt(pipeline: Pipeline, prompt: object) -> str:
    if prompt is None:
        raise RequestError(f'no prompt given; add "prompt": "{EXAMPLE_PROMPT}"')
    if not isinstance(prompt, str):
        raise RequestError(f"prompt {_shown(prompt)}: expected a string like \"{EXAMPLE_PROMPT}\"")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate, which JSON's \ud800 escapes can carry
        raise RequestError(f"prompt: not UTF-8 text (a lone surrogate U+{ord(prompt[error.start]):04X} at "
                           f"character {error.start}); send it as UTF-8") from None
    problem = blank_prompt_problem(prompt, "prompt") or prompt_token_problem(
        pipeline.text, prompt, pipeline.text_length, "prompt")
    if problem:
        raise RequestError(problem)
    return prompt


def check_rate_and_rounds(pipeline: Pipeline, rate: object, rounds: object) -> tuple[int, int]:
    """`cli.rate_and_rounds` (sample.py's --fps and --rounds), with its wording, for the fields fps and rounds."""
    rate = min(pipeline.rates) if rate is None else rate
    if not _is_integer(rate) or rate not in pipeline.rates:
        raise RequestError(f"fps {_shown(rate)}: not a configured key-frame rate; choose one of "
                           f"{', '.join(map(str, pipeline.rates))}")
    allowed = max_rounds(pipeline.rates, rate)
    rounds = allowed if rounds is None else rounds
    if not _is_integer(rounds) or not 0 <= rounds <= allowed:
        raise RequestError(f"rounds {_shown(rounds)}: from {rate} fps the rates {pipeline.rates} allow 0..{allowed} "
                           f"interpolation rounds; pass rounds {allowed} or fewer, or a lower fps")
    return rate, rounds


def check_knobs(pipeline: Pipeline, given: dict) -> dict:
    """Every knob: the given value, else the bundle's recommendation, else the built-in one; each checked by its rule
    (a null is a value: top_k null keeps every code)."""
    knobs = {name: given.get(name, pipeline.recommended_knobs.get(name, BUILTIN_KNOBS[name])) for name in KNOB_NAMES}
    for name, value in knobs.items():
        rule = KNOB_RULES[name]
        if not rule.allows(value):
            raise RequestError(f"{name} {_shown(value)}: must be {rule.must_be}; {rule.hint}")
    if error := missing_expert(knobs["expert_weight"], knobs["interp_expert_weight"], pipeline.expert is not None):
        raise RequestError(error)
    return knobs


def parse_generation(pipeline: Pipeline, fields: dict) -> GenerationRequest:
    """A request's JSON object -> the checked request; the first problem found is a RequestError."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; expected some of {', '.join(FIELDS)}")
    prompt = check_prompt(pipeline, fields.get("prompt"))
    seed = fields.get("seed", 0)
    if not _is_integer(seed) or not 0 <= seed <= MAX_SEED:
        raise RequestError(f"seed {_shown(seed)}: must be an integer >= 0 (at most {MAX_SEED})")
    rate, rounds = check_rate_and_rounds(pipeline, fields.get("fps"), fields.get("rounds"))
    return GenerationRequest(prompt=prompt, seed=seed, fps=rate, rounds=rounds, knobs=check_knobs(pipeline, fields))
