"""The command-line layer every command shares: `sample.py`, `python -m cogvideo_lite.evaluate`, `prepare`, `text`,
`bundle` and `data.check` take their common options here and turn bad input into one line on stderr and exit code 2
(argparse's `parser.error`), before any work starts.

What is shared: prompts files (UTF-8, a byte-order mark dropped, blank and invisible lines skipped), the device, a
bundle loaded into a `Pipeline`, the sampling knobs (given flags, else the bundle's sampling.json, else the built-in
values; `sample.knobs.resolve_knobs`), the key-frame rate and interpolation rounds (`resolve_rate_and_rounds` of
`sample.pipeline`), integer minimums, frame-rate lists, and errors raised by the library named by the option they
came from.

Knows argparse and the library's entry points; the library below it validates nothing twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from cogvideo_lite.sample.knobs import BUILTIN_KNOBS, SamplingKnobs, Spelling, knobs_from, resolve_knobs
from cogvideo_lite.text import is_blank, not_utf8, parse_rates

if TYPE_CHECKING:
    import torch

    from cogvideo_lite.sample.pipeline import Pipeline

OPTIONS = Spelling(lambda name: "--" + name.replace("_", "-"))  # messages name an input by its option: --top-k 0


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser, *kinds: type[BaseException], prefix: str = "",
                hint: str = "") -> Iterator[None]:
    """An error of `kinds` (default ValueError and OSError) raised inside the block becomes a command-line error:
    `prefix: message; hint`, on one line."""
    try:
        yield
    except kinds or (ValueError, OSError) as error:
        message = " ".join(str(error).split())
        if prefix:
            message = f"{prefix}: {message}"
        parser.error(f"{message}; {hint}" if hint else message)


def require_at_least(parser: argparse.ArgumentParser, args: argparse.Namespace, **minimums: int) -> None:
    """`--name N: must be >= least` for each option (by its attribute name) given below its minimum."""
    for name, least in minimums.items():
        value = getattr(args, name, None)  # an option of another mode: absent
        if value is not None and value < least:
            parser.error(f"{OPTIONS(name, value)}: must be >= {least}")


def write_json(path: Path | None, record: dict) -> None:
    """A command's report as JSON (nothing when `path` is None)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


def rates_argument(text: str) -> tuple[int, ...]:
    """--rates: comma-separated frame rates, each twice the one before (`text.parse_rates`), as an argparse type."""
    try:
        return parse_rates(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ----------------------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------------------

def prompt_lines(parser: argparse.ArgumentParser, path: Path) -> list[tuple[str, str]]:
    """(where, caption) per non-blank line of a prompts file (`--prompts`): UTF-8, a leading byte-order mark dropped;
    `where` names it in messages ('--prompts FILE line 5'). A file that cannot serve is a command-line error."""
    flag = f"--prompts {path}"
    if not path.is_file():
        parser.error(f"{flag}: no such file; give a text file with one caption per line")
    try:
        text = path.read_text(encoding="utf-8-sig")  # the BOM some editors write is not part of the first caption
    except UnicodeDecodeError as error:
        parser.error(f"{flag}: {not_utf8(error)}; save the file as UTF-8")
    except OSError as error:
        parser.error(f"{flag}: cannot be read ({error.strerror}); give a readable text file")
    lines = [(f"{flag} line {number}", line.strip())  # universal newlines: line numbers as editors count them
             for number, line in enumerate(text.split("\n"), start=1) if not is_blank(line)]
    if not lines:
        parser.error(f"{flag}: no captions (only blank lines); write one caption per line")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Bundles and sampling
# ----------------------------------------------------------------------------------------------------------------

def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and the sampling knobs. A knob left out takes the bundle's recommendation (its sampling.json), else
    BUILTIN_KNOBS: see `sampling_knobs`."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--temperature", type=float, help="> 0; lower is more conservative (default 1)")
    parser.add_argument("--top-k", type=int, help="keep the k most likely codes (default: all)")
    parser.add_argument("--interp-top-k", type=int,
                        help="top-k of the interpolation rounds (default: as --top-k; 1 = greedy in-betweens)")
    parser.add_argument("--top-p", type=float, help="nucleus mass in (0, 1]; 1 (the default) turns it off")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale >= 0; 1 (the default) = none")
    parser.add_argument("--expert-weight", type=float,
                        help="weight >= 0 of the bundle's image expert (default 0: none; needs a bundle with an "
                             "expert/ part)")
    parser.add_argument("--interp-expert-weight", type=float,
                        help="the image expert's weight in the interpolation rounds (default: as --expert-weight)")
    parser.add_argument("--decode", metavar="MODE",
                        help="how many codes a pass of the generator draws: 'sequential' (one; the reference order), "
                             "'exact' (the default: every code as soon as all it sees is drawn, several frames per "
                             "pass under a local temporal window; the same codes as sequential), or 'diagonal-R-F' "
                             "(approximate, any model: a row starts R codes after the row above, a frame F rows after "
                             "the frame before; about 2x faster on the shipped bundle, at a measured cost in quality: "
                             "BENCHMARKS.md)")
    parser.epilog = ((parser.epilog or "") + "\nSampling knobs left out take the bundle's recommended values "
                     "(its sampling.json), else the defaults above.").strip()


def device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def load_pipeline(parser: argparse.ArgumentParser, directory: Path, device_name: str) -> Pipeline:
    """The bundle at --ckpt on --device; a bundle that cannot load is a command-line error naming why."""
    from safetensors import SafetensorError

    from cogvideo_lite.sample.pipeline import Pipeline

    on = device(parser, device_name)
    with user_errors(parser, ValueError, OSError, KeyError, SafetensorError, prefix=f"--ckpt {directory}",
                     hint="pass a bundle made by python -m cogvideo_lite.bundle"):
        return Pipeline.load(directory, on)


def sampling_knobs(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   pipeline: Pipeline | None) -> tuple[SamplingKnobs, SamplingKnobs]:
    """The knobs of the key frames and of the interpolation rounds: each flag given, else the bundle's
    recommendation, else the built-in value; a refused value, or an expert weight without an expert, is a
    command-line error that says what it must be."""
    given = {name: getattr(args, name) for name in BUILTIN_KNOBS if getattr(args, name) is not None}
    recommended = {} if pipeline is None else pipeline.recommended_knobs
    has_expert = pipeline is None or pipeline.expert is not None  # without a bundle nothing is sampled
    with user_errors(parser, ValueError):
        values = resolve_knobs(given, recommended, has_expert, OPTIONS)
    vars(args).update(values)  # the arguments a command reports are the ones it used
    return knobs_from(values)


def rate_and_rounds(parser: argparse.ArgumentParser, rates: tuple[int, ...], rate: int | None,
                    rounds: int | None) -> tuple[int, int]:
    """The key-frame rate (--fps, default the lowest of the set) and the interpolation rounds (--rounds, default as
    many as the rates allow)."""
    from cogvideo_lite.sample.pipeline import resolve_rate_and_rounds

    with user_errors(parser, ValueError):
        return resolve_rate_and_rounds(rates, rate, rounds, OPTIONS)
