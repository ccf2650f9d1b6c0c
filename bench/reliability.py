"""Crash and resume under SIGKILL: a campaign of kill points over every training stage, and the bad-input count.

    python -m bench.reliability [--points 20] [--seed 0] [--work DIR] [--json OUT]

Every kill point starts a real `train.py` run (real DeepSpeed on CPU, tiny models on toy data), kills its whole
process tree with SIGKILL at a chosen moment, resumes it with `--resume`, and compares the result with an
uninterrupted run of the same config and seed: a kill point is survived when the resumed run exits cleanly and its
logged metrics (every key but the measured speed) and its final exported weights equal the uninterrupted run's
exactly. Moments, at a random step k drawn from a seeded generator:
- `between`: k is a step without a checkpoint; the kill comes as soon as step k is logged, during step k + 1;
- `checkpoint`: k is a saving step; the kill comes as soon as the directory `step-<k>.partial` (or a later one)
  appears, i.e. while that checkpoint is being written.
Where each kill really landed is read back from the run directory (`landing`): a poll every millisecond catches a
tokenizer checkpoint write (~100 ms) surely, a tiny generator's (~5 ms) not always.
Stages: tokenizer, image, keyframe, interpolate, and the tokenizer on two processes (torchrun) — the campaign cycles
through them. The same functions serve `tests/test_crash_resume.py`.

The bad-input figure runs `python -m cogvideo_lite.data.check` over the mixed corpus of tests/test_bad_inputs.py
(rebuilt here with that test's video writer) and reports how many of its known-bad entries were named.

Knows nothing of what training computes: it reads run directories (checkpoint.py's layout) and exported weights.
The method — kill at random points, including inside the commit protocol, then check that recovery is exact — is
the crash-point testing habit of storage systems (e.g. ALICE, Pillai et al., OSDI 2014), applied to checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.common import machine_info, report
from cogvideo_lite.model.stages import IMAGE, STAGES
from cogvideo_lite.train.checkpoint import PARTIAL_SUFFIX, RunDirectory
from cogvideo_lite.train.distributed import free_port
from tests.toys import SAVE_EVERY, STEPS, ToyInputs, build_toy_inputs, stage_sets

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
VARIANTS = tuple(STEPS) + ("tokenizer-2ranks",)  # the campaign's cycle: every stage, then two processes
MOMENTS = ("between", "checkpoint")
POLL_SECONDS = 0.001  # a generator checkpoint is written in ~5 ms, a tokenizer one in ~100 ms
RUN_TIMEOUT = 300  # seconds for one train.py run (two processes start slowly on a busy machine)
NOT_COMPARED = ("samples_per_s",)  # a measured speed: differs between any two runs
BAD_INPUT_FRAMES, BAD_INPUT_RATES = 5, "1,2,4,8"


def train_command(stage: str, run_dir: Path, sets: list[str], ranks: int = 1, resume: bool = False) -> list[str]:
    """`python train.py ...`, or the same under torchrun with `ranks` processes on this machine."""
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(free_port())]
    command = launcher + ["train.py", "--config", str(CONFIGS / f"{stage}_tiny.yaml"), "--set", f"run_dir={run_dir}"]
    for item in sets:
        command += ["--set", item]
    return command + (["--resume"] if resume else [])


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_to_end(command: list[str], log: Path) -> None:
    """Run a command from the repository root; raise naming its log when it fails."""
    with open(log, "w") as handle:
        finished = subprocess.run(command, cwd=ROOT, env=environment(), stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=RUN_TIMEOUT)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {finished.returncode}; its output is in {log}:\n"
                           + log.read_text()[-3000:])


# ---------------------------------------------------------------------------------------------------- killing
def variant_stage(variant: str) -> str:
    return variant.split("-")[0]


def variant_ranks(variant: str) -> int:
    return 2 if variant.endswith("-2ranks") else 1


@dataclass(frozen=True)
class KillPoint:
    variant: str  # one of VARIANTS
    moment: str  # one of MOMENTS
    step: int  # the step whose log line (moment "between") or checkpoint write ("checkpoint") triggers the kill

    @property
    def stage(self) -> str:
        return variant_stage(self.variant)

    @property
    def ranks(self) -> int:
        return variant_ranks(self.variant)


def draw_kill_point(variant: str, moment: str, rng: random.Random) -> KillPoint:
    """A random step of the run: one that saves nothing for `between`, one that saves (the last included) for
    `checkpoint`."""
    steps = STEPS[variant_stage(variant)]
    saving = [k for k in range(1, steps + 1) if k % SAVE_EVERY == 0 or k == steps]
    if moment == "between":
        return KillPoint(variant, moment, rng.choice([k for k in range(1, steps) if k not in saving]))
    if moment == "checkpoint":
        return KillPoint(variant, moment, rng.choice(saving))
    raise ValueError(f"moment={moment!r}: expected one of {MOMENTS}")


def plan_kill_points(count: int, seed: int) -> list[KillPoint]:
    """`count` kill points cycling through the variants and alternating moments, with seeded random steps."""
    rng = random.Random(seed)
    return [draw_kill_point(VARIANTS[i % len(VARIANTS)], MOMENTS[(i // len(VARIANTS)) % 2], rng)
            for i in range(count)]


@dataclass(frozen=True)
class Kill:
    """What a kill left behind."""

    killed: bool  # False: the run ended before the kill point was reached
    landing: str  # between checkpoints | during a checkpoint write | after the checkpoint, before `latest` | ...
    last_logged: int  # the last step in metrics.jsonl at the kill
    resume_from: str | None  # the checkpoint a resume will start from


def _logged_steps(metrics_path: Path) -> list[int]:
    try:
        lines = metrics_path.read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):  # a line being written this instant
            continue
    return steps


def _reached(point: KillPoint, run: RunDirectory) -> bool:
    if point.moment == "between":
        return any(step >= point.step for step in _logged_steps(run.metrics_path))
    try:
        names = os.listdir(run.checkpoints)
    except FileNotFoundError:
        return False
    return any(name.endswith(PARTIAL_SUFFIX) and _tag_step(name.removesuffix(PARTIAL_SUFFIX)) >= point.step
               for name in names)


def _tag_step(tag: str) -> int:
    return int(tag.split("-", 1)[1]) if tag.startswith("step-") and tag.split("-", 1)[1].isdigit() else -1


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (torchrun starts its workers in sessions of their own: a process-group kill
    would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


def kill_tree(pid: int) -> None:
    """Freeze the whole tree (so no process outlives another by a step), then SIGKILL every process of it."""
    _signal(pid, signal.SIGSTOP)  # at once: listing the tree takes milliseconds, a tiny training step not many more
    tree = process_tree(pid)
    for member in tree:
        _signal(member, signal.SIGSTOP)
    for member in process_tree(pid) + tree:
        _signal(member, signal.SIGKILL)
    for member in tree:
        while _alive(member):
            time.sleep(POLL_SECONDS)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def landing(run: RunDirectory) -> str:
    """Where in the commit protocol of RunDirectory.save / publish a dead run stopped, read from its directory."""
    if not run.checkpoints.exists():
        return "before the first checkpoint"
    if any(name.endswith(PARTIAL_SUFFIX) for name in os.listdir(run.checkpoints)):
        return "during a checkpoint write"
    pointer = run.checkpoints / "latest"
    named = pointer.read_text().strip() if pointer.exists() else None
    complete = run.complete_tags()
    if complete and complete[-1] != named:
        return "after a checkpoint was renamed, before `latest` named it"
    if (run.root / "model.tmp").exists():
        return "while publishing the final export"
    return "between checkpoints"


def run_until_killed(command: list[str], run_dir: Path, point: KillPoint, log: Path) -> Kill:
    """Start `command`; SIGKILL its process tree once `point` is reached (or let it end if it never is)."""
    run = RunDirectory(run_dir)
    deadline = time.monotonic() + RUN_TIMEOUT
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            while process.poll() is None:
                if _reached(point, run):
                    kill_tree(process.pid)
                    process.wait()
                    steps = _logged_steps(run.metrics_path)
                    return Kill(True, landing(run), max(steps, default=0), run.latest_tag())
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{' '.join(command)} ran over {RUN_TIMEOUT} s; see {log}")
                time.sleep(POLL_SECONDS)
        finally:
            if process.poll() is None:
                kill_tree(process.pid)
                process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed before the kill point (exit {process.returncode}); see {log}")
    return Kill(False, "not reached: the run finished", max(_logged_steps(run.metrics_path), default=0),
                run.latest_tag())


# ---------------------------------------------------------------------------------------------------- comparing
def logged_records(run_dir: Path) -> list[dict]:
    """The lines of metrics.jsonl without the measured speed."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in NOT_COMPARED} for line in lines]


