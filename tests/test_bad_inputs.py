"""A dataset mixing good clips with every kind of bad input: bad ones are skipped and named with their reason,
odd-sized and grayscale videos load, and the checker's exit status says whether anything is usable."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cogvideo_lite.data.check import main as check_main
from cogvideo_lite.data.datasets import ClipDataset
from cogvideo_lite.data.shapes import ClipSpec, generate

RATES = [1, 2, 4, 8]
NUM_FRAMES = 5  # the shortest clip: 5 frames at 8 fps span 0.5 s


def moving_bar(num_frames: int, height: int, width: int) -> np.ndarray:
    """A white bar sliding right over grey: (T, H, W, 3) uint8."""
    frames = np.full((num_frames, height, width, 3), 60, np.uint8)
    for index in range(num_frames):
        frames[index, :, index % width] = 255
    return frames


def build_corpus(root: Path, video_writer) -> tuple[set[str], dict[str, str]]:
    """A mixed dataset at `root` (also the corpus of bench/reliability.py): (good videos, {bad entry: reason})."""
    generate(root, 3, seed=1, spec=ClipSpec(size=32), progress=False)
    good_clip = (root / "clips/000000.mp4").read_bytes()
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "truncated.mp4").write_bytes(good_clip[: len(good_clip) // 2])
    (bad / "text.mp4").write_text("this is a text file with a video name\n")
    video_writer(bad / "short.mp4", moving_bar(10, 32, 32), 24)  # 0.42 s < 0.5 s
    video_writer(bad / "one_frame.mp4", moving_bar(1, 32, 32), 24)
    video_writer(root / "odd.mp4", moving_bar(24, 47, 63), 24, pix_fmt="yuv444p")  # yuv420p cannot be odd-sized
    gray = np.broadcast_to(np.linspace(30, 220, 24).astype(np.uint8)[:, None, None], (24, 40, 40)).copy()
    video_writer(root / "gray.mkv", gray, 24, codec="ffv1", pix_fmt="gray")
    (root.parent / "outside.mp4").write_bytes(good_clip)

    def line(video, caption="a caption"):
        return json.dumps({"video": video, "caption": caption}).encode()

    lines = (root / "captions.jsonl").read_bytes().splitlines() + [
        line("bad/empty.mp4"),  # 4
        line("bad/truncated.mp4"),  # 5
        line("bad/text.mp4"),  # 6
        line("bad/short.mp4"),  # 7
        line("bad/one_frame.mp4"),  # 8
        line("odd.mp4", "an odd-sized bar"),  # 9
        line("gray.mkv", "a grey fade"),  # 10
        json.dumps({"video": "clips/000001.mp4"}).encode(),  # 11: no caption
        b'{"video": "clips/000002.mp4", "caption": "na\xefve"}',  # 12: latin-1
        b'{"video": "clips/000002.mp4" "caption": "x"}',  # 13: missing comma
        line("clips/000000.mp4", "again"),  # 14
        line("../outside.mp4"),  # 15
    ]
    (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    captions_file = str(root.resolve() / "captions.jsonl")
    expected_bad = {
        str((bad / "empty.mp4").resolve()): "empty file",
        str((bad / "truncated.mp4").resolve()): "corrupt or truncated video",
        str((bad / "text.mp4").resolve()): "not a video",
        str((bad / "short.mp4").resolve()): "too short",
        str((bad / "one_frame.mp4").resolve()): "too short",
        f"{captions_file}:11": "missing caption",
        f"{captions_file}:12": "not UTF-8",
        f"{captions_file}:13": "malformed JSON",
        f"{captions_file}:14": "duplicate entry",
        f"{captions_file}:15": "path outside dataset",
    }
    good = {str((root / name).resolve()) for name in ("clips/000000.mp4", "clips/000001.mp4", "clips/000002.mp4", "odd.mp4", "gray.mkv")}
    return good, expected_bad


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, video_writer):
    """(root, good video names, {bad name: reason}) of a mixed dataset."""
    root = tmp_path_factory.mktemp("corpus") / "data"
    good, expected_bad = build_corpus(root, video_writer)
    return root, good, expected_bad


def test_clip_dataset_yields_every_good_clip_once_and_names_every_bad_one(corpus, caplog):
    root, good, expected_bad = corpus
    with caplog.at_level("WARNING"):
        dataset = ClipDataset(root, num_frames=NUM_FRAMES, rates=RATES, size=32, progress=False)
    assert dict(dataset.report.bad) == expected_bad and len(dataset.report.bad) == len(expected_bad)
    assert dataset.report.good == len(good)
    assert dataset.report.counts == {
        "empty file": 1, "corrupt or truncated video": 1, "not a video": 1, "too short": 2, "missing caption": 1,
        "not UTF-8": 1, "malformed JSON": 1, "duplicate entry": 1, "path outside dataset": 1,
    }
    for path, reason in expected_bad.items():  # each skip is logged naming the file and the reason
        assert any(path in message and reason in message for message in caplog.messages)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        videos = [dataset[index]["video"] for index in range(len(dataset))]
        assert sorted(videos) == sorted(good)


def test_odd_sized_and_grayscale_videos_load_correctly(corpus):
    root, _, _ = corpus
    dataset = ClipDataset(root, num_frames=NUM_FRAMES, rates=RATES, size=32, rule="lowest", progress=False)
    by_name = {dataset.sources[index].entry.video.name: index for index in range(len(dataset))}
    odd = dataset.sources[by_name["odd.mp4"]]
    assert (odd.info.height, odd.info.width) == (47, 63) and odd.rates == (8,)  # 1 s: only 0.5 s spans fit
    odd_item = dataset[by_name["odd.mp4"]]
    assert odd_item["frames"].shape == (NUM_FRAMES, 3, 32, 32) and odd_item["fps"] == 8
    gray_item = dataset[by_name["gray.mkv"]]["frames"]  # (5, 3, 32, 32)
    torch.testing.assert_close(gray_item[:, 0], gray_item[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(gray_item[:, 1], gray_item[:, 2], rtol=0, atol=0)
    levels = gray_item[:, 0].mean(dim=(1, 2))
    assert (levels.diff() > 0).all()  # the fade brightens frame after frame


def test_check_lists_every_bad_entry_and_exits_zero(corpus, tmp_path, capsys):
    root, good, expected_bad = corpus
    report_path = tmp_path / "report.json"
    assert check_main([str(root), "--json", str(report_path), "--num-frames", "5", "--rates", "1,2,4,8"]) == 0
    printed = capsys.readouterr().out
    for path, reason in expected_bad.items():
        assert f"{path}: {reason}" in printed
    assert f"good: {len(good)}, bad: {len(expected_bad)}" in printed
    findings = json.loads(report_path.read_text())
    assert findings["good"] == len(good)
    assert {problem["path"]: problem["reason"] for problem in findings["problems"]} == expected_bad


def test_check_exits_non_zero_when_nothing_is_usable(corpus, tmp_path):
    root, _, _ = corpus
    only_bad = tmp_path / "only_bad"
    shutil.copytree(root / "bad", only_bad / "bad")
    names = ["empty", "truncated", "text", "short", "one_frame"]
    (only_bad / "captions.csv").write_text("video,caption\n" + "".join(f"bad/{name}.mp4,x\n" for name in names))
    finished = subprocess.run(
        [sys.executable, "-m", "cogvideo_lite.data.check", str(only_bad)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert finished.returncode != 0
    assert "good: 0, bad: 5" in finished.stdout and "no usable clip" in finished.stderr


def test_check_names_the_video_of_a_caption_less_entry(tmp_path, capsys):
    """A line without a caption (or with an empty one) is named by its line and by the video it points to."""
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    lines = [{"video": "clips/a.mp4"}, {"video": "clips/b.mp4", "caption": " "}]
    (root / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert check_main([str(root)]) == 1  # nothing usable
    printed = capsys.readouterr().out
    captions = (root / "captions.jsonl").resolve()
    assert f"{captions}:1: missing caption (video clips/a.mp4)" in printed
    assert f"{captions}:2: empty caption (video clips/b.mp4, caption ' ')" in printed
