"""The generator stages: image (text-to-image), keyframe and interpolate, all reading pre-tokenized shards.

- image: every frame of every shard sample is a training image; the whole model trains (spatial channel,
  embeddings, feed-forward blocks).
- keyframe: clips at every configured rate; the image export is loaded and frozen, the temporal channel
  (initialised as a copy of the spatial one), the mixing vectors and the frame-index embedding train. With
  `learn_first_frame` the loss covers frame 0 too: the key-frame model then samples the whole key-frame
  sequence, with a first frame drawn from where clips of that caption and rate start (the image stage sees
  every frame of a clip, so its frame 0 can sit where the captioned motion has no room to happen).
- `init_from` (video stages): fine-tune from an earlier export of the same stage on the same image weights, or,
  with `init_from_other_image`, on other image weights of the same architecture, text model and frame tokenizer.
- interpolate: clips at the rates that are twice another rate of the set (the output rate of one interpolation
  round); slots hold true frames [0, 2, 4, 1, 3]; the loss covers frames 1 and 3.
Caption dropout replaces a share of the captions by an empty one, for classifier-free guidance at sampling time.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cogvideo_lite.train.checkpoint import sha256_file
from cogvideo_lite.train.config import RunConfig
from cogvideo_lite.bundle.exports import (FULL_WEIGHTS, TEMPORAL_WEIGHTS, CheckpointMismatch, load_image_model, read_spec,
                                       read_weights, require_image_export, require_same, save_stage)
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.masks import stage_plan
from cogvideo_lite.model.transformer import Generator, stage_loss
from cogvideo_lite.prepare.shards import TEXT_COPY, TokenShards
from cogvideo_lite.train.tasks import StepOutput
from cogvideo_lite.text import TextTokenizer

logger = logging.getLogger(__name__)

CAPTION_DROPOUT_STREAM = 7  # salt that separates the caption-dropout draws from other per-sample randomness


def interpolation_rates(rates: tuple[int, ...]) -> tuple[int, ...]:
    """Rates an interpolation round can produce: those whose half is also in the set (1 -> 2 -> 4 -> 8)."""
    return tuple(r for r in rates if r % 2 == 0 and r // 2 in rates)


class GeneratorObjective(nn.Module):
    """What DeepSpeed wraps: the generator plus its stage, returning the stage's cross-entropy."""

    def __init__(self, model: Generator, stage: str, layout: SequenceLayout, learn_first_frame: bool = False):
        super().__init__()
        self.model = model
        self.stage = stage
        self.layout = layout
        self.plan = stage_plan(layout, stage, learn_first_frame)

    def forward(self, batch: dict[str, Any], step: int):
        tokens = batch["tokens"]  # (B, S) joint-vocabulary ids
        logits = self.model(tokens, batch["text_pad"], self.stage)  # (B, S, codebook_size)
        loss = stage_loss(logits, tokens, self.layout, self.plan.loss_slots)
        with torch.no_grad():
            slot = self.plan.loss_slots[0]
            predicted = logits[:, self.layout.prediction_slice(slot)].argmax(-1)
            target = tokens[:, self.layout.code_slice(slot)] - self.layout.image_offset
            accuracy = (predicted == target).float().mean().item()
        return StepOutput(loss=loss, metrics={"loss": loss.item(), "accuracy": accuracy})


