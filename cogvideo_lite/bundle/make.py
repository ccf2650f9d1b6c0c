"""Sampling bundles: one directory holding, or pointing to, everything `sample.py` needs.

A bundle has five parts: `tokenizer/` (frame tokenizer export: config.json + model.safetensors), `text/`
(text.model + text.json), and the generator stage exports `image/`, `keyframe/`, `interpolate/`; optionally a sixth,
`expert/`: another image export of the same text model, frame tokenizer and layout (e.g. an image stage trained
longer than the one the video stages were trained on) that joins the frame loops at sampling time with
`--expert-weight` (`model/generate.py`). They are either real subdirectories, or named by a `bundle.json` that maps
the five names (and `expert`) to paths (relative paths are resolved against the bundle directory), so a bundle can
point at the `model/` exports of training runs without copying them.

    python -m cogvideo_lite.bundle --out DIR --tokenizer P --text P --image P --keyframe P --interpolate P
        [--expert P] [--bf16]

copies the five parts into a self-contained DIR (built under `DIR.tmp`, then renamed), with the training runs'
`metrics.jsonl` / `config.yaml` that sit beside an export (`runs/X/model` -> `runs/X/metrics.jsonl`) under
`DIR/logs/<part>/`, and a `provenance.json` naming the sources. `--recommend top_k=20 --recommend interp_top_k=1`
writes the bundle's recommended sampling knobs to `sampling.json` (optional; any of temperature, top_k,
interp_top_k, top_p, cfg, expert_weight, interp_expert_weight): `sample.py` and `evaluate` use them for the knobs
their command line leaves out. `--expert P` adds the optional sixth part.

Contracts (`check_contracts`, run by `Pipeline.load` and by the command above, before and after copying):
the image export's recorded text-model sha256 equals the text model's; its recorded frame-tokenizer weights
sha256 equals the sha256 of the tokenizer's model.safetensors and its recorded tokenizer config equals
config.json; the video stages record the sha256 of THIS image export's model.safetensors, and the same text
model, frame tokenizer and rates; code grid, codebook size and text vocabulary agree with the layouts. Every file of
every part must also read: malformed JSON or a missing entry in a spec, and a weights file that does not open as
safetensors (a truncated copy: `safe_open` checks the header against the file size), are refused naming the part and
the file. A failed command leaves no `DIR.tmp` behind and never touches an existing DIR.

With `--bf16` floating-point weights are stored as bfloat16 (half the size; loading casts them back to
float32). That changes the weight files, so the command checks the sources' contracts first and then rewrites
the recorded checksums of the copies consistently (the frame tokenizer's in every stage spec, the image
export's in the video stage specs); `provenance.json` keeps the sources' original checksums. A bundle's
checksums therefore always describe the bytes it stores, and the contract check stays one plain comparison.

This module knows export files and their specs; it does not build models (see `pipeline.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cogvideo_lite.train.checkpoint import sha256_file
from cogvideo_lite.bundle.exports import (FULL_WEIGHTS, SPEC_FILE, TEMPORAL_WEIGHTS, CheckpointMismatch,
                                        MalformedSpec, layout_from_dict, read_spec)
from cogvideo_lite.sample.knobs import check_recommended_knobs
from cogvideo_lite.text import TEXT_SPEC_FILE, TextTokenizer
from tokenizer.config import TokenizerConfig
from tokenizer.io import CONFIG_FILE, WEIGHTS_FILE, load_config

PART_NAMES = ("tokenizer", "text", "image", "keyframe", "interpolate")
OPTIONAL_PARTS = ("expert",)  # an image export that may join the frame loops at sampling time (`--expert-weight`)
VIDEO_STAGES = ("keyframe", "interpolate")
BUNDLE_MAP_FILE = "bundle.json"
SAMPLING_FILE = "sampling.json"  # optional: the bundle's recommended sampling knobs
PROVENANCE_FILE = "provenance.json"
LOGS_DIR = "logs"
RUN_LOG_FILES = ("metrics.jsonl", "config.yaml")  # what a run directory keeps beside its `model/` export
CONTRACT_KEYS = ("text", "frame_tokenizer", "rates")  # what every stage spec records about its inputs
CONTRACT_ENTRIES = {"text": ("model_sha256",), "frame_tokenizer": ("config", "weights_sha256")}  # what the checks read
WEIGHT_FILES = {"tokenizer": WEIGHTS_FILE, "text": None, "image": FULL_WEIGHTS, "keyframe": TEMPORAL_WEIGHTS,
                "interpolate": TEMPORAL_WEIGHTS, "expert": FULL_WEIGHTS}


class BundleError(ValueError):
    """A bundle directory that cannot be used: a missing part, a malformed bundle.json, or a part file that cannot
    be read (malformed JSON, an entry missing, a truncated weights file); the message names the part and the file."""


# ----------------------------------------------------------------------------------------------------------------
# Finding the parts
# ----------------------------------------------------------------------------------------------------------------

def read_recommended_knobs(directory: str | Path) -> dict[str, float | int | None]:
    """The bundle's sampling.json (checked), or {} when it has none."""
    path = Path(directory) / SAMPLING_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from error
    try:
        return check_recommended_knobs(raw, str(path))
    except ValueError as error:
        raise BundleError(str(error)) from error


