"""A dataset's captions file: `captions.jsonl` (`{"video": ..., "caption": ...}` per line) or `captions.csv`
(header `video,caption`, one record per line), in the dataset folder, with video paths relative to that folder.

Every line is checked on its own; a bad line becomes a Problem naming `file:line` and the reason, and the rest
of the file still loads. This module knows nothing of decoding: it checks that a video file exists, not that
it plays (that is `video.probe`'s job).
"""

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

CAPTION_FILES = ("captions.jsonl", "captions.csv")
CSV_COLUMNS = ("video", "caption")


@dataclass(frozen=True)
class Entry:
    """One usable line: the video's resolved path, its caption, and the 1-based line it came from."""

    video: Path
    caption: str
    line: int


@dataclass(frozen=True)
class Problem:
    """A bad line or file. path: `file:line` or a file; reason: a short category (counted in reports);
    detail: the specifics (an error message, the offending value)."""

    path: str
    reason: str
    detail: str = ""


def find_captions_file(root: Path) -> Path:
    """The one captions file in `root`; FileNotFoundError if none, ValueError if both kinds are there."""
    found = [root / name for name in CAPTION_FILES if (root / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{root}: no captions file (expected one of {', '.join(CAPTION_FILES)})")
    if len(found) > 1:
        raise ValueError(f"{root}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0]


def _decoded_lines(path: Path) -> list[tuple[int, str | None]]:
    """(1-based line number, text or None where the bytes are not UTF-8), blank lines dropped."""
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            lines.append((number, None))
            continue
        if text.strip():
            lines.append((number, text))
    return lines


def _jsonl_records(path: Path) -> list[tuple[int, dict | Problem]]:
    records = []
    for number, text in _decoded_lines(path):
        where = f"{path}:{number}"
        if text is None:
            records.append((number, Problem(where, "not UTF-8")))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            records.append((number, Problem(where, "malformed JSON", str(error))))
            continue
        if not isinstance(record, dict):
            records.append((number, Problem(where, "malformed JSON", f"expected an object, got {type(record).__name__}")))
            continue
        records.append((number, record))
    return records


def _csv_records(path: Path) -> list[tuple[int, dict | Problem]]:
    lines = _decoded_lines(path)
    if not lines or lines[0][1] is None:
        return [(1, Problem(f"{path}:1", "malformed CSV", f"expected a header {','.join(CSV_COLUMNS)}"))]
    header = next(csv.reader([lines[0][1]]))
    if tuple(name.strip() for name in header) != CSV_COLUMNS:
        return [(1, Problem(f"{path}:1", "malformed CSV", f"header is {header}, expected {list(CSV_COLUMNS)}"))]
    records = []
    for number, text in lines[1:]:
        where = f"{path}:{number}"
        if text is None:
            records.append((number, Problem(where, "not UTF-8")))
            continue
        row = next(csv.reader(io.StringIO(text)))
        if len(row) != len(CSV_COLUMNS):
            records.append((number, Problem(where, "malformed CSV", f"expected {len(CSV_COLUMNS)} columns, got {len(row)}")))
            continue
        records.append((number, dict(zip(CSV_COLUMNS, row))))
    return records


def _check_record(root: Path, where: str, number: int, record: dict) -> Entry | Problem:
    video = record.get("video")
    caption = record.get("caption")
    if not isinstance(video, str) or not video.strip():
        return Problem(where, "missing video field")
    if caption is None:
        return Problem(where, "missing caption")
    if not isinstance(caption, str) or not caption.strip():
        return Problem(where, "empty caption", repr(caption))
    resolved = (root / video).resolve()
    if not resolved.is_relative_to(root):
        return Problem(where, "path outside dataset", video)
    if not resolved.is_file():
        return Problem(where, "file not found", video)
    return Entry(video=resolved, caption=caption.strip(), line=number)


def load_entries(root: str | Path) -> tuple[list[Entry], list[Problem]]:
    """Read the captions file in `root`. Returns the good entries in file order and one Problem per bad line
    (malformed JSON or CSV, not UTF-8, missing video field, missing or empty caption, path outside the dataset,
    file not found, duplicate entry: a second line naming a video already listed)."""
    root = Path(root).resolve()
    captions_file = find_captions_file(root)
    read = _jsonl_records if captions_file.suffix == ".jsonl" else _csv_records
    entries, problems, seen = [], [], {}
    for number, record in read(captions_file):
        if isinstance(record, Problem):
            problems.append(record)
            continue
        where = f"{captions_file}:{number}"
        checked = _check_record(root, where, number, record)
        if isinstance(checked, Problem):
            problems.append(checked)
        elif checked.video in seen:
            problems.append(Problem(where, "duplicate entry", f"{record['video']} first listed on line {seen[checked.video]}"))
        else:
            seen[checked.video] = number
            entries.append(checked)
    return entries, problems
