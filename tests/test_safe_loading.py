"""Safe loading: weights come from safetensors, never from a pickle; every torch.load of the project passes
weights_only=True; a stage export, bundle or image checkpoint that does not fit what loads it is refused, naming both
values. (DeepSpeed's own load_checkpoint unpickles the engine state a run wrote itself; that is the one exception.)
Refusals already tested in tests/test_pipeline.py (altered image weights, other frame tokenizer or text model in a
bundle) are not repeated here."""

import ast
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cogvideo_lite.bundle.exports import FULL_WEIGHTS, SPEC_FILE, load_image_model, load_stage, read_spec, save_stage
from cogvideo_lite.bundle.parts import check_contracts, resolve_parts
from cogvideo_lite.model.stages import IMAGE
from cogvideo_lite.prepare.prepare import PrepareConfig, prepare
from cogvideo_lite.provenance import CheckpointMismatch, sha256_file
from cogvideo_lite.train.checkpoint import COMPLETE_MARKER, RunDirectory, RunDirectoryError
from cogvideo_lite.train.config import load_config
from cogvideo_lite.train.generator_task import GeneratorTask
from cogvideo_lite.model.config import weight_fields
from tests.helpers import CONFIGS, ROOT
from tests.toys import build_toy_inputs
from tokenizer.io import WEIGHTS_FILE, load_tokenizer

SHORT_TEXT = 12  # text length of other shards: shorter than the default, still long enough for every caption
# Top-level folders that hold no code of ours: a virtualenv, training outputs (DeepSpeed copies its scripts there),
# datasets.
NOT_OUR_CODE = (".venv", "runs", "data", ".git")


# ---------------------------------------------------------------------------------------------------- torch.load
def torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls of torch.load, written `torch.load(...)` or through `from torch import load [as name]`."""
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module == "torch" for alias in node.names if alias.name == "load"}
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
         and node.func.value.id == "torch") or (isinstance(node.func, ast.Name) and node.func.id in aliases))]


def weights_only_true(call: ast.Call) -> bool:
    return any(keyword.arg == "weights_only" and isinstance(keyword.value, ast.Constant) and keyword.value.value is True
               for keyword in call.keywords)


def project_sources() -> list[Path]:
    return sorted(path for path in ROOT.rglob("*.py") if path.relative_to(ROOT).parts[0] not in NOT_OUR_CODE)


def test_the_scanner_finds_unsafe_calls_in_every_spelling():
    source = ("import torch\nfrom torch import load as fetch\ntorch.load('a')\nfetch('b', weights_only=False)\n"
              "torch.load('c', weights_only=True)\nnumpy.load('d')\n")
    calls = torch_load_calls(ast.parse(source))
    assert [call.lineno for call in calls] == [3, 4, 5]
    assert [weights_only_true(call) for call in calls] == [False, False, True]


def test_every_torch_load_of_the_project_passes_weights_only_true():
    sources = project_sources()
    assert {ROOT / "train.py", ROOT / "tokenizer" / "io.py", ROOT / "cogvideo_lite" / "data" / "video.py"} <= set(sources)
    unsafe = [f"{path.relative_to(ROOT)}:{call.lineno}" for path in sources
              for call in torch_load_calls(ast.parse(path.read_text(), str(path))) if not weights_only_true(call)]
    assert unsafe == [], f"torch.load without weights_only=True (it may run code from the file): {unsafe}"


# ---------------------------------------------------------------------------------------------------- pickles
class Payload:
    """A pickle that creates `marker` when unpickled: what a hostile checkpoint would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def plant_pickle(path: Path, marker: Path) -> None:
    """A torch.save checkpoint (a pickle) at `path`, which creates `marker` if anything unpickles it."""
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)


