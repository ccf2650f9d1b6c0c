"""The benchmarks' own arithmetic: analytic FLOP counts against torch's FLOP counter, the memory estimate against
what autograd saves, parameter counts on the meta device against a real model, timing and table helpers, a CPU
smoke run of the GPU benchmark, and the YAML run lists of the GPU runs. No speed is asserted."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.common import format_value, generator_layout, measure, print_table, text_tokenizer
from bench.memory import activation_elements, parameter_counts, saved_for_backward_bytes
from bench.train_speed import (build_generator_stage, build_tokenizer_stage, generator_step_flops,
                               tokenizer_forward_flops)
from cogvideo_lite.model.config import GENERATOR_SIZES
from cogvideo_lite.model.transformer import Generator
from helpers import ROOT


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    torch.set_num_threads(1)
    return text_tokenizer(tmp_path_factory.mktemp("text"))


def counted(function) -> int:
    """FLOPs torch counts for `function`, with attention in its plain matmul form (which the counter sees)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


@pytest.mark.parametrize("stage", ["image", "keyframe", "interpolate"])
def test_generator_flops_equal_torch_flop_counter(stage, text):
    setup = build_generator_stage(stage, "tiny", 1, text)
    setup.module.model.attention = "dense"  # every pair, as the dense count has it
    outputs = {}
    forward = counted(lambda: outputs.setdefault("loss", setup.module(setup.batch, 0).loss))
    backward = counted(lambda: outputs["loss"].backward())
    flops = generator_step_flops(GENERATOR_SIZES["tiny"], generator_layout("tiny", stage, text.vocab_size), stage, 1)
    assert forward == flops.forward
    assert forward + backward == flops.executed  # frozen weights: no weight-gradient matmul
    assert flops.model == 3 * flops.forward
    assert (flops.executed < flops.model) == (stage != "image")


def test_tokenizer_flops_equal_torch_flop_counter():
    setup = build_tokenizer_stage("tiny", 2)
    model = setup.module.model.eval()
    assert counted(lambda: model(setup.batch["frames"])) == 2 * tokenizer_forward_flops(model)
    assert setup.flops.forward == 2 * tokenizer_forward_flops(model)


def test_gpt2_flops_equal_torch_flop_counter(text):
    pytest.importorskip("transformers")
    from bench.peer_gpt2 import build_gpt2, gpt2_step_flops

    config = GENERATOR_SIZES["tiny"]
    layout = generator_layout("tiny", "keyframe", text.vocab_size)
    model = build_gpt2(config, layout).eval()
    ids = torch.randint(0, layout.codebook_size, (1, layout.seq_length))
    with torch.no_grad():
        assert 3 * counted(lambda: model(input_ids=ids)) == gpt2_step_flops(config, layout.seq_length,
                                                                            layout.codebook_size, 1)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_meta_parameter_counts_match_a_real_model(size, text):
    model = Generator(GENERATOR_SIZES[size], generator_layout(size, "keyframe", text.vocab_size))
    model.freeze_spatial()
    assert parameter_counts(size, "keyframe", text.vocab_size) == (
        sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad))


@pytest.mark.parametrize("stage", ["image", "keyframe"])
def test_activation_estimate_is_close_to_what_autograd_saves(stage, text):
    setup = build_generator_stage(stage, "tiny", 2, text)
    setup.module.model.attention = "dense"  # the estimate is the GPU's: no per-slot copies of gathered keys
    saved = saved_for_backward_bytes(setup)
    estimate = 4 * 2 * activation_elements("tiny", stage, text.vocab_size)
    assert abs(estimate - saved) / saved < 0.15


def test_measure_runs_warmup_then_repeats_and_table_prints_mixed_rows(capsys):
    calls = []
    timing = measure(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(timing.wall) == len(timing.cpu) == 3
    assert timing.seconds == sorted(timing.wall)[1]
    with pytest.raises(ValueError, match="repeats=0"):
        measure(lambda: None, warmup=0, repeats=0)
    print_table("t", [{"a": 1, "b": 2.5}, {"a": 3, "c": 1e-4}])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["a", "b", "c"] and lines[4].split() == ["3", "1.000e-04"]
    assert format_value(1234.5) == "1234" and format_value(0.01234) == "0.0123"


@pytest.mark.slow  # about a minute alone (DeepSpeed start-up, two engines), several on a shared machine
def test_gpu_bench_smoke_runs_on_cpu_and_writes_json(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "-m", "bench.gpu_bench", "--smoke", "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {}
    for row in record["rows"]:
        rows.setdefault(row["phase"].split(" (")[0], []).append(row)
    assert list(rows) == ["matmul 1024^2 fp32", "train keyframe", "check forward", "check 3 training steps",
                          "sample 9 frames, cached"]
    assert [row["stage"] for row in rows["check forward"]] == ["image", "keyframe", "interpolate"]
    assert all(row["max |difference|"] < 1e-5 for row in rows["check forward"])
    assert rows["check 3 training steps"][0]["max relative difference"] < 1e-5
    assert [row["attention"] for row in rows["train keyframe"]] == ["auto", "dense"]
    assert all(0 < row["MFU (useful)"] < row["MFU (dense)"] for row in rows["train keyframe"])
    assert [row["batch"] for row in rows["sample 9 frames, cached"]] == [1, 2]
    assert record["settings"]["smoke"] and record["machine"]["torch"] == torch.__version__


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without a GPU")
def test_gpu_bench_without_a_gpu_says_so():
    from bench.gpu_bench import main as gpu_bench

    with pytest.raises(SystemExit, match="no CUDA device here; `--smoke` checks the script on CPU"):
        gpu_bench([])


@pytest.mark.parametrize("name", ["tokenizer", "generator", "video_stages", "throughput", "sampling"])
def test_gpu_run_lists_name_configs_and_runs_that_exist(name, tmp_path, capsys):
    """The YAML run lists of the GPU runs: each run's config exists, names are unique, evaluations name runs of the
    list, and a dry run prints one train.py command per run, the benchmark where the list asks for it, and one
    command per entry of its benchmarks, whose arguments parse."""
    import yaml

    from bench.gpu_runs import main as gpu_runs

    path = ROOT / "bench" / "runs" / f"{name}.yaml"
    plan = yaml.safe_load(path.read_text())
    runs = [run for group in plan["groups"] for run in group["runs"]]
    assert all((ROOT / "configs" / f"{run['config']}.yaml").is_file() for run in runs)
    names = [run["name"] for run in runs]
    assert len(set(names)) == len(names)
    assert all({entry["keyframe"], entry["interpolate"]} <= set(names) for entry in plan.get("evaluations", []))
    gpu_runs([str(path), "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("train.py --config") == len(runs)
    assert out.count("-m bench.gpu_bench") == bool(plan.get("bench"))
    benchmarks = plan.get("benchmarks", [])
    assert all(out.count(f"-m bench.{entry['module']}") >= 1 for entry in benchmarks)
    for entry in benchmarks:  # argparse accepts the arguments (a bad one exits)
        parser = importlib.import_module(f"bench.{entry['module']}").build_parser()
        parser.parse_args([*map(str, entry.get("args", [])), "--json", str(tmp_path / "x")])


def test_gpu_run_list_bench_wants_seconds(tmp_path):
    from bench.gpu_runs import main as gpu_runs

    path = tmp_path / "list.yaml"
    path.write_text("bench: true\n")
    with pytest.raises(SystemExit, match="bench=True: expected seconds for bench.gpu_bench, or false"):
        gpu_runs([str(path), "--dry-run", "--out", str(tmp_path)])
