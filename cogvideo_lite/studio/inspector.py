"""The attention inspector: where each channel of the stage that made a frame looked while it drew one code.

For a frame of a generated video and a code position (row, col), `frame_origin` finds the stage that made the frame
and the sequence that stage saw, as `sample/pipeline.generate_videos` and `sample/generate.interpolate` lay it out:

    frame 0          the image model (spatial channel only), fps token of the key rate; or, in a bundle whose
                     key-frame model learnt frame 0 (`pipeline.keyframe_makes_first_frame`), that model
    other key frame  the key-frame model over all key frames, fps token of the key rate
    in-between       the interpolation model over its group of the round that made it, in the slot order it was
                     generated in (given frames first, then the new ones: true frames [0, 2, 4, 1, 3] of the group),
                     fps token of that round's output rate

`inspect_attention` runs that stage's forward once over the finished codes, uncached, with a `QueryRecorder` on every
layer (the hook of `model/attention.py`), for the position that predicted the code: the slot's BOI for its first
code, else the code before it. Every key that position may see was final when the code was drawn (the masks are causal
within a generated slot, and the slots it sees were complete), and the cached and uncached forwards are the same math
(tests/test_generate.py), so these are the weights of the real generation step. With guidance they are the weights of
the conditional pass. The image expert, which joins the sampling distribution, has attention of its own that is not
shown here.

Knows the hierarchy's order and the layout; does not know HTTP or the page.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, Stage
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.sample.pipeline import Pipeline, Video


@dataclass(frozen=True)
class FrameOrigin:
    stage: Stage                   # IMAGE, KEYFRAME or INTERPOLATE
    round: int                     # the interpolation round that made the frame; 0 for key frames
    rate: int                      # the frame rate of the fps token the stage saw
    slot_frames: tuple[int, ...]   # the video frame each slot of the stage's sequence held, in slot order
    slot: int                      # the slot of the frame asked about
    given_slots: tuple[int, ...] = ()  # the slots the stage was given as context (its plan's given_slots)

    def role(self, slot: int) -> str:
        """How slot `slot` stood to the inspected frame's slot when that frame was drawn."""
        if slot == self.slot:
            return "this frame"
        if slot in self.given_slots:
            return "given"
        return "made before" if slot < self.slot else "made after"


