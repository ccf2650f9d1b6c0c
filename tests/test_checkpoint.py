"""RunDirectory's commit protocol, unit by unit: a checkpoint is visible only once complete, whatever step of
`save` a crash interrupts; a `latest` pointer naming a missing or incomplete checkpoint is never followed; rotation
keeps the newest `keep_checkpoints`; --overwrite replaces a previous run. A stand-in engine writes the state files
DeepSpeed would; crashes are exceptions raised at each step of the protocol (a killed process stops there too).
Refusals of foreign and occupied directories through train.py are tested in tests/test_train_tokenizer.py."""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from cogvideo_lite.train import checkpoint
from cogvideo_lite.train.checkpoint import COMPLETE_MARKER, PARTIAL_SUFFIX, RunDirectory, RunDirectoryError

ENGINE_FILE = "mp_rank_00_model_states.pt"
EXPORT_FILE = "model.safetensors"
CONFIG = {"stage": "image", "train": {"steps": 10, "lr": 0.001}}


class Crash(Exception):
    """Where a killed process would have stopped."""


class StandInEngine:
    """What RunDirectory.save needs of a DeepSpeed engine: save_checkpoint(dir, tag=, client_state=, save_latest=)
    writing its state under dir/tag. `crash_at_step` makes it stop half way through that step's write."""

    def __init__(self, crash_at_step: int | None = None):
        self.crash_at_step = crash_at_step

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
        assert not save_latest  # RunDirectory names the latest checkpoint itself, last
        directory = Path(save_dir) / tag
        directory.mkdir(parents=True, exist_ok=True)
        if client_state["step"] == self.crash_at_step:
            (directory / ENGINE_FILE).write_text('{"half": ')
            raise Crash(f"killed while DeepSpeed wrote {tag}")
        (directory / ENGINE_FILE).write_text(json.dumps(client_state))


def export(directory: Path) -> None:
    """Records the checkpoint directory it was written into (`<tag>.partial`)."""
    directory.mkdir(parents=True)
    (directory / EXPORT_FILE).write_text(directory.parent.name)


def save(run: RunDirectory, step: int, engine=None, keep: int = 2) -> Path:
    return run.save(engine or StandInEngine(), step, {"step": step}, export, keep)


def tag(step: int) -> str:
    return f"step-{step:08d}"


def assert_whole(run: RunDirectory, step: int) -> None:
    """The checkpoint of `step` holds its engine state, its export and the completion marker."""
    directory = run.checkpoints / tag(step)
    assert json.loads((directory / ENGINE_FILE).read_text()) == {"step": step}
    assert (directory / "export" / EXPORT_FILE).is_file()
    assert json.loads((directory / COMPLETE_MARKER).read_text()) == {"step": step}


@pytest.fixture
def run(tmp_path) -> RunDirectory:
    run = RunDirectory(tmp_path / "run")
    run.claim(CONFIG, resume=False, overwrite=False)
    return run


def test_save_makes_a_whole_checkpoint_visible_and_names_it_last(run):
    assert run.latest_tag() is None and run.complete_tags() == []
    assert save(run, 3) == run.checkpoints / tag(3)
    assert_whole(run, 3)
    assert (run.checkpoints / "latest").read_text() == tag(3)
    assert run.latest_tag() == tag(3)
    assert not list(run.checkpoints.glob(f"*{PARTIAL_SUFFIX}")) and not list(run.checkpoints.glob("*.tmp"))


def test_half_written_partial_directory_is_never_picked_up(run):
    save(run, 2)
    with pytest.raises(Crash):
        save(run, 4, StandInEngine(crash_at_step=4))
    assert (run.checkpoints / (tag(4) + PARTIAL_SUFFIX) / ENGINE_FILE).read_text() == '{"half": '
    reopened = RunDirectory(run.root)  # what a resumed process sees
    assert reopened.latest_tag() == tag(2) and reopened.complete_tags() == [tag(2)]
    save(reopened, 4)  # the resumed run writes step 4 again, over the stale partial
    assert_whole(reopened, 4)
    assert reopened.latest_tag() == tag(4)
    assert not list(run.checkpoints.glob(f"*{PARTIAL_SUFFIX}"))


