"""Two ranks on one CPU through DeepSpeed ZeRO-2 (gloo) train exactly what one process trains with the same global
batch, and keep the codebook identical on both ranks."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from cogvideo_lite.train.distributed import free_port
from tests.helpers import CONFIGS, metrics, train
from tests.test_train_tokenizer import tiny_sets

CONFIG = CONFIGS / "tokenizer_tiny.yaml"


def torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]


def test_two_ranks_match_one_process(tmp_path, shapes_dataset):
    one, two = tmp_path / "one", tmp_path / "two"
    sets = tiny_sets(shapes_dataset, 4) + ["train.save_every=4"]
    train(CONFIG, one, sets + ["train.micro_batch=8"])
    train(CONFIG, two, sets + ["train.micro_batch=4"], launcher=torchrun())
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 4, "replicas_identical": True} in records  # codebook and weights equal on both ranks

    a, b = metrics(one), metrics(two)
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4 * max(1.0, abs(a[step])), (step, a[step], b[step])
    wa = load_file(str(one / "model" / "model.safetensors"))
    wb = load_file(str(two / "model" / "model.safetensors"))
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-4, rtol=1e-3), name


def test_a_single_process_leaves_no_rendezvous_folder_behind(tmp_path):
    code = ("from cogvideo_lite.train import distributed; import glob, tempfile; distributed.init_distributed('cpu'); "
            "print(len(glob.glob(tempfile.gettempdir() + '/cogvideo_lite_pg_*')))")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("MASTER_PORT", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "1"  # the group's store while the process runs
    assert not list(tmp_path.glob("cogvideo_lite_pg_*"))  # removed when it exits
