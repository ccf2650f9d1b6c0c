"""What a file was made from, and writing files whole: checksums, the `Provenance` record, atomic writes.

A piece of work (token shards, a stage export, a training run) records the sha256 of what it was made from: the text
model, the frame tokenizer's weights and, for a video stage, the image export's weights; and the steady margin its
frame codes were encoded with. `Provenance` holds those, read from any of the files that store them (a shard
directory's meta.json, an export's generator.json, a run's inputs.json), and `Provenance.check` is the one comparison
every loader makes: a mismatch names both checksums and both places.

Files are written whole or not at all: `replacing(path)` hands out a temporary sibling and renames it over `path`
once it is complete, so a reader (or a run killed half way) sees the old file or folder or the new one, never a part.

Knows files and JSON; does not know what the files hold beyond these records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

TEMPORARY_SUFFIX = ".tmp"


class CheckpointMismatch(ValueError):
    """A file does not fit what loads it (other inputs, another stage, another format); the message names both."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield `path.tmp` to fill (a file or a folder); once the block ends it replaces `path` in one rename, and if
    the block fails it is removed. A stale `path.tmp`, left by a killed writer, is removed first."""
    path = Path(path)
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    remove(temporary)
    try:
        yield temporary
        if path.is_dir() and not path.is_symlink():  # a rename cannot replace a folder that holds files
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        remove(temporary)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` whole (flushed to disk before the rename), or leave the old file."""
    with replacing(path) as temporary, open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def remove(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`; ValueError naming the file when it is not JSON or holds another value."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


@dataclass(frozen=True)
class Provenance:
    """The sha256 of what a piece of work was made from (None: not part of it), and the steady margin of its codes
    (`prepare --steady-margin`; frames given to a stage at sampling time are encoded with it)."""

    text_model: str | None = None
    frame_tokenizer: str | None = None
    image_export: str | None = None
    steady_margin: float = 0.0

    # Each checksum's name in messages and in a run's inputs.json.
    LABELS = {"text_model": "text model sha256", "frame_tokenizer": "frame tokenizer weights sha256",
              "image_export": "image export weights sha256"}

    @classmethod
    def of_export(cls, spec: dict[str, Any]) -> Provenance:
        """From a stage export's generator.json (exports written before steady codes: margin 0)."""
        return cls(spec["text"]["model_sha256"], spec["frame_tokenizer"]["weights_sha256"],
                   spec.get("image_weights_sha256"), float(spec.get("steady_margin", 0.0)))

    @classmethod
    def of_shards(cls, meta: dict[str, Any]) -> Provenance:
        """From a token-shard directory's meta.json."""
        return cls(meta["text_model_sha256"], meta["frame_tokenizer"]["weights_sha256"],
                   steady_margin=float(meta.get("prepare", {}).get("steady_margin", 0.0)))

    @classmethod
    def of_inputs(cls, inputs: dict[str, str]) -> Provenance:
        """From a run's inputs.json (`to_inputs`)."""
        return cls(**{name: inputs.get(label) for name, label in cls.LABELS.items()})

    def to_inputs(self) -> dict[str, str]:
        """The checksums this record holds, by label: a run's inputs.json."""
        return {label: getattr(self, name) for name, label in self.LABELS.items() if getattr(self, name)}

    def mismatches(self, found: Provenance, where: str, found_where: str) -> list[str]:
        """One line per checksum that `found` holds and this record does not match (recorded None counts)."""
        return [_mismatch(label, getattr(self, name), getattr(found, name), where, found_where)
                for name, label in self.LABELS.items()
                if getattr(found, name) is not None and getattr(self, name) != getattr(found, name)]

    def check(self, found: Provenance, where: str, found_where: str) -> None:
        """CheckpointMismatch naming both values of the first checksum `found` holds that this record differs in."""
        for line in self.mismatches(found, where, found_where)[:1]:
            raise CheckpointMismatch(line)


def require_same(what: str, recorded: Any, found: Any, where: str, found_where: str) -> None:
    """The comparison of any other recorded contract (a config, the rates, a layout), in the form of the checksums'."""
    if recorded != found:
        raise CheckpointMismatch(_mismatch(what, recorded, found, where, found_where))


def _mismatch(what: str, recorded: Any, found: Any, where: str, found_where: str) -> str:
    return f"{where} records {what} {recorded}, but {found_where} has {found}"
