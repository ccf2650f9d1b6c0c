"""The prepare step: encode a dataset once into token shards (frame codes, text ids, frame rates).

    python -m cogvideo_lite.prepare --data DIR --tokenizer DIR --text DIR --out DIR [--num-frames 5]
        [--rates 1,2,4,8] [--clips-per-rate 1] [--batch-size 16] [--text-length 16] [--seed 0] [--part-size 256]
        [--steady-margin 0.05] [--workers N]

What it does: scans the dataset once (bad or too-short videos are skipped with a warning naming file and reason),
then enumerates a fixed plan of clips: for every usable video (in captions-file order), every frame rate of the set
at which `num_frames` frames fit, and `clips_per_rate` clips per rate, with the start time of clip c drawn from
`default_rng([seed, video index, rate, c])`. The planned clips of a video are read together, the video decoded once
(in `workers` processes, in plan order, while the main process encodes), their frames encoded by the frame tokenizer
(batched, no grad, eval mode) and their caption by the text tokenizer; shards.py stores them in parts of `part_size`
samples. The shards do not depend on the number of workers.

Resumable: every sample records its position in the plan, so a re-run with the same arguments and tokenizers
continues after the last complete part. Parts are multiples of the batch size, so every batch of a resumed run
holds the same clips as in an uninterrupted run and the shards come out identical. A run over a directory made
with other arguments, tokenizers or captions is refused by ShardWriter naming what differs; a run whose plan no
longer starts with the clips already written (a video removed, added, repaired or broken since) is refused naming
the first clip that differs, since continuing would lose or repeat clips. The directory's copy of the text model
(`text/`) is replaced while no part exists yet, and a copy that differs from `--text` once parts exist is refused.

What it does not know: how videos are decoded or probed (data/video.py, data/datasets.py), how the VQVAE works,
how training reads the shards. Where the idea comes from: LlamaGen's code-extraction step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cogvideo_lite.data.captions import Problem, find_captions_file
from cogvideo_lite.data.datasets import ClipDataset, ClipSample
from cogvideo_lite.data.video import BadVideo, choose_start
from cogvideo_lite.prepare.shards import (
    CODES_DTYPE,
    META_FILE,
    TEXT_COPY,
    ShardError,
    ShardWriter,
    complete_part_directories,
    read_sources,
)
from cogvideo_lite import cli
from cogvideo_lite.provenance import replacing, sha256_file
from cogvideo_lite.text import DEFAULT_RATES, TEXT_SPEC_FILE, TextTokenizer, check_rates
from tokenizer.io import WEIGHTS_FILE, load_tokenizer
from tokenizer.model import VQVAE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    """Arguments of one prepare run; `out` receives the shards."""

    data: Path                     # dataset folder with captions.jsonl / captions.csv
    tokenizer: Path                # frame tokenizer directory (tokenizer/io.py)
    text: Path                     # text tokenizer directory (text.json + text.model)
    out: Path                      # shard directory
    num_frames: int = 5            # frames per clip (CogVideo's key-frame stage: 5)
    rates: tuple[int, ...] = DEFAULT_RATES
    clips_per_rate: int = 1        # clips per video and feasible rate
    batch_size: int = 16           # clips per frame-tokenizer forward pass
    text_length: int = 16          # text ids per sample, left-padded (L)
    seed: int = 0
    part_size: int = 256           # samples per shard part; a multiple of batch_size
    # > 0: a frame keeps the previous frame's code wherever that code is within this cosine similarity of the nearest
    # (VQVAE.encode): static content keeps its codes instead of flickering on compression noise.
    steady_margin: float = 0.0
    workers: int = 0               # processes probing and reading videos (0: this one); the shards are the same

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)}: expected a positive integer"
                    for name in ("num_frames", "clips_per_rate", "batch_size", "text_length", "part_size")
                    if not isinstance(getattr(self, name), int) or getattr(self, name) < 1]
        if not isinstance(self.workers, int) or self.workers < 0:
            problems.append(f"workers={self.workers}: expected an integer >= 0")
        if not isinstance(self.steady_margin, (int, float)) or not 0 <= self.steady_margin < 2:
            problems.append(f"steady_margin={self.steady_margin}: expected a cosine margin in [0, 2)")
        if not problems and self.part_size % self.batch_size:
            problems.append(f"part_size={self.part_size}: expected a multiple of batch_size={self.batch_size} "
                            f"(so that a resumed run batches clips exactly as an uninterrupted one)")
        try:
            check_rates(tuple(self.rates))
        except ValueError as error:
            problems.append(str(error))
        if problems:
            raise ValueError("invalid PrepareConfig: " + "; ".join(problems))


@dataclass
class PrepareSummary:
    """What a run did: samples written by this run, samples and parts in the directory, and every skip."""

    written: int = 0
    total_samples: int = 0
    parts: int = 0
    complete: bool = False
    problems: list[Problem] = field(default_factory=list)

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.reason] = counts.get(problem.reason, 0) + 1
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items())) or "none"
        state = "complete" if self.complete else "incomplete (re-run to continue)"
        return (f"wrote {self.written} samples; shards hold {self.total_samples} samples in {self.parts} parts, "
                f"{state}; skipped: {skipped}")


class InputError(ValueError):
    """An input folder of the run, named by its PrepareConfig field (data, tokenizer, text, out), is unusable."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