def test_the_planted_pickle_is_live_and_weights_only_refuses_it(tmp_path):
    plant_pickle(tmp_path / "weights.pt", tmp_path / "ran")
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        torch.load(tmp_path / "weights.pt", weights_only=True)
    assert not (tmp_path / "ran").exists()
    pickle.loads(pickle.dumps(Payload(tmp_path / "ran")))  # what any unpickling of the payload does
    assert (tmp_path / "ran").exists()


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    return shutil.copytree(bundle, tmp_path / "copy")


@pytest.mark.parametrize("part, file_name, load", [("image", FULL_WEIGHTS, load_image_model),
                                                    ("tokenizer", WEIGHTS_FILE, load_tokenizer)])
def test_a_pickle_in_place_of_safetensors_is_refused_unrun(copy, tmp_path, part, file_name, load):
    plant_pickle(copy / part / file_name, tmp_path / "ran")
    with pytest.raises(ValueError, match=str(copy / part / file_name)):
        load(copy / part)
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------------------------------------------- stage exports
def edit_spec(directory: Path, change) -> dict:
    spec = json.loads((directory / SPEC_FILE).read_text())
    change(spec)
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    return spec


def test_video_stage_refuses_a_missing_image_export(copy):
    moved = copy.parent / "moved-image"
    shutil.move(copy / "image", moved)
    edit_spec(copy / "keyframe", lambda spec: spec.update(image_export=str(copy / "image")))
    with pytest.raises(FileNotFoundError, match=f"extends the image export {copy / 'image'}, which is missing"):
        load_stage(copy / "keyframe")
    model, _ = load_stage(copy / "keyframe", image_dir=moved)  # found where it was moved to
    assert model.layout.num_frames == 5


def test_video_stage_refuses_an_image_export_altered_by_one_byte(copy):
    weights = copy / "image" / FULL_WEIGHTS
    recorded = sha256_file(weights)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight: still a readable safetensors file
    weights.write_bytes(bytes(data))
    assert load_file(str(weights)).keys()
    found = sha256_file(weights)
    with pytest.raises(CheckpointMismatch, match=f"image export weights sha256 {recorded}, but {weights} has {found}"):
        load_stage(copy / "keyframe", image_dir=copy / "image")


@pytest.mark.parametrize("key, change", [
    ("model", lambda spec: spec["model"].update(dim=64, heads=4)),
    ("layout", lambda spec: spec["layout"].update(grid=[8, 8])),
    ("layout", lambda spec: spec["layout"].update(text_vocab_size=spec["layout"]["text_vocab_size"] + 1)),
])
def test_video_stage_refuses_an_image_export_of_another_size_or_layout(copy, key, change):
    image = read_spec(copy / "image")[key]
    stage = edit_spec(copy / "interpolate", change)[key]
    compared = (lambda part: {**part, "num_frames": None}) if key == "layout" else weight_fields
    message = f"{key} {compared(stage)} differs from the image export's {compared(image)}"
    with pytest.raises(CheckpointMismatch) as refused:
        load_stage(copy / "interpolate", image_dir=copy / "image")
    assert message in str(refused.value)


def test_wrong_format_or_stage_is_refused_naming_both(copy):
    edit_spec(copy / "image", lambda spec: spec.update(format=99))
    with pytest.raises(CheckpointMismatch, match="format 99, this code reads format 1"):
        load_image_model(copy / "image")
    with pytest.raises(CheckpointMismatch, match="an export of stage 'keyframe' where one of stage 'image' was expected"):
        load_image_model(copy / "keyframe")


