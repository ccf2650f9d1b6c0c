"""Check a dataset folder before a long run:

    python -m cogvideo_lite.data.check DIR [--json OUT] [--num-frames 5] [--rates 1,2,4,8]
        [--text TEXT_DIR [--text-length 16]]

lists every bad entry (captions problems, videos that do not play, videos too short for one clip) with its
reason, prints a summary, optionally writes it all as JSON, and exits non-zero only when no clip is usable.
It runs the same scan as `ClipDataset`, so it reports every video that training would skip for its captions line
or its file. Caption length and special-token text are checked only with `--text` (a text model directory, as
`prepare --text`): then every caption is encoded as `prepare` encodes it (`TextTokenizer.encode_padded` with
`--text-length`, by default prepare's) and a caption that prepare would refuse is reported as "caption refused".
Without `--text`, such captions pass here and are skipped by `prepare`.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from cogvideo_lite.data.captions import Problem
from cogvideo_lite.data.datasets import ClipSource, DatasetReport, scan_clips
from cogvideo_lite.prepare.prepare import PrepareConfig
from cogvideo_lite.text import TextTokenizer

EXIT_USABLE = 0
EXIT_NOTHING_USABLE = 1
CAPTION_REFUSED = "caption refused"  # the reason prepare gives (prepare.plan_clips)


def parse_rates(text: str) -> list[int]:
    try:
        rates = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates {text!r}: expected comma-separated integers such as 1,2,4,8")
    if any(rate < 1 for rate in rates):
        raise argparse.ArgumentTypeError(f"--rates {text!r}: rates must be positive")
    return rates


def summary_lines(report: DatasetReport) -> list[str]:
    """Human-readable lines: each problem, then the totals by reason."""
    lines = [f"{problem.path}: {problem.reason}" + (f" ({problem.detail})" if problem.detail else "")
             for problem in report.problems]
    lines.append(f"good: {report.good}, bad: {len(report.problems)}")
    lines.extend(f"  {reason}: {count}" for reason, count in sorted(report.counts.items()))
    return lines


def refuse_captions(sources: list[ClipSource], report: DatasetReport, text: TextTokenizer, text_length: int) -> None:
    """Add to `report` the usable videos whose caption `prepare` would refuse, as prepare skips them: too many text
    ids for `text_length`, or the text of a special token such as `<fps_1>`."""
    for source in sources:
        try:
            text.encode_padded(source.entry.caption, text_length)  # what prepare.plan_clips calls
        except ValueError as error:  # PromptTooLong, or special-token text in the caption
            report.add(Problem(str(source.entry.video), CAPTION_REFUSED, str(error)))
            report.good -= 1


def check(root: Path, num_frames: int, rates: list[int], json_path: Path | None = None,
          text: TextTokenizer | None = None, text_length: int = PrepareConfig.text_length) -> int:
    """Scan `root` (and its captions with `text`, as prepare encodes them), print the findings, write JSON if asked;
    return the exit status."""
    try:
        sources, report = scan_clips(root, num_frames, rates)
    except (FileNotFoundError, ValueError) as error:  # no captions file, or two of them
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    if text is not None:
        refuse_captions(sources, report, text, text_length)
    print("\n".join(summary_lines(report)))
    if json_path is not None:
        findings = {
            "root": str(root),
            "num_frames": num_frames,
            "rates": rates,
            "text_length": text_length if text is not None else None,  # None: captions were not encoded
            "good": report.good,
            "counts": report.counts,
            "problems": [asdict(problem) for problem in report.problems],
        }
        json_path.write_text(json.dumps(findings, indent=2))
    if report.good == 0:
        print(f"error: no usable clip in {root}", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return EXIT_USABLE


def load_text(parser: argparse.ArgumentParser, directory: Path, rates: list[int]) -> TextTokenizer:
    """--text as prepare opens it; rates without an fps token are refused as prepare refuses them."""
    try:
        text = TextTokenizer.load(directory)
    except (OSError, ValueError, KeyError) as error:
        parser.error(f"--text {directory}: not a text tokenizer directory: {error}")
    missing = [rate for rate in rates if rate not in text.rates]
    if missing:
        parser.error(f"--text {directory}: has fps tokens for rates {text.rates}, not for {missing} (--rates); "
                     "prepare would refuse it")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List the bad entries of a video dataset before training on it.")
    parser.add_argument("root", type=Path, help="dataset folder with captions.jsonl or captions.csv")
    parser.add_argument("--json", type=Path, default=None, help="also write the findings to this JSON file")
    parser.add_argument("--num-frames", type=int, default=5, help="frames per clip")
    parser.add_argument("--rates", type=parse_rates, default=[1, 2, 4, 8], help="frame rates, e.g. 1,2,4,8")
    parser.add_argument("--text", type=Path, default=None,
                        help="text model directory (as prepare --text): also report the captions prepare would "
                             "refuse (too many text ids, special-token text); without it captions are not encoded")
    parser.add_argument("--text-length", type=int, default=None,
                        help=f"text ids per sample, as prepare --text-length (default {PrepareConfig.text_length}, "
                             "prepare's); only with --text")
    args = parser.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: the folder {args.json.parent} does not exist")
    if args.json is not None and args.json.is_dir():
        parser.error(f"--json {args.json}: is a folder; give a file name")
    if args.text is None:
        if args.text_length is not None:
            parser.error("--text-length has no effect without --text (the text model that counts the ids)")
        return check(args.root, args.num_frames, args.rates, args.json)
    text_length = PrepareConfig.text_length if args.text_length is None else args.text_length
    if text_length < 1:
        parser.error(f"--text-length {text_length}: expected an integer >= 1")
    return check(args.root, args.num_frames, args.rates, args.json, load_text(parser, args.text, args.rates),
                 text_length)


if __name__ == "__main__":
    sys.exit(main())
