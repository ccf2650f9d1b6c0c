"""Run directories and atomic, rotated DeepSpeed checkpoints.

A run directory holds everything one training run wrote:

    run.json                 stage, resolved config and its hash (who owns this directory)
    config.yaml              the resolved config, for people
    metrics.jsonl            one JSON line per logged step
    checkpoints/latest       the tag of the newest complete checkpoint (written last, atomically)
    checkpoints/step-000500/ DeepSpeed engine state (weights, optimizer, scheduler, client state) + export/
    model/                   the final export (what later stages and sample.py read)

A checkpoint is written under `<tag>.partial`, completed, renamed, and only then named in `latest`, so a run killed
at any moment leaves either the old checkpoint or the new one visible, never half of one. This module does not know
what a model is: exporting is a callback of the stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

from cogvideo_lite.provenance import Provenance, replacing, write_atomic
from cogvideo_lite.train import distributed

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
COMPLETE_MARKER = "COMPLETE"
# Keys that may change between a run and its resumption without making it another run.
RESUMABLE_CHANGES = ("train.steps", "train.save_every", "train.log_every", "train.keep_checkpoints", "train.eval_every",
                     "train.num_workers", "train.compile")


class RunDirectoryError(RuntimeError):
    pass


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class RunDirectory:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.metrics_path = self.root / "metrics.jsonl"
        self.export_dir = self.root / "model"

    # -- ownership --------------------------------------------------------------------------------------------------

    def claim(self, config: dict[str, Any], resume: bool, overwrite: bool) -> None:
        """Make the directory this run's, or refuse. Call on the main rank only."""
        run_file = self.root / "run.json"
        if self.root.exists() and any(self.root.iterdir()):
            if overwrite:
                logger.warning("--overwrite: deleting the previous run in %s", self.root)
                shutil.rmtree(self.root)
            elif not run_file.exists():
                raise RunDirectoryError(
                    f"{self.root} is not empty and holds no cogvideo_lite run (no run.json); "
                    "choose another run_dir or pass --overwrite to replace its contents"
                )
            elif not resume:
                tag = self.latest_tag()
                raise RunDirectoryError(
                    f"{self.root} already holds a run (latest checkpoint: {tag or 'none'}); "
                    "pass --resume to continue it or --overwrite to start over"
                )
            else:
                previous = json.loads(run_file.read_text())["config"]
                changed = self._incompatible_changes(previous, config)
                if changed:
                    raise RunDirectoryError(
                        f"cannot resume {self.root}: the config differs from the run's own in "
                        + "; ".join(changed)
                        + " (use another run_dir, or --overwrite to start over)"
                    )
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        text = json.dumps(config, sort_keys=True)
        payload = {"stage": config["stage"], "config": config, "config_sha256": hashlib.sha256(text.encode()).hexdigest()}
        write_atomic(run_file, json.dumps(payload, indent=2))
        write_atomic(self.root / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def pin_inputs(self, inputs: Provenance, resume: bool) -> None:
        """Record the checksums of what the run reads besides its config (`Task.inputs`: an image export, a text
        model) in inputs.json; a resumed run must find the same ones, else it would go on training on weights its
        checkpoint no longer matches and export a model that names inputs it never saw. A run without a checkpoint yet
        has trained on nothing: its resume pins the inputs afresh. Call on the main rank only."""
        path = self.root / "inputs.json"
        checkpointed = resume and self.latest_tag() is not None  # no checkpoint: nothing to protect
        if checkpointed and path.exists():
            changed = Provenance.of_inputs(json.loads(path.read_text())).mismatches(inputs, str(path), "the run now")
            if changed:
                raise RunDirectoryError(
                    f"cannot resume {self.root}: what it reads changed since it started ({'; '.join(changed)}); "
                    "restore those files, or train a new run (another run_dir, or --overwrite)")
            return
        if checkpointed:
            logger.warning("--resume: %s records no input checksums (a run from an older version); recording the "
                           "current ones without a check", self.root)
        write_atomic(path, json.dumps(inputs.to_inputs(), indent=2, sort_keys=True))

    @staticmethod
    def _incompatible_changes(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
        old, new = flatten(previous), flatten(current)
        keys = sorted(set(old) | set(new))
        return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def latest_tag(self) -> str | None:
        """The newest complete checkpoint's tag; a pointer to a missing or incomplete one is ignored with a warning."""
        pointer = self.checkpoints / "latest"
        if not pointer.exists():
            return None
        tag = pointer.read_text().strip()
        if not (self.checkpoints / tag / COMPLETE_MARKER).exists():
            logger.warning("%s names %s, which is not a complete checkpoint; ignoring it", pointer, tag)
            complete = self.complete_tags()
            return complete[-1] if complete else None
        return tag

    def complete_tags(self) -> list[str]:
        if not self.checkpoints.exists():
            return []
        tags = [p.name for p in self.checkpoints.iterdir()
                if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX) and (p / COMPLETE_MARKER).exists()]
        return sorted(tags, key=_tag_step)

    def save(self, engine, step: int, client_state: dict[str, Any], export: Callable[[Path], None], keep: int) -> Path:
        """Write a checkpoint on every rank; visible only once complete. Returns its directory."""
        tag = f"step-{step:08d}"
        partial = tag + PARTIAL_SUFFIX
        if distributed.is_main() and (self.checkpoints / partial).exists():
            shutil.rmtree(self.checkpoints / partial)
        distributed.barrier()
        engine.save_checkpoint(str(self.checkpoints), tag=partial, client_state=client_state, save_latest=False)
        distributed.barrier()
        final = self.checkpoints / tag
        if distributed.is_main():
            export(self.checkpoints / partial / "export")
            write_atomic(self.checkpoints / partial / COMPLETE_MARKER, json.dumps({"step": step}))
            if final.exists():
                shutil.rmtree(final)
            os.replace(self.checkpoints / partial, final)
            write_atomic(self.checkpoints / "latest", tag)
            self._rotate(keep)
        distributed.barrier()
        return final

    def _rotate(self, keep: int) -> None:
        latest = self.latest_tag()
        for tag in self.complete_tags()[:-keep]:
            if tag != latest:  # renamed first, so a kill during the delete never leaves a half checkpoint "complete"
                doomed = self.checkpoints / (tag + PARTIAL_SUFFIX)
                os.replace(self.checkpoints / tag, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
        for stale in self.checkpoints.glob(f"*{PARTIAL_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)

    def publish(self, tag: str) -> Path:
        """Copy a checkpoint's export to `model/` (atomically); later stages and sample.py read it from there."""
        with replacing(self.export_dir) as temporary:
            shutil.copytree(self.checkpoints / tag / "export", temporary)
        return self.export_dir

    def log_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop metric lines written after the checkpoint we resume from (they will be written again)."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash: it is written again
                continue
            if record.get("step", 0) <= after_step:
                kept.append(line)
        write_atomic(self.metrics_path, "".join(line + "\n" for line in kept))


def _tag_step(tag: str) -> int:
    try:
        return int(tag.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1