# ---------------------------------------------------------------------------------------------------- bundles
@pytest.mark.parametrize("what, change, recorded, found", [
    ("layout codebook size", lambda spec: spec["layout"].update(codebook_size=128), "128", "64"),
    ("layout code grid", lambda spec: spec["layout"].update(grid=[8, 8]), r"\[8, 8\]", r"\[4, 4\]"),
    ("rates", lambda spec: spec.update(rates=[1, 2, 4]), r"\[1, 2, 4\]", r"\[1, 2, 4, 8\]"),
    ("frame tokenizer config", lambda spec: spec["frame_tokenizer"]["config"].update(code_dim=4),
     "'code_dim': 4", "'code_dim': 8"),
])
def test_bundle_refuses_an_image_export_made_for_other_inputs(copy, what, change, recorded, found):
    edit_spec(copy / "image", change)
    with pytest.raises(CheckpointMismatch, match=f"records {what} .*{recorded}.*, but .* has .*{found}"):
        check_contracts(resolve_parts(copy))


def test_bundle_refuses_a_video_stage_trained_on_another_text_model(copy):
    image_text = read_spec(copy / "image")["text"]
    other = edit_spec(copy / "keyframe", lambda spec: spec["text"].update(model_sha256="0" * 64))["text"]
    with pytest.raises(CheckpointMismatch) as refused:
        check_contracts(resolve_parts(copy))
    assert f"records text {other}, but {copy / 'image' / SPEC_FILE} has {image_text}" in str(refused.value)


def test_bundle_refuses_swapped_stage_directories(copy):
    (copy / "keyframe").rename(copy / "swap")
    (copy / "interpolate").rename(copy / "keyframe")
    (copy / "swap").rename(copy / "interpolate")
    with pytest.raises(CheckpointMismatch, match="an export of stage 'interpolate' where one of stage 'keyframe' was "
                                                 "expected"):
        check_contracts(resolve_parts(copy))


