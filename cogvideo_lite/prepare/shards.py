"""Token shards: a dataset encoded once into frame codes and text ids, stored as numpy arrays read memory-mapped.

Layout of a shard directory:
    meta.json          num_samples (null until the writer is closed), num_frames, grid, text_length, rates,
                       frame_tokenizer {config, weights_sha256}, text_model_sha256, source, and whatever else the
                       producer records (prepare.py records its arguments)
    part-00000/        codes.npy (N, T, h, w) int16, text.npy (N, L) int32, fps.npy (N,) int16 frames per second,
                       source.jsonl (one JSON object per sample: video, start, rate, caption, ...)
    part-00001/ ...
A part is written to `part-XXXXX.tmp/` and renamed when complete (`provenance.replacing`), so a part directory
without `.tmp` is whole.

What it does not know: how codes and text ids are produced (prepare.py), what they mean (layout.py), the model.
Opening an existing directory with a different meta is refused naming the keys that differ, so parts made with
one tokenizer are never mixed with parts made by another.

Where the idea comes from: decode and tokenize once, as LlamaGen's code-extraction step does between its tokenizer
and its transformer, here with a self-describing meta so the contract is checked, not re-derived.
"""

from __future__ import annotations

import bisect
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from cogvideo_lite.provenance import TEMPORARY_SUFFIX, replacing, write_atomic

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
TEXT_COPY = "text"  # the shard directory's copy of the text model its text ids come from
CODES_FILE = "codes.npy"
TEXT_FILE = "text.npy"
FPS_FILE = "fps.npy"
SOURCE_FILE = "source.jsonl"
PART_DIGITS = 5
CODES_DTYPE = np.int16  # codebooks up to 32,768 codes; CogVideo's 20,000-code tokenizer fits
TEXT_DTYPE = np.int32
FPS_DTYPE = np.int16
REQUIRED_META_KEYS = ("num_frames", "grid", "text_length", "rates", "frame_tokenizer", "text_model_sha256", "source")


class ShardError(ValueError):
    """A shard directory is missing, incomplete, malformed, or was made for other tokenizers or arguments."""


def part_name(index: int) -> str:
    return f"part-{index:0{PART_DIGITS}d}"


def read_meta(directory: Path) -> dict:
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        raise ShardError(f"no token shards at {directory}: {meta_path} is missing (run python -m cogvideo_lite.prepare)")
    return json.loads(meta_path.read_text())


def meta_differences(existing: dict, wanted: dict, prefix: str = "") -> list[str]:
    """'key: existing X, wanted Y' for every (nested) key whose values differ; num_samples is not compared."""
    differences = []
    for key in sorted(set(existing) | set(wanted)):
        if not prefix and key == "num_samples":
            continue
        old, new = existing.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += meta_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: existing {old!r}, wanted {new!r}")
    return differences


def complete_part_directories(directory: Path) -> list[Path]:
    """The complete parts in order; a gap in the numbering is an error naming the missing part."""
    parts = sorted(path for path in Path(directory).glob("part-*") if path.is_dir() and not path.name.endswith(TEMPORARY_SUFFIX))
    for index, path in enumerate(parts):
        if path.name != part_name(index):
            raise ShardError(f"token shards at {directory}: expected {part_name(index)}, found {path.name}")
    return parts


def read_sources(part: Path) -> list[dict]:
    return [json.loads(line) for line in (part / SOURCE_FILE).read_text().splitlines() if line]


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------