# The steps of RunDirectory.save after the engine's write, in order.
PROTOCOL_STEPS = ["export", "marker", "rename", "pointer", "rotation"]


def inject_crash(where: str, monkeypatch) -> tuple:
    """Arrange for the next save to stop at `where`; returns the export callback to pass to it."""
    real_replace, real_write = os.replace, checkpoint.write_atomic

    def export_then_crash(directory: Path) -> None:
        export(directory)
        raise Crash("killed while exporting")

    def write_or_crash(path: Path, text: str) -> None:
        if where == "marker" and path.name == COMPLETE_MARKER:
            path.with_name(path.name + ".tmp").write_text(text[:3])  # the marker's temporary file, half written
            raise Crash("killed while writing the completion marker")
        real_write(path, text)

    def replace_or_crash(source, destination) -> None:
        if (where == "rename" and str(source).endswith(PARTIAL_SUFFIX)) or (where == "pointer"
                                                                           and Path(destination).name == "latest"):
            raise Crash(f"killed before {destination} was replaced")
        real_replace(source, destination)

    def rotation_crash(self, keep: int) -> None:
        raise Crash("killed before the rotation")

    monkeypatch.setattr(checkpoint, "write_atomic", write_or_crash)
    monkeypatch.setattr(checkpoint.os, "replace", replace_or_crash)
    if where == "rotation":
        monkeypatch.setattr(RunDirectory, "_rotate", rotation_crash)
    return export_then_crash if where == "export" else export


@pytest.mark.parametrize("where", PROTOCOL_STEPS)
def test_a_crash_anywhere_in_save_leaves_the_old_or_the_new_checkpoint_whole(run, where, monkeypatch):
    save(run, 2)
    save(run, 4)
    with monkeypatch.context() as patch:
        with pytest.raises(Crash):
            run.save(StandInEngine(), 6, {"step": 6}, inject_crash(where, patch), 2)
    reopened = RunDirectory(run.root)
    visible = reopened.latest_tag()
    assert visible == (tag(6) if where == "rotation" else tag(4))  # the pointer moves only once step 6 is whole
    assert_whole(reopened, int(visible.split("-")[1]))
    written = [2, 4, 6] if where in ("pointer", "rotation") else [2, 4]  # step 6 renamed into place or not
    assert reopened.complete_tags() == [tag(step) for step in written]  # never a `.partial`, even with its marker
    save(reopened, 6)  # the resumed run saves step 6 again and ends clean
    assert reopened.latest_tag() == tag(6) and reopened.complete_tags() == [tag(4), tag(6)]
    assert_whole(reopened, 6)
    assert not list(run.checkpoints.glob(f"*{PARTIAL_SUFFIX}"))


def test_pointer_to_a_missing_or_incomplete_checkpoint_is_ignored(run, caplog):
    save(run, 2)
    save(run, 4)
    pointer = run.checkpoints / "latest"
    pointer.write_text(tag(8))  # names a checkpoint that does not exist
    with caplog.at_level(logging.WARNING, logger="cogvideo_lite.train.checkpoint"):
        assert run.latest_tag() == tag(4)
    assert any(tag(8) in message and "not a complete checkpoint" in message for message in caplog.messages)
    shutil.copytree(run.checkpoints / tag(4), run.checkpoints / tag(6))
    (run.checkpoints / tag(6) / COMPLETE_MARKER).unlink()
    pointer.write_text(tag(6))  # names a directory without its completion marker
    assert run.latest_tag() == tag(4) and run.complete_tags() == [tag(2), tag(4)]
    for stale in (tag(2), tag(4)):
        (run.checkpoints / stale / COMPLETE_MARKER).unlink()
    assert run.latest_tag() is None  # nothing complete: a resume starts from step 0


