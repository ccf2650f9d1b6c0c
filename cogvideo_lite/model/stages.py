"""The stage registry: one `Stage` per thing `train.py` can train, and everything that differs between them.

    tokenizer    the per-frame VQVAE (tokenizer/); sized by the `tokenizer:` section, reads frames from data.sources
    image        text-to-image on single frames: every generator weight trains (the spatial channel, then frozen)
    keyframe     5 key frames, causal over frames: the temporal group trains on the frozen image weights
    interpolate  slots hold true frames [0, 2, 4, 1, 3]; 0, 2, 4 are given, 1 and 3 are learnt

A stage knows the parameter group it trains (and so the attention channels it runs), its frame plan (which true frame
each slot holds, which slots are given, which the loss covers), its export's weights file and the config section
that sizes its network. Every other module asks a `Stage` instead of comparing stage names.

Knows sequence layouts (for the frame plans); does not know networks, files or configs beyond these names.
The plans are CogVideo's (Hong et al. 2023, section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from cogvideo_lite.model.layout import SequenceLayout


@dataclass(frozen=True)
class StagePlan:
    """What a stage does with the slots of a layout.

    frame_positions: true frame index held by each slot (indexes the frame-index embedding).
    given_slots: slots given as bidirectional context (interpolation); all other slots are causal.
    loss_slots: slots whose codes the stage learns to generate.
    """

    frame_positions: tuple[int, ...]
    given_slots: tuple[int, ...]
    loss_slots: tuple[int, ...]


@dataclass(frozen=True)
class Stage:
    """name: the config's `stage:` value and the bundle part's name.
    section: the RunConfig section that sizes its network (`tokenizer` or `model`).
    trains: the parameter group it trains: `vqvae`, `all` (every generator weight) or `temporal` (see `is_video`).
    weights_file: the weights file of its export (beside config.json or generator.json).
    planner: num_frames -> StagePlan (generator stages).
    clip_rates: the frame rates of the shard clips it trains on, from the rate set (the fps token of a clip).
    can_learn_first_frame: the loss may cover frame 0 too (`learn_first_frame`), so that sampling draws it here."""

    name: str
    section: str
    trains: str
    weights_file: str
    planner: Callable[[int], StagePlan] | None = None
    clip_rates: Callable[[tuple[int, ...]], tuple[int, ...]] = tuple
    can_learn_first_frame: bool = False

    @property
    def is_video(self) -> bool:
        """A video stage: it extends an image export, whose weights stay frozen, with the temporal group (the temporal
        attention channel, the mixing vectors and the frame-index embedding), trains that group alone and exports it
        alone."""
        return self.trains == "temporal"

    @property
    def is_generator(self) -> bool:
        return self.planner is not None

    @property
    def channels(self) -> tuple[str, ...]:
        """The attention channels it runs: the spatial one, and the temporal one in a video stage."""
        return ("spatial", "temporal") if self.is_video else ("spatial",)

    def plan(self, layout: SequenceLayout, learn_first_frame: bool = False) -> StagePlan:
        """The stage's plan for the slots of `layout`; ValueError for a frame count the stage cannot use.
        learn_first_frame: the loss covers slot 0 too; the masks are the same either way."""
        if learn_first_frame and not self.can_learn_first_frame:
            raise ValueError(f"learn_first_frame applies to the keyframe stage, not the {self.name} stage")
        plan = self.planner(layout.num_frames)
        return replace(plan, loss_slots=tuple(range(layout.num_frames))) if learn_first_frame else plan

    def __repr__(self) -> str:
        return f"Stage({self.name!r})"


def stage_named(name: str) -> Stage:
    """The registered stage called `name`; ValueError listing the names otherwise."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)}")
    return STAGES[name]


def interpolation_positions(num_frames: int) -> tuple[int, ...]:
    """True frames per slot of the interpolation stage: even (given) frames, then odd (generated) ones."""
    return tuple(range(0, num_frames, 2)) + tuple(range(1, num_frames, 2))


def _image_plan(frames: int) -> StagePlan:
    if frames != 1:
        raise ValueError(f"the image stage uses a layout of 1 frame slot, got {frames}")
    return StagePlan((0,), (), (0,))


def _keyframe_plan(frames: int) -> StagePlan:
    """Causal over slots; frame 0 is given (drawn by the image model) unless the stage learns it."""
    if frames < 2:
        raise ValueError(f"the keyframe stage needs at least 2 frame slots, got {frames}")
    return StagePlan(tuple(range(frames)), (), tuple(range(1, frames)))


def _interpolate_plan(frames: int) -> StagePlan:
    if frames < 3 or frames % 2 == 0:
        raise ValueError(f"the interpolate stage needs an odd number >= 3 of frame slots, got {frames}")
    given = (frames + 1) // 2
    return StagePlan(interpolation_positions(frames), tuple(range(given)), tuple(range(given, frames)))


def interpolation_rates(rates: tuple[int, ...]) -> tuple[int, ...]:
    """Rates an interpolation round can produce: those whose half is also in the set (1 -> 2 -> 4 -> 8)."""
    return tuple(rate for rate in rates if rate % 2 == 0 and rate // 2 in rates)


FULL_WEIGHTS = "model.safetensors"  # the tokenizer's and the image stage's exports: every weight
TEMPORAL_WEIGHTS = "temporal.safetensors"  # a video stage's export: the temporal group alone

TOKENIZER = Stage("tokenizer", "tokenizer", "vqvae", FULL_WEIGHTS)
IMAGE = Stage("image", "model", "all", FULL_WEIGHTS, _image_plan)
KEYFRAME = Stage("keyframe", "model", "temporal", TEMPORAL_WEIGHTS, _keyframe_plan, can_learn_first_frame=True)
INTERPOLATE = Stage("interpolate", "model", "temporal", TEMPORAL_WEIGHTS, _interpolate_plan, interpolation_rates)

STAGES = {stage.name: stage for stage in (TOKENIZER, IMAGE, KEYFRAME, INTERPOLATE)}
GENERATOR_STAGES = (IMAGE, KEYFRAME, INTERPOLATE)
VIDEO_STAGES = (KEYFRAME, INTERPOLATE)