class ShardWriter:
    """Appends samples to a shard directory, flushing a complete part every `part_size` samples.

    meta.json is written with the first part and completed by `close`. Opening a directory that already holds
    shards with the same meta continues after its complete parts
    (`num_parts` and `num_samples` say where it stopped; `read_sources` of its parts, what they hold); a different
    meta raises ShardError.
    """

    def __init__(self, directory: Path, meta: dict, part_size: int):
        missing = [key for key in REQUIRED_META_KEYS if key not in meta]
        if missing:
            raise ShardError(f"shard meta lacks keys {missing}; required are {list(REQUIRED_META_KEYS)}")
        if not {"config", "weights_sha256"} <= set(meta["frame_tokenizer"]):
            raise ShardError(f"shard meta frame_tokenizer needs 'config' and 'weights_sha256', got "
                             f"{sorted(meta['frame_tokenizer'])}")
        if part_size <= 0:
            raise ShardError(f"part_size must be positive, got {part_size}")
        self.directory = Path(directory)
        self.part_size = part_size
        self.meta = json.loads(json.dumps({**meta, "num_samples": None}))  # tuples -> lists, as stored
        self._open_directory()
        self._buffer: list[tuple[np.ndarray, np.ndarray, int, dict]] = []

    def _open_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        meta_path = self.directory / META_FILE
        if meta_path.is_file():
            existing = read_meta(self.directory)
            differences = meta_differences(existing, self.meta)
            if differences:
                raise ShardError(f"{meta_path} was written with other settings; refusing to mix shards. "
                                 f"Differences: {'; '.join(differences)}. Use another output directory.")
            self.meta["num_samples"] = existing["num_samples"]
        elif complete_part_directories(self.directory):
            raise ShardError(f"{self.directory} holds parts but no {META_FILE}; their settings are unknown")
        for leftover in self.directory.glob(f"part-*{TEMPORARY_SUFFIX}"):
            logger.info("removing unfinished part %s", leftover)
            shutil.rmtree(leftover)
        parts = complete_part_directories(self.directory)
        self.num_parts = len(parts)
        self.num_samples = sum(len(np.load(part / FPS_FILE, mmap_mode="r")) for part in parts)

    @property
    def is_complete(self) -> bool:
        """True once a writer with this meta has been closed: nothing more belongs in the directory."""
        return self.meta["num_samples"] is not None

    def add(self, codes: torch.Tensor | np.ndarray, text: list[int] | np.ndarray, fps: int, source: dict) -> None:
        """Append one sample: codes (T, h, w) integers in [0, 32767], text (L,) ids, fps in frames/s, source info."""
        if self.is_complete:
            raise ShardError(f"token shards at {self.directory} are complete; nothing can be added")
        codes = np.asarray(codes)
        text = np.asarray(text)
        expected_codes = (self.meta["num_frames"], *self.meta["grid"])
        if codes.shape != expected_codes or text.shape != (self.meta["text_length"],):
            raise ShardError(f"sample from {source}: codes {codes.shape} and text {text.shape} do not match the "
                             f"shard meta: codes {expected_codes}, text ({self.meta['text_length']},)")
        if codes.min() < 0 or codes.max() > np.iinfo(CODES_DTYPE).max:
            raise ShardError(f"sample from {source}: codes span [{codes.min()}, {codes.max()}], outside int16")
        if fps not in self.meta["rates"]:
            raise ShardError(f"sample from {source}: rate {fps} is not one of the shard rates {self.meta['rates']}")
        self._buffer.append((codes.astype(CODES_DTYPE), text.astype(TEXT_DTYPE), int(fps), source))
        if len(self._buffer) == self.part_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples as the next complete part (nothing if the buffer is empty)."""
        if not self._buffer:
            return
        if not (self.directory / META_FILE).is_file():  # written with the first part: a run that fails early leaves none
            write_atomic(self.directory / META_FILE, json.dumps(self.meta, indent=2) + "\n")
        codes, text, fps, sources = zip(*self._buffer)
        with replacing(self.directory / part_name(self.num_parts)) as temporary:
            temporary.mkdir()
            np.save(temporary / CODES_FILE, np.stack(codes))  # (N, T, h, w) int16
            np.save(temporary / TEXT_FILE, np.stack(text))  # (N, L) int32
            np.save(temporary / FPS_FILE, np.array(fps, dtype=FPS_DTYPE))  # (N,) int16
            (temporary / SOURCE_FILE).write_text("".join(json.dumps(source) + "\n" for source in sources))
        self.num_parts += 1
        self.num_samples += len(self._buffer)
        self._buffer = []

    def close(self) -> int:
        """Flush the last (possibly short) part and record num_samples in meta.json; returns num_samples."""
        self.flush()
        self.meta["num_samples"] = self.num_samples
        write_atomic(self.directory / META_FILE, json.dumps(self.meta, indent=2) + "\n")
        return self.num_samples


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------

class TokenShards:
    """All parts of a complete shard directory as one indexable dataset of memory-mapped samples."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._meta = read_meta(self.directory)
        meta_path = self.directory / META_FILE
        missing = [key for key in REQUIRED_META_KEYS + ("num_samples",) if key not in self._meta]
        if missing:
            raise ShardError(f"{meta_path} lacks keys {missing}")
        if self._meta["num_samples"] is None:
            raise ShardError(f"token shards at {self.directory} are incomplete ({meta_path} has no num_samples); "
                             f"re-run prepare with the same arguments to finish them")
        self._parts = [self._open_part(part) for part in complete_part_directories(self.directory)]
        sizes = [len(fps) for _, _, fps in self._parts]
        self._starts = np.cumsum([0] + sizes).tolist()
        if self._starts[-1] != self._meta["num_samples"]:
            raise ShardError(f"{meta_path} says num_samples={self._meta['num_samples']} but the "
                             f"{len(self._parts)} parts hold {self._starts[-1]}")
        self._fps = np.concatenate([fps for _, _, fps in self._parts] or [np.zeros(0, FPS_DTYPE)])  # (N,)

    def _open_part(self, part: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        arrays = {}
        for name, dtype in ((CODES_FILE, CODES_DTYPE), (TEXT_FILE, TEXT_DTYPE), (FPS_FILE, FPS_DTYPE)):
            path = part / name
            if not path.is_file():
                raise ShardError(f"token shard file {path} is missing")
            arrays[name] = np.load(path, mmap_mode="r")
            if arrays[name].dtype != dtype:
                raise ShardError(f"{path} has dtype {arrays[name].dtype}, expected {np.dtype(dtype)}")
        codes, text, fps = arrays[CODES_FILE], arrays[TEXT_FILE], arrays[FPS_FILE]
        size = len(fps)
        expected = {CODES_FILE: (size, self._meta["num_frames"], *self._meta["grid"]),
                    TEXT_FILE: (size, self._meta["text_length"]), FPS_FILE: (size,)}
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ShardError(f"{part / name} has shape {arrays[name].shape}, expected {shape} from {META_FILE}")
        num_sources = len(read_sources(part))
        if num_sources != size:
            raise ShardError(f"{part / SOURCE_FILE} has {num_sources} lines for {size} samples")
        return codes, text, fps

    def __getstate__(self) -> dict:
        return {"directory": self.directory}  # memory maps are reopened in each DataLoader worker

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    @property
    def meta(self) -> dict:
        return json.loads(json.dumps(self._meta))

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} token shard samples in {self.directory}")
        index %= len(self)
        part = bisect.bisect_right(self._starts, index) - 1
        return part, index - self._starts[part]

    def __getitem__(self, index: int) -> dict:
        """-> {"codes": int64 (T, h, w), "text": int64 (L,), "fps": int frames per second}."""
        part, row = self._locate(index)
        codes, text, fps = self._parts[part]
        return {"codes": torch.from_numpy(codes[row].astype(np.int64)),
                "text": torch.from_numpy(text[row].astype(np.int64)),
                "fps": int(fps[row])}

    def source(self, index: int) -> dict:
        """Where sample `index` came from (video, start, rate, caption, ...), read from its part's source.jsonl."""
        part, row = self._locate(index)
        return read_sources(self.directory / part_name(part))[row]

    def indices_with_rate(self, rates: tuple[int, ...] | list[int]) -> list[int]:
        """Indices of the samples whose frame rate is one of `rates`, in order."""
        return np.flatnonzero(np.isin(self._fps, list(rates))).tolist()
