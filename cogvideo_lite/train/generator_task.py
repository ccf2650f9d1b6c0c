"""The generator stages: image (text-to-image), keyframe and interpolate, all reading pre-tokenized shards.

- image: every frame of every shard sample is a training image; the whole model trains (spatial channel,
  embeddings, feed-forward blocks).
- keyframe: clips at every configured rate; the image export is loaded and frozen, the temporal channel
  (initialised as a copy of the spatial one), the mixing vectors and the frame-index embedding train. With
  `learn_first_frame` the loss covers frame 0 too: the key-frame model then samples the whole key-frame
  sequence, with a first frame drawn from where clips of that caption and rate start (the image stage sees
  every frame of a clip, so its frame 0 can sit where the captioned motion has no room to happen).
- interpolate: clips at the rates that are twice another rate of the set (the output rate of one interpolation
  round); slots hold true frames [0, 2, 4, 1, 3]; the loss covers frames 1 and 3.
- `init_from` (video stages): fine-tune from an earlier export of the same stage on the same image weights, or,
  with `init_from_other_image`, on other image weights of the same architecture, text model and frame tokenizer.
Caption dropout replaces a share of the captions by an empty one, for classifier-free guidance at sampling time.
What differs between the stages is asked of the stage registry (`model/stages.py`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cogvideo_lite.bundle.exports import FULL_WEIGHTS, SPEC_FILE, load_image_model, read_spec, read_weights, save_stage
from cogvideo_lite.model.config import weight_fields
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import STAGES, Stage
from cogvideo_lite.model.transformer import Generator, change_weights, stage_loss
from cogvideo_lite.prepare.shards import META_FILE, TEXT_COPY, TokenShards
from cogvideo_lite.provenance import CheckpointMismatch, Provenance, require_same, sha256_file
from cogvideo_lite.text import TextTokenizer
from cogvideo_lite.train.config import RunConfig
from cogvideo_lite.train.examples import StageExamples
from cogvideo_lite.train.probe import StageProbe
from cogvideo_lite.train.tasks import StepOutput

logger = logging.getLogger(__name__)

CAPTION_DROPOUT_STREAM = 7  # salt that separates the caption-dropout draws from other per-sample randomness


class GeneratorObjective(nn.Module):
    """What DeepSpeed wraps: the generator plus its stage, returning the stage's cross-entropy."""

    def __init__(self, model: Generator, stage: Stage, layout: SequenceLayout, learn_first_frame: bool = False,
                 change_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.stage = stage
        self.layout = layout
        self.plan = stage.plan(layout, learn_first_frame)
        self.change_weight = change_weight
        # the positions whose logits the loss reads; not saved, moved with the module
        self.register_buffer("loss_rows", layout.prediction_rows(self.plan.loss_slots), persistent=False)

    def forward(self, batch: dict[str, Any], step: int):
        tokens = batch["tokens"]  # (B, S) joint-vocabulary ids
        logits = self.model(tokens, batch["text_pad"], self.stage, self.loss_rows)  # (B, N, codebook_size)
        weights = None if self.change_weight == 1 else change_weights(tokens, self.layout, self.plan,
                                                                      self.change_weight)
        loss = stage_loss(logits, tokens, self.layout, self.plan.loss_slots, weights)
        with torch.no_grad():
            predicted = logits[:, :self.layout.tokens_per_frame].argmax(-1)  # the first loss slot
            target = tokens[:, self.layout.code_slice(self.plan.loss_slots[0])] - self.layout.image_offset
            accuracy = (predicted == target).float().mean().item()
        return StepOutput(loss=loss, metrics={"loss": loss.item(), "accuracy": accuracy})


class GeneratorTask:
    progress_keys = ("loss", "accuracy")
    eval_progress_keys = {"heldout_loss": "held-out loss", "direction_accuracy": "direction",
                          "still_share": "still", "code_change": "changes", "shape_accuracy": "shape",
                          "interpolation_error": "interp px"}

    def __init__(self, config: RunConfig):
        self.config = config
        self.stage = STAGES[config.stage]
        shards = Path(config.data.shards)
        self.shards = TokenShards(shards)
        meta = self.shards.meta
        self.text = TextTokenizer.load(shards / TEXT_COPY)
        self.provenance = Provenance.of_shards(meta)  # text model, frame tokenizer, steady margin of the codes
        self.provenance.check(Provenance(text_model=self.text.spec["model_sha256"]), str(shards / META_FILE),
                              str(shards / TEXT_COPY))
        self.where = f"the shards {shards}"
        self.layout = SequenceLayout(text_length=meta["text_length"],
                                     num_frames=meta["num_frames"] if self.stage.is_video else 1,
                                     grid=tuple(meta["grid"]), text_vocab_size=self.text.vocab_size,
                                     codebook_size=meta["frame_tokenizer"]["config"]["codebook_size"])
        self.contracts = {"text": self.text.spec, "frame_tokenizer": meta["frame_tokenizer"],
                          "rates": list(self.text.rates)}
        self.image_dir = Path(config.image_checkpoint) / "model" if self.stage.is_video else None
        self.model = self._build_model()
        if config.train.compile:
            self.model.compile_blocks()
        self.module = GeneratorObjective(self.model, self.stage, self.layout, config.learn_first_frame,
                                         config.change_weight)
        self.plan = self.module.plan
        self.examples = self._examples_of(self.shards)
        self.probe = self._build_probe()

    # -- building ---------------------------------------------------------------------------------------------------

    def _build_model(self) -> Generator:
        if not self.stage.is_video:
            return Generator(self.config.model, self.layout)
        image, spec = load_image_model(self.image_dir)
        where = str(self.image_dir / SPEC_FILE)
        require_same("architecture", weight_fields(spec["model"]), weight_fields(asdict(self.config.model)), where,
                     "this run's config")
        Provenance.of_export(spec).check(self.provenance, where, self.where)
        if (spec["layout"]["text_length"], tuple(spec["layout"]["grid"])) != (self.layout.text_length, self.layout.grid):
            raise CheckpointMismatch(f"image checkpoint {self.image_dir}: layout {spec['layout']} does not fit the "
                                     f"shards' text length {self.layout.text_length} and grid {self.layout.grid}")
        model = Generator(self.config.model, self.layout)  # this run's dropout, checkpointing and temporal window
        model.load_state_dict(image.state_dict(), strict=True)
        model.initialise_temporal_from_spatial()
        model.set_spatial_share(self.config.spatial_share_init)
        if self.config.init_from:
            self._warm_start(model, Path(self.config.init_from))
        model.freeze_spatial()
        return model.train()

    def _warm_start(self, model: Generator, directory: Path) -> None:
        """Temporal weights from an earlier export of this stage, trained on the same frozen image weights (or, with
        `init_from_other_image`, on others of the same architecture, text model and frame tokenizer)."""
        spec, where = read_spec(directory, self.stage), str(directory / SPEC_FILE)
        recorded = Provenance.of_export(spec)
        if self.config.init_from_other_image:
            require_same("architecture", weight_fields(spec["model"]), weight_fields(asdict(self.config.model)), where,
                         "this run's config")
            recorded.check(self.provenance, where, self.where)
        else:
            weights = self.image_dir / FULL_WEIGHTS
            recorded.check(Provenance(image_export=sha256_file(weights)), where, str(weights))
        require_same("grid", list(spec["layout"]["grid"]), list(self.layout.grid), where, self.where)
        model.load_temporal_state_dict(read_weights(directory / self.stage.weights_file))
        logger.info("%s stage: temporal weights start from %s%s", self.stage.name, directory,
                    " (trained on other image weights)" if self.config.init_from_other_image else "")

    def _clip_rates(self) -> tuple[int, ...]:
        """The frame rates of the clips this run trains on: `data.rates`, else every rate the stage can use."""
        rates = self.stage.clip_rates(self.text.rates)
        unusable = sorted(set(self.config.data.rates) - set(rates))
        if unusable:
            raise ValueError(f"data.rates: the {self.stage.name} stage trains on clips at {rates} fps, not at {unusable}")
        return tuple(sorted(self.config.data.rates)) or rates

    def _examples_of(self, shards: TokenShards) -> StageExamples:
        examples = StageExamples(shards, self.stage, self.plan, self.layout, self.text, self._clip_rates())
        logger.info("%s stage: %d examples in %s", self.stage.name, len(examples.positions), shards.directory)
        return examples

    def _build_probe(self) -> StageProbe:
        """The eval-time measures (train/probe.py) on `eval.shards` (checked to come from the training shards'
        tokenizers, in their geometry), else on the training shards."""
        heldout = bool(self.config.eval.shards)
        shards = TokenShards(Path(self.config.eval.shards)) if heldout else self.shards
        if heldout:
            where = str(Path(self.config.eval.shards) / META_FILE)
            Provenance.of_shards(shards.meta).check(self.provenance, where, self.where)
            for key in ("num_frames", "grid", "text_length", "rates"):
                require_same(f"shard {key}", shards.meta[key], self.shards.meta[key], where, self.where)
        return StageProbe(self.stage, self.plan, self.layout, self.text, shards, self._examples_of(shards) if heldout
                          else None, self._clip_rates()[0], self.config.eval)

    # -- Task interface ---------------------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def num_samples(self) -> int:
        return len(self.examples.positions)

    def batch(self, items: list[tuple[int, int]], step: int, device: torch.device) -> dict[str, Any]:
        dropped = [self._drop_caption(epoch, index) for epoch, index in items]
        return self.examples.batch([self.examples.positions[index] for _, index in items], dropped, device)

    def _drop_caption(self, epoch: int, index: int) -> bool:
        rate = self.config.data.caption_dropout
        if rate == 0:
            return False
        draw = np.random.default_rng([self.config.train.seed, epoch, index, CAPTION_DROPOUT_STREAM]).random()
        return bool(draw < rate)

    def export(self, directory: Path) -> None:
        save_stage(self.model, directory, self.stage, self.contracts, self.image_dir, self.config.learn_first_frame,
                   self.provenance.steady_margin)

    def evaluate(self, device: torch.device) -> dict[str, float]:
        """The probe's measures (train/probe.py), with the model in eval mode for their length."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.probe.measure(self.model)
        finally:
            self.model.train(was_training)

    def inputs(self) -> Provenance:
        """What this run reads besides its config, by checksum: a resume must find the same (the video stages keep
        the frozen image weights of their checkpoint, and their export names the image export's)."""
        image = sha256_file(self.image_dir / FULL_WEIGHTS) if self.stage.is_video else None
        return Provenance(self.provenance.text_model, self.provenance.frame_tokenizer, image)