# ---------------------------------------------------------------------------------------------------- training
def untrained_image_run(shards: Path, run_dir: Path) -> Path:
    """An image export made for `shards` under <run_dir>/model, where train.py publishes it."""
    config = load_config(CONFIGS / "image_tiny.yaml", [f"data.shards={shards}", "model.dim=32", "model.depth=2",
                                                         "model.heads=2", f"run_dir={run_dir}"])
    task = GeneratorTask(config)
    save_stage(task.model, run_dir / "model", IMAGE, task.contracts)
    return run_dir


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Toy shards and an untrained image export made for them."""
    work = tmp_path_factory.mktemp("toy")
    inputs = build_toy_inputs(work / "inputs")
    return inputs, untrained_image_run(inputs.shards, work / "image")


def keyframe_task(toy, *sets: str) -> GeneratorTask:
    inputs, image_run = toy
    config = load_config(CONFIGS / "keyframe_tiny.yaml", [
        f"data.shards={inputs.shards}", f"image_checkpoint={image_run}", "model.depth=2", "model.heads=2",
        "run_dir=unused", *sets])
    return GeneratorTask(config)


def test_video_stage_training_extends_a_fitting_image_export(toy):
    task = keyframe_task(toy, "model.dim=32")
    image = load_image_model(toy[1] / "model")[0].state_dict()
    frozen = {name: p for name, p in task.model.named_parameters() if not p.requires_grad}
    assert frozen and frozen.keys() <= image.keys()
    for name, parameter in frozen.items():
        assert torch.equal(parameter, image[name]), name


def test_video_stage_training_refuses_an_image_export_of_another_size(toy):
    with pytest.raises(CheckpointMismatch, match=r"records architecture \{'dim': 32.*, but this run's config has "
                                                 r"\{'dim': 64"):
        keyframe_task(toy, "model.dim=64")


def test_video_stage_sets_its_own_temporal_window_and_dropout_over_the_image_export(toy, tmp_path):
    """The window and dropout change what a stage computes, not its weights: the image export has neither."""
    task = keyframe_task(toy, "model.dim=32", "model.temporal_window=[4, 1, 1]", "model.dropout=0.1")
    assert (task.model.config.temporal_window, task.model.config.dropout) == ((4, 1, 1), 0.1)
    task.export(tmp_path / "keyframe")
    model, spec = load_stage(tmp_path / "keyframe", image_dir=toy[1] / "model")
    assert model.config.temporal_window == (4, 1, 1) and spec["model"]["temporal_window"] == [4, 1, 1]
    image = load_image_model(toy[1] / "model")[0].state_dict()
    for name in model.spatial_parameter_names():
        assert torch.equal(model.state_dict()[name], image[name]), name


@pytest.mark.parametrize("what, change", [
    ("text model sha256", lambda spec: spec["text"].update(model_sha256="0" * 64)),
    ("frame tokenizer weights sha256", lambda spec: spec["frame_tokenizer"].update(weights_sha256="f" * 64)),
])
def test_video_stage_training_refuses_an_image_export_made_for_other_tokenizers(toy, tmp_path, what, change):
    other = shutil.copytree(toy[1], tmp_path / "other-image")
    spec = edit_spec(other / "model", change)
    recorded = spec["text"]["model_sha256"] if what.startswith("text") else spec["frame_tokenizer"]["weights_sha256"]
    with pytest.raises(CheckpointMismatch, match=f"records {what} {recorded}, but .* has (?!{recorded})[0-9a-f]{{64}}"):
        keyframe_task(toy, "model.dim=32", f"image_checkpoint={other}")


def test_video_stage_training_refuses_an_image_export_of_another_layout(toy, tmp_path):
    inputs, _ = toy
    shorter = tmp_path / "shards-short-text"
    prepare(PrepareConfig(data=inputs.shapes, tokenizer=inputs.tokenizer, text=inputs.text, out=shorter,
                          text_length=SHORT_TEXT), progress=False, device="cpu")
    other = untrained_image_run(shorter, tmp_path / "other-image")
    with pytest.raises(CheckpointMismatch, match=rf"layout \{{'text_length': {SHORT_TEXT}, .* does not fit the shards' "
                                                 rf"text length {PrepareConfig.text_length} and grid \(4, 4\)"):
        keyframe_task(toy, "model.dim=32", f"image_checkpoint={other}")


def test_a_video_stage_resume_refuses_an_image_export_changed_under_its_checkpoints(toy, tmp_path):
    image = shutil.copytree(toy[1], tmp_path / "image")
    run = RunDirectory(tmp_path / "run")
    run.claim({"stage": "keyframe"}, resume=False, overwrite=False)
    first = keyframe_task(toy, "model.dim=32", f"image_checkpoint={image}").inputs()
    run.pin_inputs(first, resume=False)
    assert set(json.loads((run.root / "inputs.json").read_text())) == {
        "text model sha256", "frame tokenizer weights sha256", "image export weights sha256"}
    run.pin_inputs(keyframe_task(toy, "model.dim=32", f"image_checkpoint={image}").inputs(), resume=True)  # same

    weights = image / "model" / FULL_WEIGHTS  # the image stage retrained in place: other weights, same path
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    save_file({**tensors, name: tensors[name] + 1.0}, str(weights))
    changed = keyframe_task(toy, "model.dim=32", f"image_checkpoint={image}").inputs()
    assert changed.image_export == sha256_file(weights) != first.image_export
    run.pin_inputs(changed, resume=True)  # no checkpoint yet: nothing trained on the old weights, the new ones pinned
    assert json.loads((run.root / "inputs.json").read_text()) == changed.to_inputs()

    (run.checkpoints / "step-00000002").mkdir()  # a complete checkpoint, as RunDirectory.save leaves it
    (run.checkpoints / "step-00000002" / COMPLETE_MARKER).write_text("")
    (run.checkpoints / "latest").write_text("step-00000002")
    save_file({**tensors, name: tensors[name] + 2.0}, str(weights))  # and retrained once more
    later = keyframe_task(toy, "model.dim=32", f"image_checkpoint={image}").inputs()
    with pytest.raises(RunDirectoryError, match=re.escape(
            f"records image export weights sha256 {changed.image_export}, but the run now has {later.image_export}")):
        run.pin_inputs(later, resume=True)