def differences(reference: Path, candidate: Path) -> list[str]:
    """Every way the candidate run's metrics and final export differ from the reference's; [] when identical."""
    found = []
    expected, got = logged_records(reference), logged_records(candidate)
    if expected != got:
        first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
        found.append(f"metrics.jsonl differs from line {first + 1}: expected "
                     f"{expected[first] if first < len(expected) else 'no line'}, "
                     f"got {got[first] if first < len(got) else 'no line'}")
    reference_files = sorted(p.name for p in (Path(reference) / "model").iterdir())
    candidate_files = sorted(p.name for p in (Path(candidate) / "model").iterdir())
    if reference_files != candidate_files:
        return found + [f"export files {candidate_files}, expected {reference_files}"]
    for name in reference_files:
        a, b = Path(reference) / "model" / name, Path(candidate) / "model" / name
        if name.endswith(".safetensors"):
            found += _tensor_differences(load_file(str(a)), load_file(str(b)), name)
        elif a.read_bytes() != b.read_bytes():
            found.append(f"export file {name} differs")
    return found


def _tensor_differences(expected: dict, got: dict, file_name: str) -> list[str]:
    if expected.keys() != got.keys():
        return [f"{file_name}: tensors {sorted(got)}, expected {sorted(expected)}"]
    return [f"{file_name}: {key} differs (largest difference {(expected[key].float() - got[key].float()).abs().max()})"
            for key in expected if not torch.equal(expected[key], got[key])]