def rounds_of(video: Video) -> int:
    """The interpolation rounds that made `video`: fps = key_rate * 2**rounds."""
    return (video.fps // video.key_rate).bit_length() - 1


def frame_origin(pipeline: Pipeline, video: Video, frame: int) -> FrameOrigin:
    """Which stage made frame `frame` of `video`, and the slots of the sequence it saw."""
    rounds = rounds_of(video)
    stride = 2 ** rounds  # frames between key frames
    if frame % stride == 0:
        if frame == 0 and not pipeline.keyframe_makes_first_frame:
            return FrameOrigin(IMAGE, 0, video.key_rate, (0,), 0)
        return FrameOrigin(KEYFRAME, 0, video.key_rate, tuple(range(0, len(video.codes), stride)), frame // stride)
    spacing = frame & -frame  # the largest power of two dividing `frame`: the spacing of the round that made it
    made_in = rounds - (spacing.bit_length() - 1)
    layout = pipeline.interpolate.layout  # W slots; a group spans W frames of the round's output
    window = layout.num_frames
    index = frame // spacing  # odd: the frame's index in that round's output
    first = index // (window - 1) * (window - 1)  # the group's first frame, in that round's output
    plan = INTERPOLATE.plan(layout)  # true frame per slot: (0, 2, 4, 1, 3) for W = 5, the first three given
    return FrameOrigin(INTERPOLATE, made_in, video.key_rate * 2 ** made_in,
                       tuple(spacing * (first + position) for position in plan.frame_positions),
                       plan.frame_positions.index(index - first), plan.given_slots)


# ----------------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------------

class QueryRecorder:
    """An `AttentionRecorder` for one query position of an uncached forward of one sequence: per (layer, channel),
    the weights softmax(q k^T / sqrt(head_dim)) over the keys the mask allows (heads, K), and that mask row (K,)."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.weights: dict[tuple[int, str], torch.Tensor] = {}
        self.allowed: dict[tuple[int, str], torch.Tensor] = {}

    def __call__(self, layer: int, channel: str, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor,
                 first_row: int) -> None:
        if query.shape[0] != 1 or first_row + query.shape[2] != key.shape[2]:
            raise ValueError("QueryRecorder reads an uncached forward of one sequence")
        row = query[0, :, self.position - first_row]  # (heads, head_dim)
        scores = torch.einsum("hd,hkd->hk", row, key[0]) / math.sqrt(row.shape[-1])  # (heads, K)
        allowed = mask[0, 0, self.position - first_row]  # (K,) bool
        self.weights[(layer, channel)] = scores.masked_fill(~allowed, float("-inf")).softmax(-1).float().cpu()
        self.allowed[(layer, channel)] = allowed.cpu()


@contextmanager
def recording(model: Generator, recorder: QueryRecorder) -> Iterator[None]:
    """Set `recorder` on every layer of `model` for the duration of the block, which runs the dense attention path
    (the one whose masks the recorder reads)."""
    layers = [block.attention for block in model.blocks]
    backend, model.attention = model.attention, "dense"
    for attention in layers:
        attention.recorder = recorder
    try:
        yield
    finally:
        model.attention = backend
        for attention in layers:
            attention.recorder = None


# ----------------------------------------------------------------------------------------------------------------
# Inspection
# ----------------------------------------------------------------------------------------------------------------

def stage_model(pipeline: Pipeline, stage: Stage) -> Generator:
    """The pipeline's model of a generator stage."""
    return {IMAGE: pipeline.image, KEYFRAME: pipeline.keyframe, INTERPOLATE: pipeline.interpolate}[stage]


def stage_sequence(pipeline: Pipeline, video: Video, origin: FrameOrigin) -> tuple[Generator, torch.Tensor,
                                                                                   torch.Tensor]:
    """(the stage's model, tokens (1, S), text_pad (1, L)): the sequence the stage saw, with the finished codes."""
    model = stage_model(pipeline, origin.stage)
    layout = model.layout.with_frames(len(origin.slot_frames))
    condition = pipeline.condition([video.prompt], origin.rate)  # (1, L) text ids and the fps token
    codes = video.codes[list(origin.slot_frames)][None].to(pipeline.device)  # (1, W, h, w) in slot order
    tokens = layout.assemble(condition.text_ids, condition.fps_ids, codes, condition.boi_id)
    return model, tokens, condition.text_pad


@torch.no_grad()
def inspect_attention(pipeline: Pipeline, video: Video, frame: int, row: int, col: int) -> dict:
    """The maps of both channels, per layer and head, for the step that drew code (row, col) of frame `frame`; plus
    each layer's gate sigma(mixing), the spatial channel's share per hidden dimension. JSON-ready."""
    origin = frame_origin(pipeline, video, frame)
    model, tokens, text_pad = stage_sequence(pipeline, video, origin)
    layout = model.layout.with_frames(len(origin.slot_frames))
    position = layout.slot_start(origin.slot) + row * layout.grid[1] + col  # predicts code (row, col)
    recorder = QueryRecorder(position)
    with recording(model, recorder):
        model(tokens, text_pad, origin.stage)
    text_positions = [index for index in range(layout.text_length) if not text_pad[0, index]]
    has_temporal = "temporal" in origin.stage.channels  # the image model has the spatial channel only
    return {
        "frame": frame, "row": row, "col": col, "stage": origin.stage.name, "round": origin.round, "rate": origin.rate,
        "query_position": position, "tokens": tokens[0].tolist(),
        "layers": model.config.depth, "heads": model.config.heads, "grid": list(layout.grid),
        "text": [pipeline.text.decode([int(tokens[0, index])]) for index in text_positions],
        "slots": [{"slot": slot, "frame": video_frame, "role": origin.role(slot)}
                  for slot, video_frame in enumerate(origin.slot_frames)],
        "spatial": _channel_maps(recorder, "spatial", model.config.depth, layout, text_positions, origin),
        "temporal": _channel_maps(recorder, "temporal", model.config.depth, layout, text_positions, origin)
        if has_temporal else None,
        "gate": [torch.sigmoid(block.attention.mixing).float().cpu().tolist() for block in model.blocks]
        if has_temporal else None,
    }


def _channel_maps(recorder: QueryRecorder, channel: str, depth: int, layout: SequenceLayout,
                  text_positions: list[int], origin: FrameOrigin) -> dict:
    """One channel's weights (layers, heads, K) cut along the sequence: text (the non-pad tokens), the fps token, and
    per slot it may see, its BOI and its codes (h*w, raster order) with which of them it may see."""
    weights = torch.stack([recorder.weights[(layer, channel)] for layer in range(depth)])  # (layers, heads, K)
    allowed = recorder.allowed[(0, channel)]  # (K,): every layer uses the same mask
    frames = []
    for slot, video_frame in enumerate(origin.slot_frames):
        codes = layout.code_slice(slot)
        if not allowed[layout.slot_slice(slot)].any():
            continue
        frames.append({"slot": slot, "frame": video_frame, "role": origin.role(slot),
                       "boi": weights[:, :, layout.slot_start(slot)].tolist(),
                       "codes": weights[:, :, codes].tolist(), "visible": allowed[codes].tolist()})
    return {"text": weights[:, :, text_positions].tolist(), "fps": weights[:, :, layout.fps_position].tolist(),
            "frames": frames}
