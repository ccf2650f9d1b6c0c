"""Saving and loading generator stage exports, with the contracts between them checked on load.

An export is a directory with `generator.json` (format, stage, model config, layout, and the text model, frame
tokenizer and rates it was trained against) beside its stage's weights file (`Stage.weights_file`): the image stage
stores every weight (`model.safetensors`), a video stage only what it trained (`temporal.safetensors`), and its
`generator.json` names the image export it extends, that export's weights checksum, the steady margin of its shards
and, for the key-frame stage, whether it learnt frame 0. A missing or altered image export is refused.

Knows files and specs; the comparison of checksums is `Provenance.check`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cogvideo_lite.model.config import GeneratorConfig, weight_fields
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import IMAGE, Stage, stage_named
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.provenance import CheckpointMismatch, Provenance, read_json_object, replacing, sha256_file

SPEC_FILE = "generator.json"
FULL_WEIGHTS = IMAGE.weights_file
FORMAT_VERSION = 1


class MalformedSpec(CheckpointMismatch):
    """A generator.json that is not a JSON object (a truncated or hand-edited copy); the message names the file."""


def layout_to_dict(layout: SequenceLayout) -> dict[str, Any]:
    return {**asdict(layout), "grid": list(layout.grid)}


def layout_from_dict(raw: dict[str, Any]) -> SequenceLayout:
    return SequenceLayout(text_length=raw["text_length"], num_frames=raw["num_frames"], grid=tuple(raw["grid"]),
                          text_vocab_size=raw["text_vocab_size"], codebook_size=raw["codebook_size"])


def save_stage(model: Generator, directory: Path, stage: Stage, contracts: dict[str, Any],
               image_dir: Path | None = None, learns_first_frame: bool = False, steady_margin: float = 0.0) -> Path:
    """Write a stage export atomically. contracts: the text model's spec, the frame tokenizer's config and weights
    sha256, and the rates the model was trained against. A video stage names the image export `image_dir` it extends;
    learns_first_frame: a key-frame model trained to generate frame 0 too (sampling then asks it, not the image model);
    steady_margin: the `prepare --steady-margin` of its shards, with which frames given to the stage are encoded."""
    spec = {"format": FORMAT_VERSION, "stage": stage.name, "model": asdict(model.config),
            "layout": layout_to_dict(model.layout), **contracts}
    weights = model.temporal_state_dict() if stage.is_video else model.state_dict()
    if stage.is_video:
        if image_dir is None:
            raise ValueError(f"a {stage.name} export needs the image export it extends")
        spec.update(learns_first_frame=bool(learns_first_frame), steady_margin=float(steady_margin),
                    image_export=str(Path(image_dir).resolve()),
                    image_weights_sha256=sha256_file(Path(image_dir) / FULL_WEIGHTS))
    with replacing(directory) as temporary:
        temporary.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, temporary / stage.weights_file)
        (temporary / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return Path(directory)


def read_spec(directory: Path, stage: Stage | None = None) -> dict[str, Any]:
    """An export's generator.json, of `stage` where one is named; malformed JSON is a MalformedSpec, another format or
    stage a CheckpointMismatch, each naming the file."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a generator export: {SPEC_FILE} is missing")
    try:
        spec = read_json_object(path)
    except ValueError as error:
        raise MalformedSpec(str(error)) from None
    if spec.get("format") != FORMAT_VERSION:
        raise CheckpointMismatch(f"{path}: format {spec.get('format')!r}, this code reads format {FORMAT_VERSION}")
    if stage is not None and spec.get("stage") != stage.name:
        raise CheckpointMismatch(f"{directory}: an export of stage {spec.get('stage')!r} where one of stage "
                                 f"{stage.name!r} was expected")
    return spec


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (never a pickle); a file that is not one is refused naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise CheckpointMismatch(f"{path}: not a readable safetensors file ({error})") from None


def load_image_model(directory: Path, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """The image-stage model, strictly loaded from safetensors."""
    spec = read_spec(directory, IMAGE)
    model = Generator(GeneratorConfig(**_tuples(spec["model"])), layout_from_dict(spec["layout"]))
    model.load_state_dict(read_weights(Path(directory) / FULL_WEIGHTS), strict=True)
    return model.to(device).eval(), spec


def load_stage(directory: Path, image_dir: Path | None = None, device: str | torch.device = "cpu",
               ) -> tuple[Generator, dict[str, Any]]:
    """Any stage export as a ready model. A video stage loads its image export first (from `image_dir`, else the
    path it recorded) and refuses it unless the checksum matches what it was trained on."""
    spec = read_spec(directory)
    stage = stage_named(spec.get("stage"))
    if not stage.is_video:
        return load_image_model(directory, device)
    image_dir = Path(image_dir or spec["image_export"])
    weights = image_dir / FULL_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} extends the image export {image_dir}, which is missing ({weights})")
    Provenance.of_export(spec).check(Provenance(image_export=sha256_file(weights)), str(directory / SPEC_FILE),
                                     str(weights))
    return extend_image(directory, spec, *load_image_model(image_dir, device)), spec


def extend_image(directory: Path, spec: dict[str, Any], image: Generator, image_spec: dict[str, Any]) -> Generator:
    """The video stage export at `directory` (its generator.json `spec`) over an image model already loaded, on that
    model's device. The caller has checked the image weights' checksum against the spec; this checks that the image
    model has the stage's architecture and layout (but for the frame count)."""
    for key, compared in (("model", weight_fields), ("layout", lambda layout: {**layout, "num_frames": None})):
        recorded, found = compared(spec[key]), compared(image_spec[key])
        if recorded != found:
            raise CheckpointMismatch(f"{directory}: {key} {recorded} differs from the image export's {found}")
    model = Generator(GeneratorConfig(**_tuples(spec["model"])), layout_from_dict(spec["layout"]))  # its own window
    model.load_state_dict(image.state_dict(), strict=True)
    model.load_temporal_state_dict(read_weights(Path(directory) / stage_named(spec["stage"]).weights_file))
    return model.to(next(image.parameters()).device).eval()


def _tuples(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
