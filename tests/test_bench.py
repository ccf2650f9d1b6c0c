"""The benchmarks' own arithmetic: analytic FLOP counts against torch's FLOP counter, the memory estimate against
what autograd saves, parameter counts on the meta device against a real model, timing and table helpers, and a CPU
smoke run of the GPU benchmark. No speed is asserted."""

from __future__ import annotations

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


@pytest.mark.slow  # about 15 s alone, 30 s on a shared machine (DeepSpeed start-up)
def test_gpu_bench_smoke_runs_on_cpu_and_writes_json(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "-m", "bench.gpu_bench", "--smoke", "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    phases = [row["phase"] for row in record["rows"]]
    assert phases[0].startswith("matmul") and phases[1].startswith("train keyframe (fp32, DeepSpeed ZeRO-2)")
    assert [row["batch"] for row in record["rows"][2:]] == [1, 2]
    assert all(row["s/call"] > 0 for row in record["rows"][2:]) and record["rows"][1]["tokens/s"] > 0
    assert record["settings"]["smoke"] and record["machine"]["torch"] == torch.__version__


def test_shape_probe_counts_the_checkers_shape_per_captioned_shape(bundle):
    import numpy as np

    from bench.shape_probe import main as shape_probe, shape_shares
    from cogvideo_lite.data.shapes import caption_for, render_clip

    rng = np.random.default_rng(0)
    words = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "square")]
    frames = np.stack([render_clip(colour, shape, "left", "slowly", rng)[0][0] for colour, shape in words])
    captions = [caption_for(colour, shape, "left", "slowly") for colour, shape in words]
    assert shape_shares(frames, captions) == {"circle": 1.0, "square": 1.0, "triangle": 1.0}
    # the same frames under other shapes' captions: the circle called a square, one square called a triangle
    wrong = [caption_for(c, s, "left", "slowly") for c, s in
             [("red", "square"), ("blue", "square"), ("green", "triangle"), ("yellow", "triangle")]]
    assert shape_shares(frames, wrong) == {"square": 0.5, "triangle": 0.5}
    result = shape_probe(["--ckpt", str(bundle), "--seeds", "1"])  # the untrained tiny bundle: runs end to end
    assert result["captions"] == 168 and set(result["image_model"]) == {"circle", "square", "triangle"}


def test_shape_probe_image_option_swaps_in_another_export_that_fits(bundle, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from bench.shape_probe import main as shape_probe, swap_image_model
    from cogvideo_lite.bundle.make import resolve_parts
    from cogvideo_lite.bundle.exports import CheckpointMismatch, read_weights
    from cogvideo_lite.sample.pipeline import Pipeline

    image = resolve_parts(bundle)["image"]
    other = tmp_path / "image"
    shutil.copytree(image, other)
    weights = read_weights(other / "model.safetensors")
    weights = {name: tensor + 0.01 * torch.randn_like(tensor) for name, tensor in weights.items()}
    save_file(weights, str(other / "model.safetensors"))
    pipeline = Pipeline.load(bundle)
    swap_image_model(pipeline, other)
    assert all(torch.equal(pipeline.image.state_dict()[name], tensor) for name, tensor in weights.items())
    # the bundle's own image export through --image draws the same frames as the bundle itself
    plain = shape_probe(["--ckpt", str(bundle), "--seeds", "1", "--device", "cpu"])
    swapped = shape_probe(["--ckpt", str(bundle), "--seeds", "1", "--device", "cpu", "--image", str(image)])
    assert swapped["image_model"] == plain["image_model"] and "keyframe_model" not in swapped
    spec = json.loads((other / "generator.json").read_text())
    spec["text"]["model_sha256"] = "0" * 64
    (other / "generator.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointMismatch, match=r"generator.json records text .*, but .*image/generator.json has"):
        swap_image_model(pipeline, other)


def test_usage_ceiling_kmeans_finds_separated_clusters_and_weights_favour_sparse_points():
    from bench.usage_ceiling import density_weights, kmeans, pixel_patches

    generator = torch.Generator().manual_seed(0)
    true_centres = torch.nn.functional.normalize(torch.eye(8)[:4] * 3 + 0.1, dim=1)     # 4 far-apart unit vectors
    noise = 0.02 * torch.randn(200, 8, generator=generator)
    points = torch.nn.functional.normalize(true_centres.repeat_interleave(50, 0) + noise, dim=1)
    centres = kmeans(points, 4, 10, generator)
    # brute force: every true centre has a fitted one within the noise, and the fit is on the unit sphere
    assert torch.cdist(true_centres, centres).min(1).values.max() < 0.02
    assert torch.allclose(centres.norm(dim=1), torch.ones(4), atol=1e-5)
    # a tight clump and a loose one: the loose one's points weigh more for alpha > 0, less for alpha < 0
    clumps = torch.cat([0.01 * torch.randn(100, 2, generator=generator), 5 + torch.randn(100, 2, generator=generator)])
    sparse, dense = density_weights(clumps, 0.5), density_weights(clumps, -0.5)
    assert sparse[100:].mean() > 10 * sparse[:100].mean() and dense[:100].mean() > 10 * dense[100:].mean()
    # patches come out in the encoder grid's order: patch (row 0, col 1) of frame 0 is pixels [0:8, 8:16]
    frames = torch.randn(2, 3, 16, 16, generator=generator)
    assert torch.equal(pixel_patches(frames, 8)[1], frames[0, :, 0:8, 8:16].reshape(-1))