def architecture(model: dict[str, Any]) -> dict[str, Any]:
    """The fields of a model config that shape its weights (dropout and checkpointing only change training)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model.items()
            if k not in ("dropout", "activation_checkpointing")}


class GeneratorTask:
    progress_keys = ("loss", "accuracy")

    def __init__(self, config: RunConfig):
        self.config = config
        self.stage = config.stage
        self.shards = TokenShards(Path(config.data.shards))
        meta = self.shards.meta
        self.text = TextTokenizer.load(Path(config.data.shards) / TEXT_COPY)
        self.shards.require_tokenizers(meta["frame_tokenizer"]["weights_sha256"], self.text.spec["model_sha256"])
        tokenizer_config = meta["frame_tokenizer"]["config"]
        frames = 1 if self.stage == "image" else meta["num_frames"]
        self.layout = SequenceLayout(text_length=meta["text_length"], num_frames=frames, grid=tuple(meta["grid"]),
                                     text_vocab_size=self.text.vocab_size,
                                     codebook_size=tokenizer_config["codebook_size"])
        self.contracts = {"text": self.text.spec, "frame_tokenizer": meta["frame_tokenizer"],
                          "rates": list(self.text.rates)}
        self.steady_margin = float(meta.get("prepare", {}).get("steady_margin", 0.0))  # how the shards were encoded
        self.model = self._build_model()
        self.module = GeneratorObjective(self.model, self.stage, self.layout, config.learn_first_frame)
        self.plan = self.module.plan
        self.indices = self._sample_indices(meta["num_frames"])

    # -- building ---------------------------------------------------------------------------------------------------

    def _build_model(self) -> Generator:
        if self.stage == "image":
            return Generator(self.config.model, self.layout)
        self.image_dir = Path(self.config.image_checkpoint) / "model"
        model, spec = load_image_model(self.image_dir)
        where = f"image checkpoint {self.image_dir}"
        require_same("model config", asdict(self.config.model), {**asdict(model.config), **{}}, where)
        require_same("text model sha256", self.text.spec["model_sha256"], spec["text"]["model_sha256"], where)
        require_same("frame tokenizer weights", self.contracts["frame_tokenizer"]["weights_sha256"],
                     spec["frame_tokenizer"]["weights_sha256"], where)
        if (spec["layout"]["text_length"], tuple(spec["layout"]["grid"])) != (self.layout.text_length, self.layout.grid):
            raise CheckpointMismatch(f"{where}: layout {spec['layout']} does not fit the shards' "
                                     f"text length {self.layout.text_length} and grid {self.layout.grid}")
        model.layout = self.layout
        model.initialise_temporal_from_spatial()
        model.set_spatial_share(self.config.spatial_share_init)
        if self.config.init_from:
            self._warm_start(model, Path(self.config.init_from))
        model.freeze_spatial()
        return model.train()

    def _warm_start(self, model: Generator, directory: Path) -> None:
        """Temporal weights from an earlier export of this stage, trained on the same frozen image weights (or, with
        `init_from_other_image`, on others of the same architecture, text model and frame tokenizer)."""
        spec = read_spec(directory)
        where = f"init_from {directory}"
        require_same("stage", self.stage, spec["stage"], where)
        if self.config.init_from_other_image:
            require_same("architecture", architecture(asdict(self.config.model)), architecture(spec["model"]), where)
            require_same("text model sha256", self.text.spec["model_sha256"], spec["text"]["model_sha256"], where)
            require_same("frame tokenizer weights", self.contracts["frame_tokenizer"]["weights_sha256"],
                         spec["frame_tokenizer"]["weights_sha256"], where)
        else:
            require_image_export(spec, self.image_dir, where)
        require_same("grid", list(self.layout.grid), list(spec["layout"]["grid"]), where)
        model.load_temporal_state_dict(read_weights(directory / TEMPORAL_WEIGHTS))
        logger.info("%s stage: temporal weights start from %s%s", self.stage, directory,
                    " (trained on other image weights)" if self.config.init_from_other_image else "")

    def _sample_indices(self, shard_frames: int) -> list[int]:
        if self.stage == "image":
            return list(range(len(self.shards) * shard_frames))  # (sample, frame) pairs flattened
        rates = self.text.rates if self.stage == "keyframe" else interpolation_rates(self.text.rates)
        indices = self.shards.indices_with_rate(rates)
        logger.info("%s stage: %d of %d shard samples have a usable rate %s", self.stage, len(indices),
                    len(self.shards), rates)
        return indices

    # -- Task interface ---------------------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def num_samples(self) -> int:
        return len(self.indices)

    def batch(self, items: list[tuple[int, int]], step: int, device: torch.device) -> dict[str, Any]:
        texts, fps_ids, codes = [], [], []
        frames_per_sample = self.shards.meta["num_frames"]
        for epoch, index in items:
            if self.stage == "image":
                sample, frame = divmod(self.indices[index], frames_per_sample)
                item = self.shards[sample]
                clip = item["codes"][frame:frame + 1]  # (1, h, w)
            else:
                item = self.shards[self.indices[index]]
                clip = item["codes"][list(self.plan.frame_positions)]  # (T, h, w) in slot order
            text = item["text"]
            if self._drop_caption(epoch, index):
                text = torch.full_like(text, self.text.pad_id)
            texts.append(text)
            fps_ids.append(self.text.fps_id(item["fps"]))
            codes.append(clip)
        text_ids = torch.stack(texts)  # (B, L)
        tokens = self.layout.assemble(text_ids, torch.tensor(fps_ids), torch.stack(codes), self.text.boi_id)
        return {"tokens": tokens.to(device), "text_pad": (text_ids == self.text.pad_id).to(device)}

    def _drop_caption(self, epoch: int, index: int) -> bool:
        rate = self.config.data.caption_dropout
        if rate == 0:
            return False
        draw = np.random.default_rng([self.config.train.seed, epoch, index, CAPTION_DROPOUT_STREAM]).random()
        return bool(draw < rate)

    def export(self, directory: Path) -> None:
        save_stage(self.model, directory, self.stage, self.contracts,
                   image_dir=None if self.stage == "image" else self.image_dir,
                   learns_first_frame=self.config.learn_first_frame, steady_margin=self.steady_margin)

    def evaluate(self, device: torch.device) -> dict[str, float]:
        return {}

    def inputs(self) -> dict[str, str]:
        """What this run reads besides its config, by checksum: a resume must find the same (the video stages keep
        the frozen image weights of their checkpoint, and their export names the image export's)."""
        found = {"text model sha256": self.text.spec["model_sha256"],
                 "frame tokenizer weights sha256": self.contracts["frame_tokenizer"]["weights_sha256"]}
        if self.stage != "image":
            found["image export weights sha256"] = sha256_file(self.image_dir / FULL_WEIGHTS)
        return found
