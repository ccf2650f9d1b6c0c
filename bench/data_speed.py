"""Data reading throughput: `ClipDataset` clips per second and `FrameDataset` items per second.

    python -m bench.data_speed [--data data/shapes] [--clips 50] [--threads 1] [--json OUT]

Reads real mp4 files with decord through the project's datasets: the first `--clips` clips of the built-in
dataset (copied to a scratch folder, so the dataset itself is only read), or, if the dataset folder is missing,
`--clips` freshly generated ones. Reported separately: building each dataset (ClipDataset probes every video,
FrameDataset decodes every frame it keeps into memory) and reading items (ClipDataset decodes, resizes and crops
a 5-frame clip per item; FrameDataset crops, flips and resizes a stored frame). One pass over the items is one
timed run. Knows nothing of tokenizers or training.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import KEY_FRAMES, base_parser, machine_info, measure, report, set_threads
from cogvideo_lite.data.datasets import ClipDataset, FrameDataset
from cogvideo_lite.data.shapes import ClipSpec, generate
from cogvideo_lite.train.engine import PROJECT_ROOT
from cogvideo_lite.text import DEFAULT_RATES

FRAME_SIZE = 64  # the tiny tokenizer's frames
FRAMES_PER_VIDEO = 2  # frames the tokenizer config takes from each built-in clip
GENERATED_SEED = 0


def dataset_subset(source: Path, clips: int, scratch: Path) -> tuple[Path, str]:
    """A dataset folder with the first `clips` entries of `source` (copied), or generated clips if it is missing."""
    target = scratch / "data"
    if not (source / "captions.jsonl").is_file():
        generate(target, clips, GENERATED_SEED, ClipSpec(), progress=False)
        return target, f"{clips} clips generated (seed {GENERATED_SEED}): {source} is missing"
    lines = (source / "captions.jsonl").read_text().splitlines()[:clips]
    for line in lines:
        video = json.loads(line)["video"]
        (target / video).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / video, target / video)
    (target / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return target, f"first {len(lines)} clips of {source}"


def read_all(dataset) -> None:
    for index in range(len(dataset)):
        dataset[index]


def timed_build(build):
    start = time.perf_counter()
    dataset = build()
    return dataset, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], warmup=1, repeats=3)
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT / "data" / "shapes", help="built-in dataset folder")
    parser.add_argument("--clips", type=int, default=50, help="clips to read")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        root, origin = dataset_subset(args.data, args.clips, Path(scratch))
        clips, clip_build = timed_build(lambda: ClipDataset(root, KEY_FRAMES, list(DEFAULT_RATES), FRAME_SIZE,
                                                            progress=False))
        frames, frame_build = timed_build(lambda: FrameDataset([root], FRAME_SIZE, frames_per_video=FRAMES_PER_VIDEO,
                                                               progress=False))
        rows = []
        for name, dataset, build_seconds, unit in (("ClipDataset", clips, clip_build, "clips"),
                                                   ("FrameDataset", frames, frame_build, "frames")):
            timing = measure(lambda: read_all(dataset), args.warmup, args.repeats)
            rows.append({"dataset": name, "items": len(dataset), "item": unit, "build s": build_seconds,
                         "items/s": len(dataset) / timing.seconds, "items/CPU-s": len(dataset) / timing.cpu_seconds})
    notes = [f"data: {origin}; ClipDataset: {KEY_FRAMES} frames at one of {DEFAULT_RATES} fps, "
             f"{FRAME_SIZE}x{FRAME_SIZE}; FrameDataset: {FRAMES_PER_VIDEO} frames per video, random crop + flip"]
    return report("data_speed", f"dataset reading (median of {args.repeats} passes)", rows, args.json,
                  {"clips": args.clips, "data": origin, "warmup": args.warmup, "repeats": args.repeats},
                  machine_info(), notes)


if __name__ == "__main__":
    main()
