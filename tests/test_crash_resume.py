"""SIGKILL a real training run between checkpoints or while one is being written, resume it with --resume, and
demand the metrics and final export of an uninterrupted run with the same seed, exactly: every stage (tokenizer,
image, keyframe, interpolate) and two processes under torchrun. Kill steps are drawn from a generator seeded by the
test's name. The machinery (killing a process tree, comparing runs) is bench/reliability.py's; the toy inputs are
tests/toys.py's."""

import random

import pytest

from bench.reliability import MOMENTS, VARIANTS, KillPoint, ReferenceRuns, draw_kill_point, kill_and_resume, variant_stage
from tests.toys import SAVE_EVERY, build_toy_inputs

FAST = {("tokenizer", "between"), ("image", "checkpoint")}  # the rest take 20-60 s each on two busy cores
# Where a kill lands is certain for the tokenizer (~300 ms steps, ~100 ms checkpoint writes, against a 1 ms poll); a
# tiny generator's (~30 ms steps, ~5 ms writes) may be passed before a busy machine delivers the kill. The resumed
# run must be exact either way.
LANDING_CERTAIN = ("tokenizer",)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    work = tmp_path_factory.mktemp("crash")
    return ReferenceRuns(build_toy_inputs(work / "inputs"), work)


def cases():
    for variant in VARIANTS:
        for moment in MOMENTS:
            marks = () if (variant, moment) in FAST else (pytest.mark.slow,)
            yield pytest.param(variant, moment, marks=marks, id=f"{variant}-{moment}")


@pytest.mark.parametrize("variant, moment", cases())
def test_killed_run_resumes_to_the_uninterrupted_result(references, variant, moment, tmp_path):
    point = draw_kill_point(variant, moment, random.Random(f"{variant} {moment}"))
    reference = references.get(variant)
    outcome = kill_and_resume(point, references.sets(point.stage), reference, tmp_path)

    assert outcome.kill.killed, f"{point} was never reached: the run finished first"
    if variant_stage(variant) in LANDING_CERTAIN and moment == "between":
        assert outcome.kill.landing == "between checkpoints", outcome.kill
        before = point.step - point.step % SAVE_EVERY  # the last saving step before the kill
        assert outcome.kill.resume_from == (f"step-{before:08d}" if before else None)
    elif variant_stage(variant) in LANDING_CERTAIN:
        assert outcome.kill.landing != "between checkpoints", outcome.kill
    assert outcome.differences == ()  # metrics line for line (each step once) and every exported tensor


def test_run_killed_before_its_first_checkpoint_starts_over_cleanly(references, tmp_path):
    """--resume without a checkpoint starts from step 0 and drops the lines the killed run logged (once kept twice)."""
    point = KillPoint("image", "between", 1)
    outcome = kill_and_resume(point, references.sets("image"), references.get("image"), tmp_path)
    assert outcome.kill.killed and outcome.kill.resume_from is None
    assert outcome.differences == ()