def parse_recommendations(items: list[str]) -> dict[str, float | int | None]:
    """`name=value` strings (--recommend) -> a checked knob mapping; value `none` clears top_k / interp_top_k."""
    raw: dict[str, float | int | None] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise BundleError(f"--recommend {item}: expected name=value, e.g. top_k=20")
        try:
            raw[name] = None if value.lower() in ("none", "null") else (
                int(value) if name in ("top_k", "interp_top_k") else float(value))
        except ValueError as error:
            raise BundleError(f"--recommend {item}: {value!r} is not a number") from error
    try:
        return check_recommended_knobs(raw, "--recommend")
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
        mapping = json.loads(map_path.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{map_path}: not valid JSON ({error})") from None
    if (not isinstance(mapping, dict) or not set(PART_NAMES) <= set(mapping)
            or not set(mapping) <= set(PART_NAMES + OPTIONAL_PARTS)):
        found = sorted(mapping) if isinstance(mapping, dict) else type(mapping).__name__
        raise BundleError(f"{map_path}: expected an object with the keys {list(PART_NAMES)} (and optionally "
                          f"{list(OPTIONAL_PARTS)}), got {found}")
    return {name: (map_path.parent / str(path)).resolve() for name, path in mapping.items()}


# ----------------------------------------------------------------------------------------------------------------
# Contracts
# ----------------------------------------------------------------------------------------------------------------

def _require_file(path: Path, part: str) -> Path:
    if not path.is_file():
        raise BundleError(f"part '{part}' is incomplete: {path} is missing")
    return path


def _require_weights(path: Path, part: str) -> Path:
    """A weights file that opens as safetensors: `safe_open` reads the header and refuses a file shorter (truncated)
    or longer than the tensors it lists, so a cut copy fails here, not at sampling time."""
    _require_file(path, part)
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise BundleError(f"part '{part}': {path} is not a readable safetensors file ({error}); "
                          "truncated or not a weights file?") from None
    return path


def _read_text_spec(directory: Path) -> dict[str, Any]:
    """The text part's text.json, loaded with its model (whose sha256 and special ids it checks)."""
    try:
        return TextTokenizer.load(directory).spec
    except FileNotFoundError:
        raise
    except KeyError as error:
        raise BundleError(f"part 'text': {directory / TEXT_SPEC_FILE} lacks the entry {error}") from None
    except (ValueError, TypeError, RuntimeError, OSError) as error:  # malformed JSON, a model sentencepiece refuses
        raise BundleError(f"part 'text': cannot load {directory / TEXT_SPEC_FILE} and its model ({error})") from None


def _read_tokenizer_config(directory: Path) -> TokenizerConfig:
    try:
        return load_config(_require_file(directory / CONFIG_FILE, "tokenizer").parent)
    except FileNotFoundError:
        raise
    except ValueError as error:  # malformed JSON or a bad entry; the message names the file
        raise BundleError(f"part 'tokenizer': {error}") from None


def _read_stage_spec(directory: Path, part: str) -> dict[str, Any]:
    """A stage's generator.json with the entries the contract checks read: malformed JSON or a missing or malformed
    entry is a BundleError naming the part and the file (another format a CheckpointMismatch, from read_spec)."""
    path = directory / SPEC_FILE
    try:
        spec = read_spec(directory)  # a missing file: FileNotFoundError; another format: CheckpointMismatch
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
    return spec


def _mismatch(where: str, what: str, recorded: Any, found: Any, found_where: str) -> CheckpointMismatch:
    return CheckpointMismatch(f"{where} records {what} {recorded}, but {found_where} has {found}")


def check_contracts(parts: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Check that the five parts belong together and that every file of every part can be read (each weights file
    opened); return the stage specs by name. Raises CheckpointMismatch naming both values, BundleError naming the
    part and a malformed file, or FileNotFoundError naming a missing one."""
    text_spec = _read_text_spec(parts["text"])  # also checks the model file against text.json
    tokenizer_weights = _require_weights(parts["tokenizer"] / WEIGHTS_FILE, "tokenizer")
    tokenizer_config = _read_tokenizer_config(parts["tokenizer"])
    specs = {name: _read_stage_spec(parts[name], name) for name in ("image",) + VIDEO_STAGES}
    for name, spec in specs.items():
        if spec.get("stage") != name:
            raise CheckpointMismatch(f"{parts[name]}: a {spec.get('stage')!r} export where the {name} export "
                                     "was expected")
        _require_weights(parts[name] / WEIGHT_FILES[name], name)

    image, image_where = specs["image"], str(parts["image"] / SPEC_FILE)
    text_model = parts["text"] / text_spec["model_file"]
    if image["text"]["model_sha256"] != text_spec["model_sha256"]:
        raise _mismatch(image_where, "text model sha256", image["text"]["model_sha256"],
                        text_spec["model_sha256"], str(text_model))
    tokenizer_sha256 = sha256_file(tokenizer_weights)
    if image["frame_tokenizer"]["weights_sha256"] != tokenizer_sha256:
        raise _mismatch(image_where, "frame tokenizer weights sha256", image["frame_tokenizer"]["weights_sha256"],
                        tokenizer_sha256, str(tokenizer_weights))
    if image["frame_tokenizer"]["config"] != json.loads(json.dumps(tokenizer_config.to_dict())):
        raise _mismatch(image_where, "frame tokenizer config", image["frame_tokenizer"]["config"],
                        tokenizer_config.to_dict(), str(parts["tokenizer"] / CONFIG_FILE))
    if image["rates"] != text_spec["rates"]:
        raise _mismatch(image_where, "rates", image["rates"], text_spec["rates"], str(parts["text"] / TEXT_SPEC_FILE))
    _check_layout(image, image_where, text_spec, tokenizer_config.codebook_size, list(tokenizer_config.grid))

    image_sha256 = sha256_file(parts["image"] / FULL_WEIGHTS)
    for name in VIDEO_STAGES:
        spec, where = specs[name], str(parts[name] / SPEC_FILE)
        if spec.get("image_weights_sha256") != image_sha256:
            raise _mismatch(where, "image weights sha256", spec.get("image_weights_sha256"), image_sha256,
                            str(parts["image"] / FULL_WEIGHTS))
        for key in CONTRACT_KEYS:
            if spec[key] != image[key]:
                raise _mismatch(where, key, spec[key], image[key], image_where)
    _check_frame_counts(specs, parts)
    if "expert" in parts:
        specs["expert"] = check_image_fits(parts["expert"], image, image_where, "expert")
    return specs


def check_image_fits(directory: Path, image: dict[str, Any], image_where: str, role: str) -> dict[str, Any]:
    """Another image export (`role`: the bundle's expert, or one probed in its place) must have the same text model,
    frame tokenizer, rates and layout as the bundle's image export `image` (its weights and model size may differ),
    and weights that open. Returns its spec."""
    spec, where = _read_stage_spec(directory, role), str(directory / SPEC_FILE)
    if spec.get("stage") != "image":
        raise CheckpointMismatch(f"{directory}: a {spec.get('stage')!r} export where an image export ({role}) "
                                 "was expected")
    _require_weights(directory / FULL_WEIGHTS, role)
    for key in CONTRACT_KEYS + ("layout",):
        if spec[key] != image[key]:
            raise _mismatch(where, key, spec[key], image[key], image_where)
    return spec


def _check_layout(spec: dict[str, Any], where: str, text_spec: dict[str, Any], codebook_size: int,
                  grid: list[int]) -> None:
    layout = spec["layout"]
    for what, recorded, found in (("text vocabulary size", layout["text_vocab_size"], text_spec["vocab_size"]),
                                  ("codebook size", layout["codebook_size"], codebook_size),
                                  ("code grid", list(layout["grid"]), grid)):
        if recorded != found:
            raise _mismatch(where, f"layout {what}", recorded, found, "the bundle's text model / frame tokenizer")


def _check_frame_counts(specs: dict[str, dict[str, Any]], parts: dict[str, Path]) -> None:
    """The key frames must cut into the interpolation model's overlapping groups (5 key frames, groups of 3)."""
    key_frames = specs["keyframe"]["layout"]["num_frames"]
    window = specs["interpolate"]["layout"]["num_frames"]
    group = (window + 1) // 2
    if window < 3 or window % 2 == 0 or key_frames < group or (key_frames - 1) % (group - 1):
        raise CheckpointMismatch(
            f"{parts['keyframe'] / SPEC_FILE} makes {key_frames} key frames, which the interpolation export "
            f"{parts['interpolate'] / SPEC_FILE} ({window} slots, groups of {group}) cannot interpolate; expected "
            f"an odd slot count >= 3 and 1 + n*{group - 1} key frames")


# ----------------------------------------------------------------------------------------------------------------
# Making a self-contained bundle
# ----------------------------------------------------------------------------------------------------------------

def _part_files(name: str, source: Path) -> list[str]:
    """The files that make up a part (nothing else in its directory is copied)."""
    if name == "tokenizer":
        return [CONFIG_FILE, WEIGHTS_FILE]
    if name == "text":
        return [TEXT_SPEC_FILE, json.loads((source / TEXT_SPEC_FILE).read_text())["model_file"]]
    return [SPEC_FILE, WEIGHT_FILES[name]]


def store_as_bf16(path: Path) -> None:
    """Rewrite a safetensors file with its floating-point tensors as bfloat16 (integer and bool ones unchanged)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    converted = {key: tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
                 for key, tensor in tensors.items()}
    save_file(converted, str(path), metadata=metadata)


def _rewrite_checksums(root: Path) -> None:
    """Make the copies' recorded checksums describe the stored bytes (after a bf16 conversion)."""
    tokenizer_sha256 = sha256_file(root / "tokenizer" / WEIGHTS_FILE)
    image_sha256 = sha256_file(root / "image" / FULL_WEIGHTS)
    for name in ("image",) + VIDEO_STAGES + tuple(name for name in OPTIONAL_PARTS if (root / name).is_dir()):
        spec_path = root / name / SPEC_FILE
        spec = json.loads(spec_path.read_text())
        spec["frame_tokenizer"]["weights_sha256"] = tokenizer_sha256
        if name in VIDEO_STAGES:
            spec["image_weights_sha256"] = image_sha256
        spec_path.write_text(json.dumps(spec, indent=2))


def _point_video_stages_at(root: Path, image_dir: Path) -> None:
    """The video stage specs name the image export they extend: the bundle's own, at its final place."""
    for name in VIDEO_STAGES:
        spec_path = root / name / SPEC_FILE
        spec = json.loads(spec_path.read_text())
        spec["image_export"] = str(image_dir)
        spec_path.write_text(json.dumps(spec, indent=2))


def make_bundle(out: str | Path, sources: dict[str, Path], bf16: bool = False,
                recommended_knobs: dict[str, float | int | None] | None = None) -> Path:
    """Copy the five parts into a self-contained bundle at `out` (built under `out.tmp`, renamed at the end), with
    `recommended_knobs` (checked by `parse_recommendations`) as its sampling.json when given. An existing `out` is
    refused and never touched; on any failure `out.tmp` is removed, so nothing half-built is left behind."""
    out = Path(out).resolve()
    if out.exists():
        raise BundleError(f"--out {out} already exists; choose a new directory or remove it")
    sources = {name: Path(sources[name]).resolve() for name in PART_NAMES + tuple(
        name for name in OPTIONAL_PARTS if sources.get(name))}
    for name, path in sources.items():
        if not path.is_dir():
            raise BundleError(f"part '{name}' is missing: {path} is not a directory")
    check_contracts(sources)  # refuse parts that do not belong together, or do not open, before converting anything
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # left by a run that was killed
        shutil.rmtree(tmp)
    try:
        _build(tmp, out, sources, bf16, recommended_knobs)
        if out.exists():
            raise BundleError(f"--out {out} appeared while the bundle was being built; it was left as it is")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build(tmp: Path, out: Path, sources: dict[str, Path], bf16: bool,
           recommended_knobs: dict[str, float | int | None] | None) -> None:
    """Write the bundle into `tmp`, as it will be once renamed to `out`, and check its contracts there."""
    provenance: dict[str, Any] = {"weights_dtype": "bfloat16" if bf16 else "float32", "parts": {}}
    for name, source in sources.items():
        (tmp / name).mkdir(parents=True)
        for file_name in _part_files(name, source):
            shutil.copy2(_require_file(source / file_name, name), tmp / name / file_name)
        weights = WEIGHT_FILES[name]
        provenance["parts"][name] = {"source": str(source),
                                     "source_weights_sha256": weights and sha256_file(source / weights)}
        if bf16 and weights:
            try:
                store_as_bf16(tmp / name / weights)
            except SafetensorError as error:
                raise BundleError(f"part '{name}': cannot convert {source / weights} to bfloat16 ({error})") from None
        _copy_run_logs(source, tmp / LOGS_DIR / name)
    if bf16:
        _rewrite_checksums(tmp)
    _point_video_stages_at(tmp, out / "image")
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    if recommended_knobs:
        (tmp / SAMPLING_FILE).write_text(json.dumps(recommended_knobs, indent=2) + "\n")
    check_contracts({name: tmp / name for name in sources})


def _copy_run_logs(export: Path, destination: Path) -> None:
    for file_name in RUN_LOG_FILES:
        log = export.parent / file_name
        if log.is_file():
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy2(log, destination / file_name)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Copy the exports sample.py needs into one self-contained bundle.")
    parser.add_argument("--out", type=Path, required=True, help="new bundle directory (must not exist)")
    for name in PART_NAMES:
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"the {name} export directory")
    parser.add_argument("--expert", type=Path, help="optional: an image export (same text model, frame tokenizer and "
                        "layout) that joins the frame loops at sampling time (--expert-weight)")
    parser.add_argument("--bf16", action="store_true", help="store weights as bfloat16 (half the size)")
    parser.add_argument("--recommend", action="append", default=[], metavar="KNOB=VALUE",
                        help="a recommended sampling knob (temperature, top_k, interp_top_k, top_p, cfg, "
                             "expert_weight, interp_expert_weight) written "
                             "to sampling.json; repeatable")
    args = parser.parse_args(argv)
    try:
        out = make_bundle(args.out, {name: getattr(args, name) for name in PART_NAMES + OPTIONAL_PARTS},
                          bf16=args.bf16,
                          recommended_knobs=parse_recommendations(args.recommend))
    except (BundleError, CheckpointMismatch, OSError) as error:  # OSError: a missing file, a full disk, ...
        parser.error(str(error))
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"bundle {out}: {size / 2**20:.1f} MiB" + (" (weights stored as bfloat16)" if args.bf16 else ""))
    return out


if __name__ == "__main__":
    main()
