"""Shared pieces of the benchmarks: the machine record, timing (warm-up, timed repeats, medians), tables, JSON,
and the sequence layouts and text model of the registered sizes.

Knows nothing of what a benchmark measures and never judges a speed: each script in `bench/` decides what it times,
prints a table and, with `--json OUT`, writes the same rows together with the machine record.
The timing habit (discard warm-up runs, report the median of repeats) is the one of `timeit` and
`torch.utils.benchmark`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from cogvideo_lite.data.shapes import all_captions
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import STAGES
from cogvideo_lite.prepare.prepare import PrepareConfig
from cogvideo_lite.text import DEFAULT_RATES, DEFAULT_VOCAB_SIZE, TEXT_MODEL_FILE, TextTokenizer, train_text_model
from tokenizer.config import TOKENIZER_SIZES

TEXT_LENGTH = PrepareConfig.text_length  # L of the shards that `prepare` writes by default
KEY_FRAMES = PrepareConfig.num_frames  # frame slots of the key-frame and interpolation stages (CogVideo: 5)


# ---------------------------------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def set_threads(threads: int) -> None:
    """Intra-op threads of torch for what follows (OMP_NUM_THREADS only sets the start value)."""
    if threads < 1:
        raise ValueError(f"threads={threads}: expected an integer >= 1")
    torch.set_num_threads(threads)


def machine_info() -> dict[str, Any]:
    """What a figure needs beside it: date, CPU, cores, torch version, threads, load, and the GPU if any."""
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # > threads: other jobs shared the cores
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Seconds of each timed run: wall clock, and CPU time of this process (all its threads). On a machine shared
    with other jobs the wall clock includes waiting for a core; single-threaded CPU time mostly does not."""

    wall: list[float]
    cpu: list[float]

    @property
    def seconds(self) -> float:
        return median(self.wall)

    @property
    def cpu_seconds(self) -> float:
        return median(self.cpu)


def measure(function: Callable[[], Any], warmup: int, repeats: int,
            synchronize: Callable[[], None] | None = None) -> Timing:
    """Time `repeats` calls of `function` after `warmup` untimed calls."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup={warmup}, repeats={repeats}: expected warmup >= 0 and repeats >= 1")
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        function()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return Timing(wall, cpu)


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------------- reporting
def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.3e}"
    return str(value)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Rows with the same keys, printed as aligned columns under `title`."""
    print(f"\n{title}")
    if not rows:
        print("  (no rows)")
        return
    columns = list(dict.fromkeys(column for row in rows for column in row))  # every key, in first-seen order
    cells = [[format_value(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("  " + "  ".join(column.rjust(width) for column, width in zip(columns, widths)))
    for line in cells:
        print("  " + "  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def base_parser(description: str, warmup: int, repeats: int, threads: int = 1) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results here")
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs; the median is reported")
    return parser


def report(benchmark: str, title: str, rows: list[dict[str, Any]], json_path: Path | None,
           settings: dict[str, Any], machine: dict[str, Any], notes: list[str] = ()) -> dict[str, Any]:
    """Print the table (and notes); write {benchmark, machine, settings, rows, notes} to `json_path` if given."""
    print_table(f"{title}  [{machine['cpu']}, {machine['threads']} thread(s), torch {machine['torch']}, "
                f"load {machine['load_average_1min']}, {machine['date']}]", rows)
    for note in notes:
        print(f"  note: {note}")
    record = {"benchmark": benchmark, "machine": machine, "settings": settings, "rows": rows, "notes": list(notes)}
    write_json(json_path, record)
    return record


def write_json(path: Path | None, record: dict[str, Any]) -> None:
    """Write `record` to `path` (nothing when `path` is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"  wrote {path}")


# ---------------------------------------------------------------------------------------------------- sizes
def text_tokenizer(directory: Path) -> TextTokenizer:
    """A real sentencepiece model trained on the built-in captions (well under a second), saved in `directory`."""
    return train_text_model(all_captions(), Path(directory) / TEXT_MODEL_FILE, DEFAULT_VOCAB_SIZE, DEFAULT_RATES)


def generator_layout(size: str, stage: str, text_vocab_size: int) -> SequenceLayout:
    """The sequence of a generator stage at a registered size: the size's frame-tokenizer grid and codebook, the
    default text length, 1 frame slot for the image stage and KEY_FRAMES for the video stages."""
    if stage not in STAGES or not STAGES[stage].is_generator:
        raise ValueError(f"stage={stage!r}: expected a generator stage")
    if size not in TOKENIZER_SIZES:
        raise ValueError(f"size={size!r}: expected one of {tuple(TOKENIZER_SIZES)}")
    tokenizer = TOKENIZER_SIZES[size]
    return SequenceLayout(text_length=TEXT_LENGTH, num_frames=KEY_FRAMES if STAGES[stage].is_video else 1,
                          grid=tokenizer.grid, text_vocab_size=text_vocab_size,
                          codebook_size=tokenizer.codebook_size)
