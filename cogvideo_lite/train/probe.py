"""What a generator run measures while it trains (at `train.eval_every` and at the end), beside its training loss.

- held-out loss: the stage's loss on `eval.shards`, token shards of clips the run never trains on (`prepare` with the
  same tokenizers). A stage far better on its training clips than on these has memorised them: a frozen image stage
  that memorised its clips is "strong" only on them, and the video stages built on it lean on that memory.
- image stage: frame 0 drawn from the captions of the probed clips.
- keyframe stage: the key frames drawn from those captions at the lowest rate, as sampling draws them (frame 0 from
  the stage itself with `learn_first_frame`, else from its frozen image weights); and the share of codes that change
  from one key frame to the next, beside the same share in the true clips: a stage that learns to copy frames draws
  far fewer changes than the data has.
- interpolate stage: frames 1 and 3 drawn between the true frames 0, 2 and 4 of the probed clips.
- video stages, per layer: the spatial share of the mix, mean sigma(a), and the share of temporal attention that the
  codes of a frame put on the same position of the frame before (teacher-forced on the probed clips).
With a frame tokenizer (`eval.tokenizer`) and captions of the built-in shapes grammar, the drawn frames are decoded
and read by the analytic checker (`checker.py`, `evaluate.py`): colour and shape, and for the video stages direction,
speed error against the caption, still share, colour and shape consistency, interpolation error.

Knows the model, the shards and the checker; does not know DeepSpeed or the training loop (train.py calls the task's
`evaluate` on the main rank; the model is in eval mode and draws from its own random generator: training is not
disturbed).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from cogvideo_lite.data.shapes import parse_caption
from cogvideo_lite.evaluate.checker import check_video
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.masks import stage_masks, with_text_padding
from cogvideo_lite.model.stages import KEYFRAME, Stage, StagePlan
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.prepare.shards import TokenShards
from cogvideo_lite.provenance import sha256_file
from cogvideo_lite.sample.generate import Condition, Sampler, generate_image, generate_keyframes, interpolate
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.train.config import EvalConfig
from cogvideo_lite.train.examples import StageExamples

logger = logging.getLogger(__name__)

PROBE_SAMPLER = Sampler(SamplingKnobs(temperature=1.0, top_k=20), seed=0)  # the shipped bundle's key-frame knobs
ATTENTION_BATCH = 8  # clips per forward pass of the attention measure (it holds (B, heads, n, S) weights per layer)


def gate_shares(model: Generator) -> list[float]:
    """Per layer, the mean spatial share sigma(a) of the mix (0.5 at the start of a fresh video stage)."""
    return [torch.sigmoid(block.attention.mixing.float()).mean().item() for block in model.blocks]


@torch.no_grad()
def previous_frame_attention(model: Generator, tokens: torch.Tensor, text_pad: torch.Tensor, stage: Stage,
                             pairs: list[tuple[int, int]]) -> list[float]:
    """Per layer, the mean temporal-attention probability that a code of a frame puts on the code at the same grid
    position in the frame before it. tokens (B, S); pairs: (slot of a drawn frame, slot of the frame before it)."""
    layout = model.layout.with_frames(model.layout.frames_for_length(tokens.shape[1]))
    inputs: dict[int, tuple] = {}
    hooks = [block.attention.register_forward_hook(lambda module, args, out, layer=layer: inputs.__setitem__(layer, args))
             for layer, block in enumerate(model.blocks)]
    try:
        model(tokens, text_pad, stage)
    finally:
        for hook in hooks:
            hook.remove()
    same = torch.arange(layout.tokens_per_frame)
    temporal_mask = with_text_padding(stage_masks(layout, stage, model.config.temporal_window).temporal.to(
        tokens.device), text_pad)  # (B, 1, S, S)
    shares = []
    for layer, block in enumerate(model.blocks):
        x = inputs[layer][0]  # (B, S, D) normalised
        batch, length, dim = x.shape
        heads = block.attention.heads
        query, key, _ = block.attention.temporal_qkv(x).view(batch, length, 3, heads, dim // heads).unbind(2)
        on_previous = []
        for now, before in pairs:
            rows = layout.code_slice(now)
            scores = torch.einsum("bqhd,bkhd->bhqk", query[:, rows].float(), key.float()) / math.sqrt(dim // heads)
            weights = scores.masked_fill(~temporal_mask[:, :, rows], float("-inf")).softmax(-1)  # (B, heads, n, S)
            on_previous.append(weights[:, :, same, layout.code_slice(before).start + same])  # (B, heads, n)
        shares.append(torch.cat(on_previous, dim=-1).mean().item())
    return shares


def change_share(codes: torch.Tensor) -> float:
    """Share of codes that differ from the code at the same position one frame earlier; codes (B, T, h, w)."""
    return (codes[:, 1:] != codes[:, :-1]).float().mean().item()


class StageProbe:
    """The eval-time measures of one generator run (module docstring)."""

    def __init__(self, stage: Stage, plan: StagePlan, layout: SequenceLayout, text, shards: TokenShards,
                 heldout: StageExamples | None, key_rate: int, config: EvalConfig):
        """shards: where the probed clips come from; heldout: the examples of the held-out loss (None: no held-out
        shards); key_rate: the rate of the probed clips (the lowest the stage trains at); config: the `eval` section."""
        self.stage, self.plan, self.layout, self.text = stage, plan, layout, text
        self.shards, self.heldout, self.key_rate = shards, heldout, key_rate
        indices = shards.indices_with_rate([key_rate])[:config.clips]
        items = [shards[index] for index in indices]
        self.codes = torch.stack([item["codes"] for item in items])  # (N, T, h, w) in time order
        self.text_ids = torch.stack([item["text"] for item in items])  # (N, L)
        self.captions = [shards.source(index)["caption"] for index in indices]
        self.tokenizer = self._load_tokenizer(config.tokenizer) if config.tokenizer else None

    def _load_tokenizer(self, directory: str):
        from tokenizer.io import WEIGHTS_FILE, load_tokenizer

        wanted = self.shards.meta["frame_tokenizer"]["weights_sha256"]
        found = sha256_file(Path(directory) / WEIGHTS_FILE)
        if found != wanted:
            raise ValueError(f"eval.tokenizer {directory}: weights sha256 {found}, but the shards were encoded by "
                             f"{wanted}; give the frame tokenizer the shards were made with")
        return load_tokenizer(Path(directory))

    # ---------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, model: Generator) -> dict[str, float]:
        """All measures of this stage, of `model` in eval mode."""
        device = next(model.parameters()).device
        results: dict[str, float] = {}
        if self.heldout is not None:
            results["heldout_loss"] = self.heldout.mean_loss(model)
        text_ids, text_pad = self.text_ids.to(device), (self.text_ids == self.text.pad_id).to(device)
        codes = self.codes.to(device)
        fps_ids = torch.full((len(codes),), self.text.fps_id(self.key_rate), device=device)
        condition = Condition(text_ids, text_pad, fps_ids, self.text.boi_id)
        if not self.stage.is_video:
            results.update(self._checked(generate_image(model, condition, PROBE_SAMPLER), None))
            return results
        for layer, share in enumerate(gate_shares(model)):
            results[f"spatial_share_{layer}"] = share
        frames = list(self.plan.frame_positions)  # true frame per slot
        pairs = [(slot, frames.index(frames[slot] - 1)) for slot in self.plan.loss_slots if frames[slot] > 0]
        tokens = self.layout.assemble(text_ids, fps_ids, codes[:, frames], self.text.boi_id)  # slot order
        shares = [previous_frame_attention(model, tokens[start:start + ATTENTION_BATCH],
                                           text_pad[start:start + ATTENTION_BATCH], self.stage, pairs)
                  for start in range(0, len(tokens), ATTENTION_BATCH)]
        for layer, share in enumerate(np.mean(shares, axis=0)):
            results[f"previous_frame_attention_{layer}"] = float(share)
        if self.stage is KEYFRAME:
            given = codes[:, :0] if 0 in self.plan.loss_slots else generate_image(model, condition, PROBE_SAMPLER)
            drawn = generate_keyframes(model, condition, given, PROBE_SAMPLER)  # (N, T, h, w)
            results["code_change"], results["code_change_data"] = change_share(drawn), change_share(codes)
            results.update(self._checked(drawn, list(range(codes.shape[1]))))
        else:
            drawn = interpolate(model, condition, codes[:, ::2], PROBE_SAMPLER)  # (N, T, h, w): 0, 2, 4 given
            results.update(self._checked(drawn, list(range(0, codes.shape[1], 2))))
        return results

    def _checked(self, drawn: torch.Tensor, key_indices: list[int] | None) -> dict[str, float]:
        """The checker's figures of drawn codes (N, T, h, w), when there is a tokenizer and the captions fit the
        grammar. key_indices None: single images (colour and shape only)."""
        from cogvideo_lite.evaluate.shapes import evaluate_checks  # it imports the sampling pipeline: only when used

        if self.tokenizer is None:
            return {}
        try:
            for caption in self.captions:
                parse_caption(caption)
        except ValueError:
            return {}  # not the shapes grammar: nothing to check against
        self.tokenizer.to(drawn.device)
        from tokenizer.frames import to_uint8

        frames = to_uint8(self.tokenizer.decode(drawn))  # (N, T, H, W, 3)
        if key_indices is None:
            checks = [check_video(video) for video in frames]
            results = evaluate_checks(checks, self.captions)
            return {"colour_accuracy": results["colour_accuracy"], "shape_accuracy": results["shape_accuracy"]}
        checks = [check_video(video, key_indices) for video in frames]
        rate = self.key_rate if self.stage is KEYFRAME else self.key_rate // 2
        results = evaluate_checks(checks, self.captions, key_rate=rate)
        if self.stage is not KEYFRAME:  # the key frames are given: only the in-betweens tell
            keys = ["interpolation_error", "colour_consistency", "shape_consistency"]
        else:
            keys = ["direction_accuracy", "speed_error", "colour_consistency", "shape_consistency"]
        figures = {key: results[key] for key in keys if results[key] is not None}
        if self.stage is KEYFRAME:
            figures["still_share"] = float(np.mean([check.direction == "still" for check in checks]))
        return figures