# ---------------------------------------------------------------------------------------------------- one kill point
@dataclass(frozen=True)
class Outcome:
    point: KillPoint
    kill: Kill
    differences: tuple[str, ...]

    @property
    def survived(self) -> bool:
        return self.kill.killed and not self.differences


def kill_and_resume(point: KillPoint, sets: list[str], reference: Path, work: Path) -> Outcome:
    """Run `point.stage` with `sets` in a new directory under `work`, kill it at `point`, resume it to the end and
    compare it with the uninterrupted run `reference`."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{point.variant}-{point.moment}-{point.step}-", dir=work)) / "run"
    kill = run_until_killed(train_command(point.stage, run_dir, sets, point.ranks), run_dir, point,
                            run_dir.with_name("killed.log"))
    if kill.killed:
        run_to_end(train_command(point.stage, run_dir, sets, point.ranks, resume=True),
                   run_dir.with_name("resumed.log"))
    return Outcome(point, kill, tuple(differences(reference, run_dir)))


class ReferenceRuns:
    """Uninterrupted runs, one per variant, trained on first use (video stages extend the image reference)."""

    def __init__(self, inputs: ToyInputs, work: Path):
        self.inputs, self.work, self.runs = inputs, Path(work), {}

    def sets(self, stage: str) -> list[str]:
        return stage_sets(stage, self.inputs, self.get(IMAGE.name) if STAGES[stage].is_video else None)

    def get(self, variant: str) -> Path:
        if variant not in self.runs:
            stage = variant_stage(variant)
            run_dir = self.work / f"reference-{variant}" / "run"
            run_dir.parent.mkdir(parents=True)
            run_to_end(train_command(stage, run_dir, self.sets(stage), variant_ranks(variant)),
                       run_dir.with_name("train.log"))
            self.runs[variant] = run_dir
        return self.runs[variant]


# ---------------------------------------------------------------------------------------------------- bad inputs
def build_bad_input_corpus(root: Path) -> int:
    """The mixed corpus of tests/test_bad_inputs.py under `root`; returns how many of its entries are bad."""
    from tests.conftest import write_video
    from tests.test_bad_inputs import build_corpus

    _, expected_bad = build_corpus(root, write_video)
    return len(expected_bad)


def count_bad_inputs(work: Path) -> dict:
    """Run the dataset checker over the bad-input corpus; what it found against what the corpus holds."""
    root = Path(work) / "bad-inputs" / "data"
    root.parent.mkdir(parents=True)
    expected_bad = build_bad_input_corpus(root)
    findings_path = root.parent / "findings.json"
    finished = subprocess.run([sys.executable, "-m", "cogvideo_lite.data.check", str(root), "--json",
                               str(findings_path), "--num-frames", str(BAD_INPUT_FRAMES), "--rates", BAD_INPUT_RATES],
                              cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    findings = json.loads(findings_path.read_text())
    return {"entries": findings["good"] + len(findings["problems"]), "good": findings["good"],
            "bad_named": len(findings["problems"]), "bad_expected": expected_bad, "exit_status": finished.returncode,
            "reasons": findings["counts"]}


# ---------------------------------------------------------------------------------------------------- campaign
def campaign(points: list[KillPoint], work: Path) -> list[Outcome]:
    inputs = build_toy_inputs(work / "inputs")
    references = ReferenceRuns(inputs, work)
    outcomes = []
    for number, point in enumerate(points, start=1):
        outcome = kill_and_resume(point, references.sets(point.stage), references.get(point.variant), work)
        outcomes.append(outcome)
        verdict = "survived" if outcome.survived else "FAILED: " + "; ".join(outcome.differences or ["not killed"])
        print(f"[{number}/{len(points)}] {point.variant} {point.moment} {point.step}: killed "
              f"{outcome.kill.landing} after step {outcome.kill.last_logged}, resumed from "
              f"{outcome.kill.resume_from or 'scratch'}: {verdict}", flush=True)
    return outcomes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Kill training runs at random points, resume them, compare.")
    parser.add_argument("--points", type=int, default=20, help="kill points (cycling through the stages)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a new temporary one, "
                                                                  "deleted at the end)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    if args.points < 1:
        parser.error(f"--points {args.points}: expected at least 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        outcomes = campaign(plan_kill_points(args.points, args.seed), work)
        bad_inputs = count_bad_inputs(work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = [{"variant": o.point.variant, "moment": o.point.moment, "step": o.point.step,
             "landing": o.kill.landing, "resumed_from": o.kill.resume_from or "scratch",
             "survived": o.survived} for o in outcomes]
    killed = sum(o.kill.killed for o in outcomes)
    in_writes = sum(o.kill.landing != "between checkpoints" for o in outcomes if o.kill.killed)
    notes = [f"kill points tried: {len(outcomes)}, killed: {killed} ({in_writes} inside the checkpoint commit), "
             f"survived (resumed run equal to the uninterrupted one): {sum(o.survived for o in outcomes)}",
             f"bad-input corpus: {bad_inputs['entries']} entries, {bad_inputs['good']} good, "
             f"{bad_inputs['bad_named']} bad named of {bad_inputs['bad_expected']} "
             f"(check exit status {bad_inputs['exit_status']})",
             f"wall time {time.perf_counter() - start:.0f} s"]
    settings = {"points": args.points, "seed": args.seed, "steps": STEPS, "save_every": SAVE_EVERY,
                "bad_inputs": bad_inputs, "failures": [asdict(o.point) | {"differences": list(o.differences)}
                                                        for o in outcomes if not o.survived]}
    return report("reliability", "Kill points: SIGKILL, --resume, compare with an uninterrupted run", rows, args.json,
                  settings, machine_info(), notes)


if __name__ == "__main__":
    main()
