"""Running the project's own entry points from tests, as a user would (a fresh Python process each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def run_script(args: list[str], timeout: int = 600, check: bool = True, env: dict | None = None,
               launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `python <args>` (or `<launcher> <args>`) from the repository root; on failure show its output."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    command = (launcher or [sys.executable]) + args
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                             f"\n--- stderr\n{result.stderr[-6000:]}")
    return result


def train(config: str | Path, run_dir: Path, sets: list[str] = (), extra: list[str] = (), **kwargs):
    args = ["train.py", "--config", str(config), "--set", f"run_dir={run_dir}"]
    for item in sets:
        args += ["--set", item]
    return run_script(args + list(extra), **kwargs)


def metrics(run_dir: Path, key: str = "total") -> dict[int, float]:
    """step -> logged value of `key` from a run's metrics.jsonl (training lines only)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if not record.get("eval") and key in record:
            out[record["step"]] = record[key]
    return out
