"""Saving and loading generator stages, with the contracts between them checked on load.

An image-stage export is a directory with `generator.json` (model config, layout, the text model and frame tokenizer
it was trained against) and `model.safetensors` (every weight). A video-stage export (key-frame or interpolation)
stores only what the stage trained, `temporal.safetensors`, beside a `generator.json` that names the image export it
extends and that export's weights checksum: a missing or altered image export is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cogvideo_lite.train.checkpoint import sha256_file
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.transformer import Generator

SPEC_FILE = "generator.json"
FULL_WEIGHTS = "model.safetensors"
TEMPORAL_WEIGHTS = "temporal.safetensors"
FORMAT_VERSION = 1


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit what loads it; the message names both values."""


class MalformedSpec(CheckpointMismatch):
    """A generator.json that is not a JSON object (a truncated or hand-edited copy); the message names the file."""


def layout_to_dict(layout: SequenceLayout) -> dict[str, Any]:
    return {"text_length": layout.text_length, "num_frames": layout.num_frames, "grid": list(layout.grid),
            "text_vocab_size": layout.text_vocab_size, "codebook_size": layout.codebook_size}


def layout_from_dict(raw: dict[str, Any]) -> SequenceLayout:
    return SequenceLayout(text_length=raw["text_length"], num_frames=raw["num_frames"], grid=tuple(raw["grid"]),
                          text_vocab_size=raw["text_vocab_size"], codebook_size=raw["codebook_size"])


def save_stage(model: Generator, directory: Path, stage: str, contracts: dict[str, Any],
               image_dir: Path | None = None, learns_first_frame: bool = False, steady_margin: float = 0.0) -> Path:
    """Write a stage export atomically. contracts: text/tokenizer checksums and specs the model was trained against.
    learns_first_frame: a key-frame model trained to generate frame 0 too (sampling then asks it, not the image model).
    steady_margin: the `prepare --steady-margin` of its shards; frames given to the stage are encoded the same way.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    spec = {"format": FORMAT_VERSION, "stage": stage, "model": asdict(model.config),
            "layout": layout_to_dict(model.layout), **contracts}
    if stage == "image":
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / FULL_WEIGHTS)
    else:
        if image_dir is None:
            raise ValueError(f"a {stage} export needs the image export it extends")
        save_file({k: v.cpu().contiguous() for k, v in model.temporal_state_dict().items()}, tmp / TEMPORAL_WEIGHTS)
        spec["learns_first_frame"] = bool(learns_first_frame)
        spec["steady_margin"] = float(steady_margin)
        spec["image_export"] = str(Path(image_dir).resolve())
        spec["image_weights_sha256"] = sha256_file(Path(image_dir) / FULL_WEIGHTS)
    (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def read_spec(directory: Path) -> dict[str, Any]:
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a generator export: {SPEC_FILE} is missing")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MalformedSpec(f"{path} is not valid JSON ({error})") from None
    if not isinstance(spec, dict):
        raise MalformedSpec(f"{path} holds a JSON {type(spec).__name__}, expected an object")
    if spec.get("format") != FORMAT_VERSION:
        raise CheckpointMismatch(f"{path}: format {spec.get('format')!r}, this code reads format {FORMAT_VERSION}")
    return spec


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (never a pickle); a file that is not one is refused naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise CheckpointMismatch(f"{path}: not a readable safetensors file ({error})") from None


def load_image_model(directory: Path, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """The image-stage model, strictly loaded from safetensors."""
    spec = read_spec(directory)
    if spec["stage"] != "image":
        raise CheckpointMismatch(f"{directory}: a {spec['stage']} export where an image export was expected")
    model = Generator(GeneratorConfig(**_tuples(spec["model"])), layout_from_dict(spec["layout"]))
    model.load_state_dict(read_weights(Path(directory) / FULL_WEIGHTS), strict=True)
    return model.to(device).eval(), spec


def load_stage(directory: Path, image_dir: Path | None = None, device: str | torch.device = "cpu",
               ) -> tuple[Generator, dict[str, Any]]:
    """Any stage export as a ready model. A video stage loads its image export first (from `image_dir`, else the
    path it recorded) and refuses it unless the checksum matches what it was trained on."""
    spec = read_spec(directory)
    if spec["stage"] == "image":
        return load_image_model(directory, device)
    image_dir = Path(image_dir or spec["image_export"])
    weights = image_dir / FULL_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} extends the image export {image_dir}, which is missing ({weights})")
    require_image_export(spec, image_dir, str(directory))
    model, image_spec = load_image_model(image_dir, device)
    for key in ("model", "layout"):
        expected = {**spec[key], "num_frames": None} if key == "layout" else spec[key]
        actual = {**image_spec[key], "num_frames": None} if key == "layout" else image_spec[key]
        if expected != actual:
            raise CheckpointMismatch(f"{directory}: {key} {expected} differs from the image export's {actual}")
    model.layout = layout_from_dict(spec["layout"])
    model.load_temporal_state_dict(read_weights(Path(directory) / TEMPORAL_WEIGHTS))
    return model.to(device).eval(), spec


def require_image_export(spec: dict[str, Any], image_dir: Path, where: str) -> None:
    """A video-stage spec must name the sha256 of the image export at `image_dir` (the weights it was trained on)."""
    weights = Path(image_dir) / FULL_WEIGHTS
    found = sha256_file(weights)
    if found != spec["image_weights_sha256"]:
        raise CheckpointMismatch(f"{where} was trained on image weights sha256 {spec['image_weights_sha256']}, "
                                 f"but {weights} has sha256 {found} (altered or another run)")


def require_same(what: str, expected: Any, found: Any, where: str) -> None:
    if expected != found:
        raise CheckpointMismatch(f"{where}: {what} is {found!r}, expected {expected!r}")


def _tuples(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
