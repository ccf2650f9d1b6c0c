"""The generation form: a JSON body -> a checked `GenerationRequest`, or a `RequestError` whose one-line message the
page and the API show as they are.

The wording is sample.py's, with the API's field names where sample.py names an option (a knob rule's hint and the
missing-expert message keep sample.py's flag names): prompt messages come from `text.py` (the functions sample.py
calls), the knobs and the frame rate and rounds are resolved and checked by what sample.py uses
(`sample/knobs.resolve_knobs`, `sample/pipeline.resolve_rate_and_rounds`), spelled with the fields' names. Fields left
out take the defaults sample.py takes: the lowest rate, as many rounds as the rates allow, seed 0, and the bundle's
recommended knobs (its `sampling.json`), else the built-in ones. Knows the pipeline's rates and text model; does not
know HTTP nor generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cogvideo_lite.model.layout import is_integer
from cogvideo_lite.sample.knobs import BUILTIN_KNOBS, SamplingKnobs, Spelling, knobs_from, resolve_knobs
from cogvideo_lite.sample.pipeline import Pipeline, resolve_rate_and_rounds
from cogvideo_lite.text import EXAMPLE_PROMPT, blank_prompt_problem, not_utf8, prompt_token_problem

KNOB_NAMES = tuple(BUILTIN_KNOBS)  # temperature, top_k, interp_top_k, top_p, cfg, expert_weight, ..., decode
FIELDS = ("prompt", "seed", "fps", "rounds", *KNOB_NAMES)
DEFAULT_SEED = 0  # sample.py's --seed default
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
        return knobs_from(self.knobs)


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


FIELD_NAMES = Spelling(lambda name: name, _shown)  # messages name an input by its field: top_k 0


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
    """The fields fps and rounds (None: left out) as sample.py takes --fps and --rounds."""
    try:
        return resolve_rate_and_rounds(pipeline.rates, rate, rounds, FIELD_NAMES)
    except ValueError as error:
        raise RequestError(str(error)) from None


def check_knobs(pipeline: Pipeline, given: dict) -> dict:
    """Every knob (`resolve_knobs`): the value in `given`, else the bundle's recommendation, else the built-in one."""
    try:
        return resolve_knobs(given, pipeline.recommended_knobs, pipeline.expert is not None, FIELD_NAMES)
    except ValueError as error:
        raise RequestError(str(error)) from None


def parse_generation(pipeline: Pipeline, fields: dict) -> GenerationRequest:
    """A request's JSON object -> the checked request; the first problem found is a RequestError."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; expected some of {', '.join(FIELDS)}")
    prompt = check_prompt(pipeline, fields.get("prompt"))
    seed = fields.get("seed", DEFAULT_SEED)
    if not is_integer(seed) or not 0 <= seed <= MAX_SEED:
        raise RequestError(f"seed {_shown(seed)}: must be an integer >= 0 (at most {MAX_SEED})")
    rate, rounds = check_rate_and_rounds(pipeline, fields.get("fps"), fields.get("rounds"))
    return GenerationRequest(prompt=prompt, seed=seed, fps=rate, rounds=rounds, knobs=check_knobs(pipeline, fields))
