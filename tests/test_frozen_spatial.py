"""The video stages through the real training path (GeneratorTask, DeepSpeed engine, train.training_step): the frozen
image-stage weights stay bit-identical and never reach the optimizer; only the temporal group moves."""

import torch

from tests.toys import build_toy_inputs, stage_sets
from cogvideo_lite.train import distributed
from cogvideo_lite.train.config import load_config
from cogvideo_lite.train.engine import build_engine
from cogvideo_lite.bundle.exports import load_image_model
from cogvideo_lite.train.generator_task import GeneratorTask
from cogvideo_lite.train.stream import SampleStream, micro_batches
from tests.helpers import CONFIGS, train
from train import Trainer, training_step


def test_keyframe_training_moves_only_the_temporal_group(tmp_path):
    inputs = build_toy_inputs(tmp_path / "toy")
    image_run = tmp_path / "image"
    train(CONFIGS / "image_tiny.yaml", image_run, stage_sets("image", inputs))
    config = load_config(CONFIGS / "keyframe_tiny.yaml",
                         stage_sets("keyframe", inputs, image_run) + [f"run_dir={tmp_path / 'keyframe'}"])

    dist_info = distributed.init_distributed(device="cpu")
    torch.manual_seed(0)
    task = GeneratorTask(config)
    engine, optimizer, _ = build_engine(task.module, task.trainable_parameters(), config.train, 1, dist_info.device)
    image_model, _ = load_image_model(image_run / "model")
    spatial = set(task.model.spatial_parameter_names())
    before = {name: p.detach().clone() for name, p in task.model.named_parameters()}

    # ZeRO-2 keeps the model parameters it optimises in `bit16_groups` (and flat float32 copies of them)
    optimised = {id(p) for group in engine.optimizer.bit16_groups for p in group}
    named = dict(task.model.named_parameters())
    assert optimised == {id(p) for name, p in named.items() if name not in spatial}

    stream = SampleStream(task.num_samples(), config.train.micro_batch, 1, 1, config.train.seed)
    batches = micro_batches(task, stream, 0, 3, 0, 0)
    for step in range(3):
        training_step(Trainer(engine, optimizer, task, stream, dist_info, torch.float32), batches, step)

    image_weights = dict(image_model.named_parameters())
    for name, parameter in task.model.named_parameters():
        if name in spatial:
            assert not parameter.requires_grad, name
            assert torch.equal(parameter, before[name]) and torch.equal(parameter, image_weights[name]), name
    moved = [name for name, p in task.model.named_parameters() if name not in spatial and not torch.equal(p, before[name])]
    assert moved, "the temporal group should have been trained"
