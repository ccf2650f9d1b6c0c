"""A generator stage's examples from token shards: which shard samples the stage reads and the token batches they make.

The training task reads its shards through one, its eval probe the held-out shards, and `python -m
cogvideo_lite.evaluate losses` the shards an export is measured on: one home for how a shard sample becomes a stage's
sequence. Image stage: every frame of every sample is an example, positions (sample, frame) flattened; video stages:
the samples at the given clip rates, frames in the stage's slot order.

Knows the shards, the layout and the stage plan; does not know training, DeepSpeed or the model's weights.
"""

from __future__ import annotations

from typing import Any

import torch

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import Stage, StagePlan
from cogvideo_lite.model.transformer import Generator, stage_loss
from cogvideo_lite.prepare.shards import TokenShards

LOSS_SAMPLES = 256  # examples of a mean loss (evenly spaced over the shards)
LOSS_BATCH = 32  # examples per forward pass of a mean loss


class StageExamples:
    def __init__(self, shards: TokenShards, stage: Stage, plan: StagePlan, layout: SequenceLayout, text,
                 rates: tuple[int, ...]):
        """rates: the clip rates a video stage reads (ignored by the image stage); text: the shards' text model."""
        self.shards, self.stage, self.plan, self.layout, self.text = shards, stage, plan, layout, text
        frames = shards.meta["num_frames"]
        self.positions = shards.indices_with_rate(rates) if stage.is_video else list(range(len(shards) * frames))

    def batch(self, positions: list[int], dropped: list[bool], device: torch.device) -> dict[str, Any]:
        """The batch of the examples at `positions` (entries of `self.positions`), captions dropped (all pads) where
        `dropped` says: tokens (B, S) and text_pad (B, L)."""
        texts, fps_ids, codes = [], [], []
        frames_per_sample = self.shards.meta["num_frames"]
        for position, drop in zip(positions, dropped):
            if self.stage.is_video:
                item = self.shards[position]
                clip = item["codes"][list(self.plan.frame_positions)]  # (T, h, w) in slot order
            else:
                sample, frame = divmod(position, frames_per_sample)
                item = self.shards[sample]
                clip = item["codes"][frame:frame + 1]  # (1, h, w)
            texts.append(torch.full_like(item["text"], self.text.pad_id) if drop else item["text"])
            fps_ids.append(self.text.fps_id(item["fps"]))
            codes.append(clip)
        text_ids = torch.stack(texts)  # (B, L)
        tokens = self.layout.assemble(text_ids, torch.tensor(fps_ids), torch.stack(codes), self.text.boi_id)
        return {"tokens": tokens.to(device), "text_pad": (text_ids == self.text.pad_id).to(device)}

    @torch.no_grad()
    def mean_loss(self, model: Generator, samples: int = LOSS_SAMPLES) -> float:
        """The stage's loss of `model` (in eval mode) over `samples` evenly spaced examples, captions kept."""
        positions = self.positions[::max(1, len(self.positions) // samples)][:samples]
        device = next(model.parameters()).device
        rows = self.layout.prediction_rows(self.plan.loss_slots, device)
        total = 0.0
        for start in range(0, len(positions), LOSS_BATCH):
            chunk = positions[start:start + LOSS_BATCH]
            batch = self.batch(chunk, [False] * len(chunk), device)
            logits = model(batch["tokens"], batch["text_pad"], self.stage, rows)
            total += stage_loss(logits.float(), batch["tokens"], self.layout, self.plan.loss_slots).item() * len(chunk)
        return total / len(positions)