def test_a_checkpoint_renamed_but_not_yet_named_is_rewritten_on_resume(run):
    save(run, 2)
    save(run, 4)
    (run.checkpoints / "latest").write_text(tag(2))  # killed after step 4's rename, before the pointer moved
    assert run.latest_tag() == tag(2)  # the pointer decides: the resumed run continues from step 2
    (run.checkpoints / tag(4) / "stale-file").write_text("from the killed run")
    save(run, 4)
    assert not (run.checkpoints / tag(4) / "stale-file").exists()
    assert_whole(run, 4)
    assert run.latest_tag() == tag(4)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_rotation_keeps_the_newest_checkpoints_in_numeric_order(run, keep):
    steps = [1, 2, 99_999_999, 100_000_000]  # the last tag has one digit more than the padding
    for step in steps:
        save(run, step, keep=keep)
    assert run.complete_tags() == [tag(step) for step in steps[-keep:]]
    assert run.latest_tag() == tag(100_000_000)
    for step in steps[-keep:]:
        assert_whole(run, step)


def test_rotation_never_deletes_the_checkpoint_latest_names(run):
    for step in (2, 4, 6):
        save(run, step, keep=3)
    (run.checkpoints / "latest").write_text(tag(2))  # as a crash between rename and pointer would leave it
    run._rotate(keep=1)
    assert run.complete_tags() == [tag(2), tag(6)] and run.latest_tag() == tag(2)


def test_overwrite_replaces_a_previous_run_and_resume_keeps_it(run):
    save(run, 2)
    run.log_metrics({"step": 1, "loss": 1.0})
    RunDirectory(run.root).claim(CONFIG, resume=True, overwrite=False)
    assert run.latest_tag() == tag(2) and run.metrics_path.exists()
    changed = {**CONFIG, "train": {**CONFIG["train"], "steps": 20}}  # more steps: still the same run
    RunDirectory(run.root).claim(changed, resume=True, overwrite=False)
    with pytest.raises(RunDirectoryError, match="train.lr: 0.001 -> 0.01"):
        RunDirectory(run.root).claim({**CONFIG, "train": {"steps": 10, "lr": 0.01}}, resume=True, overwrite=False)
    RunDirectory(run.root).claim(CONFIG, resume=False, overwrite=True)
    assert run.latest_tag() is None and not run.metrics_path.exists()
    assert sorted(p.name for p in run.root.iterdir()) == ["checkpoints", "config.yaml", "run.json"]


def test_resume_truncates_metrics_after_the_checkpoint(run):
    for step in range(1, 6):
        run.log_metrics({"step": step, "loss": float(step)})
    run.log_metrics({"step": 5, "eval": True, "psnr": 20.0})
    run.truncate_metrics(3)
    assert [json.loads(line)["step"] for line in run.metrics_path.read_text().splitlines()] == [1, 2, 3]
    run.truncate_metrics(0)  # a resume with no checkpoint starts over
    assert run.metrics_path.read_text() == ""


def test_publish_replaces_the_export_and_a_stale_temporary_copy(run):
    save(run, 2)
    save(run, 4)
    (run.root / "model.tmp").mkdir()
    (run.root / "model.tmp" / "junk").write_text("left by a killed publish")
    run.publish(tag(2))
    assert (run.export_dir / EXPORT_FILE).read_text() == tag(2) + PARTIAL_SUFFIX
    run.publish(tag(4))
    assert sorted(p.name for p in run.export_dir.iterdir()) == [EXPORT_FILE]
    assert (run.export_dir / EXPORT_FILE).read_text() == tag(4) + PARTIAL_SUFFIX
    assert not (run.root / "model.tmp").exists()


def test_truncating_metrics_drops_a_line_cut_short_by_a_crash(tmp_path):
    run = RunDirectory(tmp_path)
    run.metrics_path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    run.truncate_metrics(2)
    assert run.metrics_path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
