"""Sampling bundles: one directory holding, or pointing to, everything `sample.py` needs.

A bundle has five parts: `tokenizer/` (frame tokenizer export: config.json + model.safetensors), `text/`
(text.model + text.json), and the generator stage exports `image/`, `keyframe/`, `interpolate/`; optionally a sixth,
`expert/`: another image export of the same text model, frame tokenizer and layout (e.g. an image stage trained
longer than the one the video stages were trained on) that joins the frame loops at sampling time with
`--expert-weight` (`sample/generate.py`). They are either real subdirectories, or named by a `bundle.json` that maps
the five names (and `expert`) to paths (relative paths are resolved against the bundle directory), so a bundle can
point at the `model/` exports of training runs without copying them. An optional `sampling.json` holds the bundle's
recommended sampling knobs (any of temperature, top_k, interp_top_k, top_p, cfg, expert_weight,
interp_expert_weight), which `sample.py` and `evaluate` use for the knobs their command line leaves out.

Contracts (`check_contracts`, run by `Pipeline.load` and by `python -m cogvideo_lite.bundle` before and after
copying): the image export's recorded text-model sha256 equals the text model's; its recorded frame-tokenizer weights
sha256 equals the sha256 of the tokenizer's model.safetensors and its recorded tokenizer config equals config.json;
the video stages record the sha256 of THIS image export's model.safetensors, and the same text model, frame tokenizer
and rates; code grid, codebook size and text vocabulary agree with the layouts. Every file of every part must also
read: malformed JSON or a missing entry in a spec, and a weights file that does not open as safetensors (a truncated
copy: `safe_open` checks the header against the file size), are refused naming the part and the file.

This module reads bundles and checks them; it does not build models (`sample/pipeline.py`) nor make bundles
(`make.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from cogvideo_lite.bundle.exports import FULL_WEIGHTS, SPEC_FILE, MalformedSpec, layout_from_dict, read_spec
from cogvideo_lite.model.stages import GENERATOR_STAGES, IMAGE, INTERPOLATE, KEYFRAME, TOKENIZER, VIDEO_STAGES, Stage
from cogvideo_lite.provenance import CheckpointMismatch, Provenance, read_json_object, require_same, sha256_file
from cogvideo_lite.sample.knobs import check_recommended_knobs
from cogvideo_lite.text import TEXT_SPEC_FILE, TextTokenizer
from tokenizer.config import TokenizerConfig
from tokenizer.io import CONFIG_FILE, WEIGHTS_FILE, load_config

TEXT_PART = "text"
EXPERT_PART = "expert"  # an image export that may join the frame loops at sampling time (`--expert-weight`)
PART_NAMES = (TOKENIZER.name, TEXT_PART) + tuple(stage.name for stage in GENERATOR_STAGES)
OPTIONAL_PARTS = (EXPERT_PART,)
BUNDLE_MAP_FILE = "bundle.json"
SAMPLING_FILE = "sampling.json"  # optional: the bundle's recommended sampling knobs
CONTRACT_KEYS = ("text", "frame_tokenizer", "rates")  # what every stage spec records about its inputs
CONTRACT_ENTRIES = {"text": ("model_sha256",), "frame_tokenizer": ("config", "weights_sha256")}  # what the checks read


class BundleError(ValueError):
    """A bundle directory that cannot be used: a missing part, a malformed bundle.json, or a part file that cannot
    be read (malformed JSON, an entry missing, a truncated weights file); the message names the part and the file."""


def read_recommended_knobs(directory: str | Path) -> dict[str, float | int | None]:
    """The bundle's sampling.json (checked), or {} when it has none."""
    path = Path(directory) / SAMPLING_FILE
    if not path.is_file():
        return {}
    try:
        return check_recommended_knobs(read_json_object(path), str(path))
    except ValueError as error:
        raise BundleError(str(error)) from error


