"""Toy inputs for real training runs in tests (and `bench/reliability.py`): a few built-in clips, a random frame
tokenizer, a text model and token shards, built in seconds, and the `--set` overrides of a tiny run of each stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cogvideo_lite.data.shapes import ClipSpec, all_captions, generate
from cogvideo_lite.prepare.prepare import PrepareConfig, prepare
from cogvideo_lite.text import DEFAULT_RATES, DEFAULT_VOCAB_SIZE, TEXT_MODEL_FILE, train_text_model
from tokenizer.config import TokenizerConfig
from tokenizer.io import save_tokenizer
from tokenizer.model import VQVAE

STEPS = {"tokenizer": 6, "image": 12, "keyframe": 12, "interpolate": 12}  # ~0.3 s a tokenizer step, ~0.03 s others
SAVE_EVERY = 2  # every other step saves: the others are steps between checkpoints
SHAPES_CLIPS, SHAPES_SEED = 4, 7
TOY_TOKENIZER = TokenizerConfig(image_size=32, codebook_size=64, channels=32, channel_mult=(1, 1, 1, 1))
TOY_MODEL = ("model.dim=32", "model.depth=2", "model.heads=2")


@dataclass(frozen=True)
class ToyInputs:
    """What the stages train on: built-in clips, a random (untrained) frame tokenizer, a text model, shards."""

    shapes: Path
    tokenizer: Path
    text: Path
    shards: Path


def build_toy_inputs(root: Path) -> ToyInputs:
    """A few seconds: 4 built-in clips, a random 32x32 -> 4x4 VQVAE, a sentencepiece model, 16 shard samples."""
    root = Path(root)
    inputs = ToyInputs(root / "shapes", root / "tokenizer", root / "text", root / "shards")
    generate(inputs.shapes, SHAPES_CLIPS, SHAPES_SEED, ClipSpec(), progress=False)
    train_text_model(all_captions(), inputs.text / TEXT_MODEL_FILE, DEFAULT_VOCAB_SIZE, DEFAULT_RATES)
    torch.manual_seed(0)
    save_tokenizer(VQVAE(TOY_TOKENIZER).eval(), inputs.tokenizer)
    prepare(PrepareConfig(data=inputs.shapes, tokenizer=inputs.tokenizer, text=inputs.text, out=inputs.shards),
            progress=False, device="cpu")
    return inputs


def stage_sets(stage: str, inputs: ToyInputs, image_run: Path | None = None) -> list[str]:
    """The `--set` overrides of a tiny run of `stage` (a video stage extends the image run `image_run`)."""
    common = [f"train.steps={STEPS[stage]}", f"train.save_every={SAVE_EVERY}", "train.keep_checkpoints=2",
              "train.micro_batch=4", "train.warmup_steps=2", "train.log_every=1"]
    if stage == "tokenizer":
        return common + [f"data.sources=[{{path: {inputs.shapes}, frames: 4}}]", "data.heldout=[]",
                         "tokenizer.image_size=32", "tokenizer.codebook_size=64", "tokenizer.usage_window=1024"]
    sets = common + [f"data.shards={inputs.shards}", *TOY_MODEL]
    if stage != "image":
        if image_run is None:
            raise ValueError(f"the {stage} stage extends an image run: pass image_run")
        sets.append(f"image_checkpoint={image_run}")
    return sets