@dataclass(frozen=True)
class PlannedClip:
    """Position `number` of the plan: a fixed clip of a usable video, its text ids, and `record`, what the
    sample's line in source.jsonl says (video relative to the dataset, start, rate, caption, plan number)."""

    number: int
    clip: ClipSample
    text: tuple[int, ...]
    record: dict


# ----------------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------------

def plan_clips(dataset: ClipDataset, text_tokenizer: TextTokenizer, config: PrepareConfig, data: Path,
               problems: list[Problem]) -> list[PlannedClip]:
    """The fixed list of clips to encode, in order; a caption the text tokenizer refuses skips its video."""
    plan: list[PlannedClip] = []
    for index, source in enumerate(dataset.sources):
        try:
            text = tuple(text_tokenizer.encode_padded(source.entry.caption, config.text_length))
        except ValueError as error:  # PromptTooLong, or special-token text in the caption
            problems.append(Problem(str(source.entry.video), "caption refused", str(error)))
            logger.warning("skipping %s: caption refused (%s)", source.entry.video, error)
            continue
        for rate in source.rates:
            for clip in range(config.clips_per_rate):
                rng = np.random.default_rng([config.seed, index, rate, clip])
                start = choose_start(source.info.duration, config.num_frames, rate, rng)
                record = {"video": str(source.entry.video.relative_to(data)), "start": start, "rate": rate,
                          "caption": source.entry.caption, "plan": len(plan)}
                plan.append(PlannedClip(len(plan), ClipSample(index, rate, start), text, record))
    return plan


def check_written_clips(plan: list[PlannedClip], directory: Path, data: Path) -> int:
    """Every sample already in the complete parts of `directory` must be the plan entry it records, else ShardError
    naming the first that differs; returns the plan number to continue from. The plan numbers the clips of the
    videos usable now, so a video removed, added, repaired or broken since the parts were written shifts it."""
    written = [(part.name, record) for part in complete_part_directories(directory) for record in read_sources(part)]
    for sample, (part, record) in enumerate(written):
        number = record.get("plan")
        expected = plan[number].record if isinstance(number, int) and 0 <= number < len(plan) else None
        if record == expected:
            continue
        now = (f"plan entry {number} is now {json.dumps(expected)}" if expected
               else f"the plan now has only {len(plan)} entries")
        raise ShardError(
            f"token shards at {directory} were started from other clips than {data} gives now: sample {sample} "
            f"({part}) is {json.dumps(record)}, but {now}. The usable videos changed since these parts were written "
            f"(a video removed, added, repaired or broken; the warnings above name those skipped now), so continuing "
            f"would lose or repeat clips. Restore the dataset as it was, or start again in a new output directory "
            f"(--out) or after deleting {directory}")
    return written[-1][1]["plan"] + 1 if written else 0


def shard_meta(config: PrepareConfig, frame_tokenizer: VQVAE, text_tokenizer: TextTokenizer) -> dict:
    """Everything a shard directory promises: compared on resume, checked by training."""
    data = Path(config.data).resolve()
    return {
        "num_frames": config.num_frames,
        "grid": list(frame_tokenizer.config.grid),
        "text_length": config.text_length,
        "rates": list(config.rates),
        "frame_tokenizer": {"config": frame_tokenizer.config.to_dict(),
                            "weights_sha256": sha256_file(Path(config.tokenizer) / WEIGHTS_FILE)},
        "text_model_sha256": text_tokenizer.spec["model_sha256"],
        "source": str(data),
        "source_captions_sha256": sha256_file(find_captions_file(data)),
        "prepare": {"seed": config.seed, "clips_per_rate": config.clips_per_rate,
                    "batch_size": config.batch_size, "part_size": config.part_size,
                    **({"steady_margin": config.steady_margin} if config.steady_margin else {})},
    }


def copied_model_sha256(copy: Path) -> str | None:
    """sha256 of the model file that the text tokenizer directory `copy` names; None if it cannot be read."""
    try:
        return sha256_file(copy / json.loads((copy / TEXT_SPEC_FILE).read_text())["model_file"])
    except (OSError, ValueError, KeyError, TypeError):  # missing or malformed text.json, missing model file
        return None