def resolve_parts(directory: str | Path) -> dict[str, Path]:
    """The five part directories of a bundle (and `expert` where it has one): from bundle.json if present, else the
    subdirectories."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist (expected a directory with "
                          f"{', '.join(PART_NAMES)} or a {BUNDLE_MAP_FILE})")
    map_path = directory / BUNDLE_MAP_FILE
    if map_path.is_file():
        parts = _read_bundle_map(map_path)
    else:
        parts = {name: directory / name for name in PART_NAMES}
        parts.update({name: directory / name for name in OPTIONAL_PARTS if (directory / name).is_dir()})
    for name, path in parts.items():
        if not path.is_dir():
            raise BundleError(f"bundle {directory}: part '{name}' is missing: {path} is not a directory")
    return parts


def _read_bundle_map(map_path: Path) -> dict[str, Path]:
    try:
        mapping = read_json_object(map_path)
    except ValueError as error:
        raise BundleError(str(error)) from None
    if not set(PART_NAMES) <= set(mapping) or not set(mapping) <= set(PART_NAMES + OPTIONAL_PARTS):
        raise BundleError(f"{map_path}: expected an object with the keys {list(PART_NAMES)} (and optionally "
                          f"{list(OPTIONAL_PARTS)}), got {sorted(mapping)}")
    return {name: (map_path.parent / str(path)).resolve() for name, path in mapping.items()}


# ----------------------------------------------------------------------------------------------------------------
# Reading the parts
# ----------------------------------------------------------------------------------------------------------------

def require_file(path: Path, part: str) -> Path:
    if not path.is_file():
        raise BundleError(f"part '{part}' is incomplete: {path} is missing")
    return path


def _require_weights(path: Path, part: str) -> Path:
    """A weights file that opens as safetensors: `safe_open` reads the header and refuses a file shorter (truncated)
    or longer than the tensors it lists, so a cut copy fails here, not at sampling time."""
    require_file(path, part)
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise BundleError(f"part '{part}': {path} is not a readable safetensors file ({error}); "
                          "truncated or not a weights file?") from None
    return path


def _read_text(directory: Path) -> TextTokenizer:
    """The text part's model, loaded with its text.json (which it checks the model's sha256 and special ids against)."""
    try:
        return TextTokenizer.load(directory)
    except FileNotFoundError:
        raise
    except KeyError as error:
        raise BundleError(f"part 'text': {directory / TEXT_SPEC_FILE} lacks the entry {error}") from None
    except (ValueError, TypeError, RuntimeError, OSError) as error:  # malformed JSON, a model sentencepiece refuses
        raise BundleError(f"part 'text': cannot load {directory / TEXT_SPEC_FILE} and its model ({error})") from None


def _read_tokenizer_config(directory: Path) -> TokenizerConfig:
    try:
        return load_config(require_file(directory / CONFIG_FILE, TOKENIZER.name).parent)
    except ValueError as error:  # malformed JSON or a bad entry; the message names the file
        raise BundleError(f"part 'tokenizer': {error}") from None


def _read_stage_spec(directory: Path, stage: Stage, part: str) -> dict[str, Any]:
    """A `stage` export's generator.json with the entries the contract checks read, its weights file opened:
    malformed JSON or a missing or malformed entry is a BundleError naming the part and the file (another format or
    stage a CheckpointMismatch, from read_spec)."""
    path = directory / SPEC_FILE
    try:
        spec = read_spec(directory, stage)  # a missing file: FileNotFoundError
    except MalformedSpec as error:
        raise BundleError(f"part '{part}': {error}") from None
    missing = [key for key in CONTRACT_KEYS + ("layout",) if key not in spec]
    if missing:
        raise BundleError(f"part '{part}': {path} lacks the entries {missing}")
    for key, entries in CONTRACT_ENTRIES.items():
        if not isinstance(spec[key], dict) or not set(entries) <= set(spec[key]):
            raise BundleError(f"part '{part}': {path} entry '{key}' must be an object with {list(entries)}, "
                              f"got {spec[key]!r}")
    try:
        layout_from_dict(spec["layout"])
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"part '{part}': {path} entry 'layout' is malformed "
                          f"({'lacks ' + str(error) if isinstance(error, KeyError) else error})") from None
    _require_weights(directory / stage.weights_file, part)
    return spec


# ----------------------------------------------------------------------------------------------------------------
# Contracts
# ----------------------------------------------------------------------------------------------------------------

def check_contracts(parts: dict[str, Path]) -> tuple[TextTokenizer, dict[Stage, dict[str, Any]]]:
    """Check that the parts belong together and that every file of every part can be read (each weights file
    opened); return the text model and the generator stage specs. Raises CheckpointMismatch naming both values,
    BundleError naming the part and a malformed file, or FileNotFoundError naming a missing one."""
    text = _read_text(parts[TEXT_PART])  # also checks the model file against text.json
    text_spec = text.spec
    tokenizer_weights = _require_weights(parts[TOKENIZER.name] / WEIGHTS_FILE, TOKENIZER.name)
    tokenizer_config = _read_tokenizer_config(parts[TOKENIZER.name])
    specs = {stage: _read_stage_spec(parts[stage.name], stage, stage.name) for stage in GENERATOR_STAGES}

    image, image_where = specs[IMAGE], str(parts[IMAGE.name] / SPEC_FILE)
    recorded = Provenance.of_export(image)
    recorded.check(Provenance(text_model=text_spec["model_sha256"]), image_where,
                   str(parts[TEXT_PART] / text_spec["model_file"]))
    recorded.check(Provenance(frame_tokenizer=sha256_file(tokenizer_weights)), image_where, str(tokenizer_weights))
    require_same("frame tokenizer config", image["frame_tokenizer"]["config"],
                 json.loads(json.dumps(tokenizer_config.to_dict())), image_where,
                 str(parts[TOKENIZER.name] / CONFIG_FILE))
    require_same("rates", image["rates"], text_spec["rates"], image_where, str(parts[TEXT_PART] / TEXT_SPEC_FILE))
    layout, model_inputs = image["layout"], "the bundle's text model / frame tokenizer"
    require_same("layout text vocabulary size", layout["text_vocab_size"], text_spec["vocab_size"], image_where,
                 model_inputs)
    require_same("layout codebook size", layout["codebook_size"], tokenizer_config.codebook_size, image_where,
                 model_inputs)
    require_same("layout code grid", list(layout["grid"]), list(tokenizer_config.grid), image_where, model_inputs)

    image_weights = parts[IMAGE.name] / FULL_WEIGHTS
    found = Provenance(image_export=sha256_file(image_weights))
    for stage in VIDEO_STAGES:
        spec, where = specs[stage], str(parts[stage.name] / SPEC_FILE)
        Provenance.of_export(spec).check(found, where, str(image_weights))
        for key in CONTRACT_KEYS:
            require_same(key, spec[key], image[key], where, image_where)
    _check_frame_counts(specs, parts)
    if EXPERT_PART in parts:
        check_image_fits(parts[EXPERT_PART], image, image_where, EXPERT_PART)
    return text, specs


def check_image_fits(directory: Path, image: dict[str, Any], image_where: str, role: str) -> dict[str, Any]:
    """Another image export (`role`: the bundle's expert, or one probed in its place) must have the same text model,
    frame tokenizer, rates and layout as the bundle's image export `image` (its weights and model size may differ),
    and weights that open. Returns its spec."""
    spec, where = _read_stage_spec(directory, IMAGE, role), str(directory / SPEC_FILE)
    for key in CONTRACT_KEYS + ("layout",):
        require_same(key, spec[key], image[key], where, image_where)
    return spec


def _check_frame_counts(specs: dict[Stage, dict[str, Any]], parts: dict[str, Path]) -> None:
    """The key frames must cut into the interpolation model's overlapping groups (5 key frames, groups of 3)."""
    key_frames = specs[KEYFRAME]["layout"]["num_frames"]
    window = specs[INTERPOLATE]["layout"]["num_frames"]
    group = (window + 1) // 2
    if window < 3 or window % 2 == 0 or key_frames < group or (key_frames - 1) % (group - 1):
        raise CheckpointMismatch(
            f"{parts[KEYFRAME.name] / SPEC_FILE} makes {key_frames} key frames, which the interpolation export "
            f"{parts[INTERPOLATE.name] / SPEC_FILE} ({window} slots, groups of {group}) cannot interpolate; expected "
            f"an odd slot count >= 3 and 1 + n*{group - 1} key frames")
