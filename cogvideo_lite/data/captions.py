"""A dataset's captions file: `captions.jsonl` (`{"video": ..., "caption": ...}` per line) or `captions.csv`
(header `video,caption`, one record per row, RFC 4180 quoting: a quoted caption may span lines), in the dataset
folder, with video paths relative to that folder. Both are UTF-8; a leading byte-order mark (Excel's "CSV UTF-8")
is dropped.

Every line (CSV: every record, named by the line it starts on) is checked on its own; a bad one becomes a Problem
naming `file:line` and the reason, and the rest of the file still loads. This module knows nothing of decoding:
it checks that a video file exists, not that it plays (that is `video.probe`'s job).
"""

import codecs
import csv
import io
import json
import os
from collections.abc import Iterator
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
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    for number, raw in enumerate(data.splitlines(), start=1):
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


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str] | Problem]]:
    """(line the record starts on, its fields or a Problem) for each CSV record, blank lines dropped. Bytes that
    are not UTF-8 come through as lone surrogates, for `_is_utf8` to flag per record.

    Records are read as RFC 4180 (a quoted field may span lines). A record the strict reader refuses is read again
    on its own line: leniently where it is a stray character after a closing quote (`"a red circle" ,` loads, as it
    always did), and as a Problem where a quote is never closed; reading goes on at the next line either way, so one
    bad record never takes the rest of the file with it."""
    lines = path.read_bytes().decode("utf-8-sig", errors="surrogateescape").splitlines(keepends=True)
    offset = 0  # lines before the text the current reader reads
    while offset < len(lines):
        reader = csv.reader(io.StringIO("".join(lines[offset:]), newline=""), strict=True)  # keeps quoted breaks
        while True:
            number = offset + reader.line_num + 1  # line_num counts the lines read so far
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                if str(error) == "unexpected end of data":
                    detail = "unterminated quote: a quoted field opened on this line is never closed"
                    yield number, Problem(f"{path}:{number}", "malformed CSV", detail)
                else:
                    yield number, next(csv.reader([lines[number - 1]]))  # the lenient reading of that one line
                offset = number  # go on at the next line
                break
            if len(row) > 1 or "".join(row).strip():
                yield number, row


def _is_utf8(fields: list[str]) -> bool:
    try:
        "".join(fields).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: an undecodable byte kept by surrogateescape
        return False
    return True


def _csv_records(path: Path) -> list[tuple[int, dict | Problem]]:
    rows = _csv_rows(path)
    number, header = next(rows, (1, None))
    if not isinstance(header, list) or not _is_utf8(header):
        return [(number, Problem(f"{path}:{number}", "malformed CSV", f"expected a header {','.join(CSV_COLUMNS)}"))]
    if tuple(name.strip() for name in header) != CSV_COLUMNS:
        detail = f"header is {header}, expected {list(CSV_COLUMNS)}"
        return [(number, Problem(f"{path}:{number}", "malformed CSV", detail))]
    records = []
    for number, row in rows:
        where = f"{path}:{number}"
        if isinstance(row, Problem):
            records.append((number, row))
        elif not _is_utf8(row):
            records.append((number, Problem(where, "not UTF-8")))
        elif len(row) != len(CSV_COLUMNS):
            records.append((number, Problem(where, "malformed CSV", f"expected {len(CSV_COLUMNS)} columns, got {len(row)}")))
        else:
            records.append((number, dict(zip(CSV_COLUMNS, row))))
    return records


def _check_record(root: Path, where: str, number: int, record: dict) -> Entry | Problem:
    video = record.get("video")
    caption = record.get("caption")
    if not isinstance(video, str) or not video.strip():
        return Problem(where, "missing video field")
    if caption is None:  # the detail names the video, so that a person can find the clip the line is about
        return Problem(where, "missing caption", f"video {video}")
    if not isinstance(caption, str) or not caption.strip():
        return Problem(where, "empty caption", f"video {video}, caption {caption!r}")
    # Inside the dataset as written: a path that leaves it ("..", an absolute path elsewhere) is refused; a symlinked
    # folder in it may live elsewhere.
    path = Path(os.path.normpath(root / video))
    try:
        if "\x00" in video:
            raise ValueError("embedded null byte")  # is_file() would only say False
        inside = path.is_relative_to(root)
        found = inside and path.is_file()
    except (OSError, ValueError) as error:  # a NUL byte in the path, a name longer than the file system allows
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return Problem(where, "invalid video path", f"{reason}: {video!r}")
    if not inside:
        return Problem(where, "path outside dataset", video)
    if not found:
        return Problem(where, "file not found", video)
    return Entry(video=path, caption=caption.strip(), line=number)


def load_entries(root: str | Path) -> tuple[list[Entry], list[Problem]]:
    """Read the captions file in `root`. Returns the good entries in file order and one Problem per bad line
    (malformed JSON or CSV, not UTF-8, missing video field, missing or empty caption, invalid video path (a NUL
    byte, a name too long), path outside the dataset, file not found, duplicate entry: a second line naming a video
    already listed)."""
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
