"""Check a dataset folder before a long run:

    python -m cogvideo_lite.data.check DIR [--json OUT] [--num-frames 5] [--rates 1,2,4,8]

lists every bad entry (captions problems, videos that do not play, videos too short for one clip) with its
reason, prints a summary, optionally writes it all as JSON, and exits non-zero only when no clip is usable.
It runs the same scan as `ClipDataset`, so what it reports is exactly what training would skip.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from cogvideo_lite.data.datasets import DatasetReport, scan_clips

EXIT_USABLE = 0
EXIT_NOTHING_USABLE = 1


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


def check(root: Path, num_frames: int, rates: list[int], json_path: Path | None = None) -> int:
    """Scan `root`, print the findings, write JSON if asked; return the exit status."""
    try:
        _, report = scan_clips(root, num_frames, rates)
    except (FileNotFoundError, ValueError) as error:  # no captions file, or two of them
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    print("\n".join(summary_lines(report)))
    if json_path is not None:
        findings = {
            "root": str(root),
            "num_frames": num_frames,
            "rates": rates,
            "good": report.good,
            "counts": report.counts,
            "problems": [asdict(problem) for problem in report.problems],
        }
        json_path.write_text(json.dumps(findings, indent=2))
    if report.good == 0:
        print(f"error: no usable clip in {root}", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return EXIT_USABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List the bad entries of a video dataset before training on it.")
    parser.add_argument("root", type=Path, help="dataset folder with captions.jsonl or captions.csv")
    parser.add_argument("--json", type=Path, default=None, help="also write the findings to this JSON file")
    parser.add_argument("--num-frames", type=int, default=5, help="frames per clip")
    parser.add_argument("--rates", type=parse_rates, default=[1, 2, 4, 8], help="frame rates, e.g. 1,2,4,8")
    args = parser.parse_args(argv)
    return check(args.root, args.num_frames, args.rates, args.json)


if __name__ == "__main__":
    sys.exit(main())