def copy_text_model(source: Path, target: Path, model_sha256: str, parts: int) -> None:
    """Keep the text model (sha256 `model_sha256`) inside the shard directory: training stages read it from there,
    so the shards and the text ids they hold can never be paired with another text model. A copy of another model
    is replaced while no part is written (a run that stopped before its first part left it); with `parts` written,
    it is refused."""
    if target.exists():
        existing = copied_model_sha256(target)
        if existing == model_sha256:
            return
        if parts:
            raise ShardError(
                f"{target} holds a text model with sha256 {existing}, but the {parts} part(s) in {target.parent} hold "
                f"the text ids of text model {source} (sha256 {model_sha256}, as {target.parent / META_FILE} "
                f"records); the copy was changed after they were written. Copy {source} to {target} again, "
                f"or start again in a new output directory")
        logger.info("replacing %s (text model sha256 %s, left by a run that wrote no part) with %s (sha256 %s)",
                    target, existing, source, model_sha256)
    with replacing(target) as temporary:
        shutil.copytree(source, temporary)


def open_inputs(config: PrepareConfig, device: str) -> tuple[VQVAE, TextTokenizer]:
    """Check the dataset and output folders and load both tokenizers; InputError names the unusable input."""
    if not Path(config.data).is_dir():
        raise InputError("data", f"{config.data} is not a folder")
    try:
        find_captions_file(Path(config.data))
    except (OSError, ValueError) as error:
        raise InputError("data", str(error)) from None
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise InputError("out", f"{config.out} exists and is not a folder")
    try:
        text_tokenizer = TextTokenizer.load(config.text)
    except (OSError, ValueError) as error:
        raise InputError("text", f"{config.text} is not a text tokenizer directory: {error}") from None
    try:
        frame_tokenizer = load_tokenizer(config.tokenizer, device=device).eval()  # eval: the codebook must not move
    except (OSError, ValueError) as error:
        raise InputError("tokenizer", f"{config.tokenizer} is not a frame tokenizer directory: {error}") from None
    return frame_tokenizer, text_tokenizer


def check_tokenizers(config: PrepareConfig, frame_tokenizer: VQVAE, text_tokenizer: TextTokenizer) -> None:
    missing = [rate for rate in config.rates if rate not in text_tokenizer.rates]
    if missing:
        raise ValueError(f"text tokenizer {config.text} has fps tokens for rates {text_tokenizer.rates}, "
                         f"not for {missing}; retrain it with these rates or choose others")
    if frame_tokenizer.config.codebook_size > np.iinfo(CODES_DTYPE).max + 1:
        raise ValueError(f"frame tokenizer {config.tokenizer} has {frame_tokenizer.config.codebook_size} codes; "
                         f"token shards store codes as int16 (at most {np.iinfo(CODES_DTYPE).max + 1})")


# ----------------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------------

class VideoClips(Dataset):
    """The planned clips grouped by video, in plan order: item k is (clips, items) of the k-th video, its items read
    together (`ClipDataset.load_samples`), or (clips, BadVideo) when the file fails now."""

    def __init__(self, dataset: ClipDataset, plan: list[PlannedClip]):
        self.dataset = dataset
        self.groups = [list(group) for _, group in itertools.groupby(plan, key=lambda planned: planned.clip.index)]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> tuple[list[PlannedClip], list[dict] | BadVideo]:
        clips = self.groups[index]
        try:
            return clips, self.dataset.load_samples([planned.clip for planned in clips])
        except BadVideo as error:
            return clips, error


def encode_and_write(batch: list[tuple[PlannedClip, dict]], frame_tokenizer: VQVAE, writer: ShardWriter,
                     steady_margin: float = 0.0) -> None:
    """Encode the frames of a batch of read clips and append the samples to the writer."""
    if not batch:
        return
    device = next(frame_tokenizer.parameters()).device
    frames = torch.stack([item["frames"] for _, item in batch]).to(device)  # (B, T, 3, S, S) in [-1, 1]
    codes = frame_tokenizer.encode(frames, steady_margin).cpu()  # (B, T, h, w) int64, under torch.no_grad
    for (planned, _), sample_codes in zip(batch, codes):
        writer.add(sample_codes.numpy(), np.array(planned.text), planned.clip.rate, planned.record)


