"""Configuration of the dual-channel generator transformer and its registered sizes.

Knows the network's width, depth and options; does not know the sequence geometry (that is
`cogvideo_lite.model.layout.SequenceLayout`) nor how configs are read from YAML (`cogvideo_lite.train.config`).
Sizes: `tiny` for CPU tests and the demo, `small` for one GPU, `base` for several.
"""

from __future__ import annotations

from dataclasses import dataclass

from cogvideo_lite.model.layout import count_problems, is_integer


@dataclass(frozen=True)
class GeneratorConfig:
    """dim: model width D; depth: layers; heads: attention heads (dim % heads == 0);
    mlp_ratio: hidden width of the feed-forward block over D; dropout: attention and residual dropout;
    temporal_window: None, or (frames, rows, cols) radii restricting the temporal channel's view of other
    slots to a local 3-D window (CogVideo uses 10x10 spatially x all frames);
    activation_checkpointing: recompute each block in the backward pass (torch.utils.checkpoint);
    max_frames: rows of the frame-index embedding, the largest true frame index + 1 a stage may use.
    """

    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    temporal_window: tuple[int, int, int] | None = None
    activation_checkpointing: bool = False
    max_frames: int = 33  # CogVideo's longest hierarchy: 5 key frames -> 9 -> 17 -> 33

    def __post_init__(self) -> None:
        problems = count_problems(self, ("dim", "depth", "heads", "max_frames"))
        if not problems and self.dim % self.heads:
            problems.append(f"dim={self.dim} is not divisible by heads={self.heads}")
        if not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            problems.append(f"mlp_ratio={self.mlp_ratio!r}: expected a number > 0")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            problems.append(f"dropout={self.dropout!r}: expected a number in [0, 1)")
        if not isinstance(self.activation_checkpointing, bool):
            problems.append(f"activation_checkpointing={self.activation_checkpointing!r}: expected true or false")
        window = self.temporal_window
        if window is not None:
            if (not isinstance(window, (list, tuple)) or len(window) != 3
                    or not all(is_integer(side) and side >= 0 for side in window)):
                problems.append(f"temporal_window={window!r}: expected null or three integers "
                                "(frames, rows, cols) >= 0")
            else:
                object.__setattr__(self, "temporal_window", tuple(window))  # a YAML list becomes a tuple
        if problems:
            raise ValueError("invalid GeneratorConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


# Fields that change what a model computes but not the weights it stores: a video stage may set them apart from the
# image export it extends (the window restricts only the temporal channel, which the image stage does not use).
NOT_IN_WEIGHTS = ("dropout", "activation_checkpointing", "temporal_window")


def weight_fields(config: dict) -> dict:
    """The fields of a (JSON) model config that shape its weights: configs equal here load each other's weights."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k not in NOT_IN_WEIGHTS}


GENERATOR_SIZES: dict[str, GeneratorConfig] = {
    "tiny": GeneratorConfig(dim=256, depth=4, heads=4),
    "small": GeneratorConfig(dim=512, depth=12, heads=8),
    "base": GeneratorConfig(dim=1024, depth=24, heads=16, activation_checkpointing=True),
}
