"""Training runs on a lent GPU from a YAML run list (`bench/runs/*.yaml`), in one call (`bash bench/gpu.sh LIST`).

    python -m bench.gpu_runs bench/runs/video_stages.yaml [--out DIR] [--dry-run]

A run list:

    bench: 80              # first `bench.gpu_bench` alone on the card for that many seconds (its --budget: the jobs
                           # that fit, most important first), for clean timings (default false: none)
    benchmarks:            # then these `bench.<module>` scripts alone on the card, one after the other
      - {module: sample_speed, name: sample-small, limit: 150, args: [--size, small, --device, cuda]}
    groups:                # one after the other; the runs of a group side by side on the one card
      - limit: 160         # seconds a run of the group may take; one cut off is published from its newest checkpoint
        runs:
          - name: img-a                  # trains runs/<name> (log runs/<name>.log) with train.py --overwrite
            config: image_tiny           # configs/<config>.yaml
            set: {data.shards: runs/shards-steady8k, train.lr: 2.0e-3}   # --set overrides
            background: true             # optional: later groups start without waiting for it
        pick_image: true   # optional: of this group's image runs, the one whose frame 0 shows the captioned shapes best
                           # (`evaluate first-frames --image`, best worst-shape share) becomes `{image}` in later sets
    evaluations:           # bundles of the runs (tokenizer, text and image default to the shipped bundle's; `{image}`
      - {name: lean, keyframe: kf-lean, interpolate: in-lean}      # in `image`), then `evaluate shapes` of each
    evaluate_limit: 75     # seconds per evaluation, all side by side
    evaluate_args: [--seeds, 2, --batch-size, 168, --top-k, 20, --interp-top-k, 1]

`{image}` in a value stands for the picked image run (`runs/<name>`, default `runs/image-tiny`, which gpu.sh points at
the shipped image stage), `{image_dropout}` for its model's dropout (a video stage's model config must equal it).
A benchmark writes --json <out>/<name>.json and its table to <out>/<name>.txt.
Everything comes back under --out: report.txt (each run's last log lines, each evaluation's table), gpu_bench.json,
and the runs with their logs, exports and evaluations (runs.tgz.part-*, split under 16 MiB). The run lists of the
shipped models are bench/runs/tokenizer.yaml, generator.yaml and video_stages.yaml.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = "checkpoints/shapes-tiny"
DEFAULT_IMAGE = "runs/image-tiny"
BENCH_OVERRUN = 60  # seconds gpu_bench may run past its budget: a job started within the budget runs to its end
PART_BYTES = 15 * 2**20  # what comes back from a lent machine: files of at most 16 MiB
PUBLISH = ("from cogvideo_lite.train.checkpoint import RunDirectory; import sys; run = RunDirectory(sys.argv[1]); "
           "tag = run.latest_tag(); print('published', tag); tag and run.publish(tag)")


def train_command(run: dict, image: str) -> list[str]:
    """train.py of a run, `{image}` and `{image_dropout}` (its model's dropout, which a video stage must share) filled
    in from the image run."""
    sets = [f"run_dir=runs/{run['name']}"] + [f"{key}={value}" for key, value in (run.get("set") or {}).items()]
    spec = ROOT / image / "model" / "generator.json"
    if spec.is_file():  # (a dry run may come before the image run exists)
        sets = [value.replace("{image_dropout}", str(json.loads(spec.read_text())["model"]["dropout"])) for value in sets]
    return ([sys.executable, "train.py", "--config", f"configs/{run['config']}.yaml", "--overwrite"]
            + [item for value in sets for item in ("--set", value.replace("{image}", image))])


def start(command: list[str], log: Path, limit: float, dry_run: bool) -> subprocess.Popen | None:
    """Start `command` in the repository root under a time limit, its output to `log` (nothing with dry_run)."""
    print(f"[{limit:g} s] {' '.join(command)}  > {log}", flush=True)
    if dry_run:
        return None
    return subprocess.Popen(["timeout", str(limit)] + command, cwd=ROOT, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def run_to_end(command: list[str], log: Path, limit: float, dry_run: bool) -> int | None:
    """`start`, then wait: the exit status (None with dry_run)."""
    process = start(command, log, limit, dry_run)
    return None if process is None else process.wait()


def finish(process: subprocess.Popen | None, run: dict, report: list[str]) -> None:
    """Wait for a training run; publish its newest checkpoint if its limit cut it off before the final export."""
    if process is None:
        return
    code, log = process.wait(), ROOT / "runs" / f"{run['name']}.log"
    if not (ROOT / "runs" / run["name"] / "model").is_dir():
        subprocess.run([sys.executable, "-c", PUBLISH, f"runs/{run['name']}"], cwd=ROOT, stdout=open(log, "a"),
                       stderr=subprocess.STDOUT)
    lines = [line for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    report += [f"== {run['name']} (exit {code})", *lines[-3:]]


def pick_image(runs: list[dict], dry_run: bool, report: list[str]) -> str | None:
    """The image run whose frame 0 shows the captioned shapes best: the highest lowest share over the shapes."""
    scores = {}
    for run in runs:
        out = ROOT / "runs" / f"probe-{run['name']}.json"
        command = [sys.executable, "-m", "cogvideo_lite.evaluate", "first-frames", "--ckpt", SHIPPED, "--image",
                   f"runs/{run['name']}/model", "--seeds", "2", "--top-k", "20", "--json", str(out)]
        run_to_end(command, out.with_suffix(".txt"), 45, dry_run)
        if out.is_file():
            shares = json.loads(out.read_text())["image_model"]
            scores[run["name"]] = (min(shares.values()), sum(shares.values()))
            report.append(f"first-frames of {run['name']}: {shares}")
    return f"runs/{max(scores, key=scores.get)}" if scores else None


def evaluate(evaluations: list[dict], plan: dict, image: str, dry_run: bool, report: list[str]) -> None:
    """A bundle of each evaluation's runs, then `evaluate shapes` of all of them side by side."""
    processes = []
    for entry in evaluations:
        parts = {"tokenizer": f"{SHIPPED}/tokenizer", "text": f"{SHIPPED}/text", "image": "{image}/model",
                 **{key: f"runs/{value}/model" for key, value in entry.items() if key in ("keyframe", "interpolate")},
                 **{key: value for key, value in entry.items() if key in ("tokenizer", "text", "image")}}
        bundle = f"runs/bundle-{entry['name']}"
        command = [sys.executable, "-m", "cogvideo_lite.bundle", "--out", bundle, "--recommend", "top_k=20",
                   "--recommend", "interp_top_k=1"] + [item for key, path in parts.items()
                                                     for item in (f"--{key}", path.replace("{image}", image))]
        log = ROOT / "runs" / f"eval-{entry['name']}.txt"
        if run_to_end(command, log, 120, dry_run):
            report.append(f"== evaluate {entry['name']}: the bundle was refused, see {log}")
            continue
        command = [sys.executable, "-m", "cogvideo_lite.evaluate", "shapes", "--ckpt", bundle, "--json",
                   f"runs/eval-{entry['name']}.json", *map(str, plan.get("evaluate_args", []))]
        processes.append((entry["name"], start(command, log.with_suffix(".table"), plan.get("evaluate_limit", 75),
                                               dry_run)))
    for name, process in processes:
        if process is not None:
            process.wait()
            table = (ROOT / "runs" / f"eval-{name}.table").read_text(errors="replace").splitlines()
            report += [f"== evaluate {name}", *table[-14:]]


def pack(out: Path, names: list[str]) -> None:
    """The runs' logs, exports, metrics and configs, the probes and the evaluations, as runs.tgz.part-* of at most
    PART_BYTES each (not the training checkpoints, shards or bundles)."""
    archive = out / "runs.tgz"
    runs = ROOT / "runs"
    paths = [runs / f"{name}{suffix}" for name in names
             for suffix in (".log", "/model", "/metrics.jsonl", "/config.yaml", "/run.json")]
    with tarfile.open(archive, "w:gz") as handle:
        for path in paths + sorted(runs.glob("eval-*")) + sorted(runs.glob("probe-*")):
            if path.exists():
                handle.add(path, arcname=str(path.relative_to(ROOT)))
    data = archive.read_bytes()
    for index in range(0, len(data), PART_BYTES):
        (out / f"runs.tgz.part-{index // PART_BYTES:02d}").write_bytes(data[index:index + PART_BYTES])
    archive.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="a YAML run list (bench/runs/*.yaml)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-out"), help="what comes back from the machine")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    plan = yaml.safe_load(args.runs.read_text())
    if plan.get("bench") and (isinstance(plan["bench"], bool) or not isinstance(plan["bench"], (int, float))):
        raise SystemExit(f"{args.runs}: bench={plan['bench']!r}: expected seconds for bench.gpu_bench, or false")
    if not args.dry_run:
        (ROOT / "runs").mkdir(exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report, image, background = [], DEFAULT_IMAGE, []
    if plan.get("bench"):
        log = args.out / "gpu_bench.txt"
        code = run_to_end([sys.executable, "-m", "bench.gpu_bench", "--json", str(args.out / "gpu_bench.json"),
                           "--budget", str(plan["bench"])], log, plan["bench"] + BENCH_OVERRUN, args.dry_run)
        if code is not None:
            report += [f"== gpu_bench (exit {code})", *log.read_text(errors="replace").splitlines()[-40:]]
    for entry in plan.get("benchmarks", []):
        command = [sys.executable, "-m", f"bench.{entry['module']}", *map(str, entry.get("args", [])), "--json",
                   str(args.out / f"{entry['name']}.json")]
        code = run_to_end(command, args.out / f"{entry['name']}.txt", entry["limit"], args.dry_run)
        report.append(f"== {entry['name']} (exit {code}): {args.out / entry['name']}.txt")
    for group in plan.get("groups", []):
        started = [(run, start(train_command(run, image), ROOT / "runs" / f"{run['name']}.log", group["limit"],
                               args.dry_run)) for run in group["runs"]]
        background += [item for item in started if item[0].get("background")]
        for run, process in started:
            if not run.get("background"):
                finish(process, run, report)
        if group.get("pick_image"):
            image = pick_image([run for run in group["runs"] if run["config"].startswith("image")], args.dry_run,
                               report) or image
            report.append(f"image weights of later runs: {image}")
    for run, process in background:
        finish(process, run, report)
    evaluate(plan.get("evaluations", []), plan, image, args.dry_run, report)
    (args.out / "report.txt").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    if not args.dry_run:
        pack(args.out, [run["name"] for group in plan.get("groups", []) for run in group["runs"]])


if __name__ == "__main__":
    start_time = time.perf_counter()
    main()
    print(f"gpu_runs: {time.perf_counter() - start_time:.0f} s")