def prepare(config: PrepareConfig, max_parts: int | None = None, progress: bool = True,
            device: str | None = None) -> PrepareSummary:
    """Encode `config.data` into token shards at `config.out`, continuing an earlier run with the same settings.

    max_parts: stop (without finishing) once this run has written that many parts; a later run continues.
    device: where the frame tokenizer runs; None picks cuda when available. Near-tied codes can differ between
    devices, so finish a directory on the device that began it.
    """
    data = Path(config.data).resolve()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    frame_tokenizer, text_tokenizer = open_inputs(config, device)
    check_tokenizers(config, frame_tokenizer, text_tokenizer)
    writer = ShardWriter(config.out, shard_meta(config, frame_tokenizer, text_tokenizer), config.part_size)
    copy_text_model(Path(config.text), Path(config.out) / TEXT_COPY, text_tokenizer.spec["model_sha256"],
                    writer.num_parts)
    summary = PrepareSummary()
    if not writer.is_complete:
        run_plan(config, data, frame_tokenizer, text_tokenizer, writer, summary, max_parts, progress)
    summary.total_samples, summary.parts, summary.complete = writer.num_samples, writer.num_parts, writer.is_complete
    logger.info("prepare %s: %s", config.out, summary.describe())
    return summary


def run_plan(config: PrepareConfig, data: Path, frame_tokenizer: VQVAE, text_tokenizer: TextTokenizer,
             writer: ShardWriter, summary: PrepareSummary, max_parts: int | None, progress: bool) -> None:
    """Read, encode and write the planned clips after the writer's last complete part."""
    dataset = ClipDataset(data, config.num_frames, list(config.rates), frame_tokenizer.config.image_size,
                          seed=config.seed, progress=progress, workers=config.workers)
    summary.problems.extend(dataset.report.problems)
    plan = plan_clips(dataset, text_tokenizer, config, data, summary.problems)
    if not plan:
        raise ValueError(f"no usable clips in {data}: {summary.describe()}")
    first = check_written_clips(plan, writer.directory, data)
    parts_before = writer.num_parts
    videos = VideoClips(dataset, plan[first:])
    reader = DataLoader(videos, batch_size=None, num_workers=config.workers) if config.workers else videos
    batch: list[tuple[PlannedClip, dict]] = []
    with tqdm(total=len(plan) - first, desc="prepare", disable=not progress) as bar:
        for clips, items in reader:  # one video's planned clips, in plan order
            bar.update(len(clips))
            if isinstance(items, BadVideo):
                for planned in clips:
                    summary.problems.append(Problem(items.path, items.reason, items.detail))
                    logger.warning("skipping clip %d of %s: %s", planned.number, items.path, items)
                continue
            for planned, item in zip(clips, items):
                batch.append((planned, item))
                if len(batch) == config.batch_size:
                    encode_and_write(batch, frame_tokenizer, writer, config.steady_margin)
                    summary.written += len(batch)
                    batch = []
                    if max_parts is not None and writer.num_parts - parts_before >= max_parts:
                        return
    encode_and_write(batch, frame_tokenizer, writer, config.steady_margin)
    summary.written += len(batch)
    writer.close()


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------

def in_option_names(message: str) -> str:
    """A PrepareConfig error in command-line terms: 'part_size=10' becomes '--part-size 10'."""
    for name in (item.name for item in fields(PrepareConfig)):
        message = re.sub(rf"\b{name}=", f"--{name.replace('_', '-')} ", message)
    return message.removeprefix("invalid PrepareConfig: ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cogvideo_lite.prepare",
                                     description="Encode a dataset once into token shards for the transformer.")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder with a captions file")
    parser.add_argument("--tokenizer", type=Path, required=True, help="frame tokenizer directory")
    parser.add_argument("--text", type=Path, required=True, help="text tokenizer directory")
    parser.add_argument("--out", type=Path, required=True, help="shard directory to write or continue")
    parser.add_argument("--num-frames", type=int, default=PrepareConfig.num_frames)
    parser.add_argument("--rates", type=cli.rates_argument, default=DEFAULT_RATES, help="frame rates, e.g. 1,2,4,8")
    parser.add_argument("--clips-per-rate", type=int, default=PrepareConfig.clips_per_rate)
    parser.add_argument("--batch-size", type=int, default=PrepareConfig.batch_size)
    parser.add_argument("--text-length", type=int, default=PrepareConfig.text_length)
    parser.add_argument("--seed", type=int, default=PrepareConfig.seed)
    parser.add_argument("--part-size", type=int, default=PrepareConfig.part_size,
                        help="samples per part, a multiple of --batch-size")
    parser.add_argument("--steady-margin", type=float, default=PrepareConfig.steady_margin,
                        help="keep the previous frame's code where it is within this cosine similarity of the nearest "
                             "(0: nearest code always)")
    parser.add_argument("--device", default=None, help="device of the frame tokenizer (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=PrepareConfig.workers,
                        help="processes probing and reading videos while this one encodes (default 0: none)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    try:
        config = PrepareConfig(**{item.name: getattr(args, item.name) for item in fields(PrepareConfig)})
    except ValueError as error:
        parser.error(in_option_names(str(error)))
    try:
        print(prepare(config, device=args.device).describe())
    except InputError as error:
        parser.error(f"argument --{error.name}: {error.problem}")
    except (ShardError, ValueError) as error:
        raise SystemExit(f"prepare: {error}") from None
