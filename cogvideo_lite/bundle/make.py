"""Making a self-contained sampling bundle (`parts.py` says what one holds and how it is checked):

    python -m cogvideo_lite.bundle --out DIR --tokenizer P --text P --image P --keyframe P --interpolate P
        [--expert P] [--bf16] [--recommend KNOB=VALUE ...]

copies the five parts (and the optional `expert/`) into DIR, built under `DIR.tmp` and then renamed, with the training
runs' `metrics.jsonl` / `config.yaml` that sit beside an export (`runs/X/model` -> `runs/X/metrics.jsonl`) under
`DIR/logs/<part>/`, and a `provenance.json` naming the sources. `--recommend top_k=20 --recommend interp_top_k=1`
writes the bundle's recommended sampling knobs to `sampling.json`. The contracts are checked on the sources and again
on the copies; a failed command leaves no `DIR.tmp` behind and never touches an existing DIR.

With `--bf16` floating-point weights are stored as bfloat16 (half the size; loading casts them back to
float32). That changes the weight files, so the command checks the sources' contracts first and then rewrites
the recorded checksums of the copies consistently (the frame tokenizer's in every stage spec, the image
export's in the video stage specs); `provenance.json` keeps the sources' original checksums. A bundle's
checksums therefore always describe the bytes it stores, and the contract check stays one plain comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cogvideo_lite import cli
from cogvideo_lite.bundle.exports import SPEC_FILE
from cogvideo_lite.bundle.parts import (EXPERT_PART, OPTIONAL_PARTS, PART_NAMES, SAMPLING_FILE, TEXT_PART,
                                        BundleError, check_contracts, require_file)
from cogvideo_lite.model.stages import GENERATOR_STAGES, IMAGE, TOKENIZER, VIDEO_STAGES
from cogvideo_lite.provenance import CheckpointMismatch, read_json_object, replacing, sha256_file
from cogvideo_lite.sample.knobs import check_recommended_knobs
from cogvideo_lite.text import TEXT_SPEC_FILE
from tokenizer.io import CONFIG_FILE, WEIGHTS_FILE

PROVENANCE_FILE = "provenance.json"
LOGS_DIR = "logs"
RUN_LOG_FILES = ("metrics.jsonl", "config.yaml")  # what a run directory keeps beside its `model/` export
WEIGHT_FILES = {TOKENIZER.name: WEIGHTS_FILE, TEXT_PART: None, EXPERT_PART: IMAGE.weights_file,
                **{stage.name: stage.weights_file for stage in GENERATOR_STAGES}}


def parse_recommendations(items: list[str]) -> dict[str, float | int | str | None]:
    """`name=value` strings (--recommend) -> a checked knob mapping; value `none` clears top_k / interp_top_k; the
    decode mode stays text."""
    raw: dict[str, float | int | str | None] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise BundleError(f"--recommend {item}: expected name=value, e.g. top_k=20")
        try:
            raw[name] = value if name == "decode" else None if value.lower() in ("none", "null") else (
                int(value) if name in ("top_k", "interp_top_k") else float(value))
        except ValueError as error:
            raise BundleError(f"--recommend {item}: {value!r} is not a number") from error
    try:
        return check_recommended_knobs(raw, "--recommend")
    except ValueError as error:
        raise BundleError(str(error)) from error


def store_as_bf16(path: Path) -> None:
    """Rewrite a safetensors file with its floating-point tensors as bfloat16 (integer and bool ones unchanged)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    converted = {key: tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
                 for key, tensor in tensors.items()}
    save_file(converted, str(path), metadata=metadata)


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
    with replacing(out) as temporary:
        _build(temporary, out, sources, bf16)
        if recommended_knobs:
            (temporary / SAMPLING_FILE).write_text(json.dumps(recommended_knobs, indent=2) + "\n")
        check_contracts({name: temporary / name for name in sources})
        if out.exists():
            raise BundleError(f"--out {out} appeared while the bundle was being built; it was left as it is")
    return out


def _build(root: Path, out: Path, sources: dict[str, Path], bf16: bool) -> None:
    """Write the parts into `root`, as they will be once renamed to `out`, with provenance.json and the runs' logs."""
    provenance: dict[str, Any] = {"weights_dtype": "bfloat16" if bf16 else "float32", "parts": {}}
    for name, source in sources.items():
        (root / name).mkdir(parents=True)
        weights = WEIGHT_FILES[name]
        spec_files = ([TEXT_SPEC_FILE, read_json_object(source / TEXT_SPEC_FILE)["model_file"]] if weights is None
                      else [CONFIG_FILE if name == TOKENIZER.name else SPEC_FILE])
        for file_name in spec_files + ([weights] if weights else []):
            shutil.copy2(require_file(source / file_name, name), root / name / file_name)
        provenance["parts"][name] = {"source": str(source),
                                     "source_weights_sha256": weights and sha256_file(source / weights)}
        if bf16 and weights:
            try:
                store_as_bf16(root / name / weights)
            except SafetensorError as error:
                raise BundleError(f"part '{name}': cannot convert {source / weights} to bfloat16 ({error})") from None
        for file_name in RUN_LOG_FILES:
            if (source.parent / file_name).is_file():
                (root / LOGS_DIR / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(source.parent / file_name, root / LOGS_DIR / name / file_name)
    if bf16:  # the copies' checksums describe the bytes stored
        image_sha256 = sha256_file(root / IMAGE.name / IMAGE.weights_file)
        tokenizer_sha256 = sha256_file(root / TOKENIZER.name / WEIGHTS_FILE)
    for name in [IMAGE.name, *(stage.name for stage in VIDEO_STAGES), *(set(OPTIONAL_PARTS) & set(sources))]:
        spec = read_json_object(root / name / SPEC_FILE)
        if bf16:
            spec["frame_tokenizer"]["weights_sha256"] = tokenizer_sha256
            if "image_weights_sha256" in spec:
                spec["image_weights_sha256"] = image_sha256
        if "image_export" in spec:  # a video stage extends the bundle's own image export, at its final place
            spec["image_export"] = str(out / IMAGE.name)
        (root / name / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    (root / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m cogvideo_lite.bundle",
                                     description="Copy the exports sample.py needs into one self-contained bundle.")
    parser.add_argument("--out", type=Path, required=True, help="new bundle directory (must not exist)")
    for name in PART_NAMES:
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"the {name} export directory")
    parser.add_argument("--expert", type=Path, help="optional: an image export (same text model, frame tokenizer and "
                        "layout) that joins the frame loops at sampling time (--expert-weight)")
    parser.add_argument("--bf16", action="store_true", help="store weights as bfloat16 (half the size)")
    parser.add_argument("--recommend", action="append", default=[], metavar="KNOB=VALUE",
                        help="a recommended sampling knob (temperature, top_k, interp_top_k, top_p, cfg, "
                             "expert_weight, interp_expert_weight) written to sampling.json; repeatable")
    args = parser.parse_args(argv)
    with cli.user_errors(parser, BundleError, CheckpointMismatch, OSError):  # OSError: a missing file, a full disk
        out = make_bundle(args.out, {name: getattr(args, name) for name in PART_NAMES + OPTIONAL_PARTS},
                          bf16=args.bf16, recommended_knobs=parse_recommendations(args.recommend))
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"bundle {out}: {size / 2**20:.1f} MiB" + (" (weights stored as bfloat16)" if args.bf16 else ""))
    return out
