"""Tests of the prepare step on real mp4 files, a real (randomly initialised) VQVAE and a real sentencepiece model."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cogvideo_lite.data.media import write_mp4
from cogvideo_lite.data.shapes import ClipSpec, all_captions, generate
from cogvideo_lite.data.video import read_clip
from cogvideo_lite.prepare.prepare import PrepareConfig, main, prepare
from cogvideo_lite.prepare.shards import ShardError, TokenShards
from cogvideo_lite.provenance import sha256_file
from cogvideo_lite.text import TextTokenizer, train_text_model
from tokenizer.config import TokenizerConfig
from tokenizer.io import load_tokenizer, save_tokenizer
from tokenizer.model import VQVAE

RATES = (1, 2, 4, 8)
GOOD_CLIPS = 3
# 32x32 frames -> 4x4 codes; the smallest widths the config allows.
TINY_TOKENIZER = TokenizerConfig(image_size=32, downsample=8, codebook_size=64, code_dim=8, channels=32,
                                 channel_mult=(1, 1, 1, 1), num_res_blocks=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three good 4.5 s clips, then a corrupt file, a 3-frame clip and a caption too long for 8 text ids."""
    root = tmp_path_factory.mktemp("data")
    generate(root, GOOD_CLIPS, seed=3, spec=ClipSpec(size=32, fps=8, seconds=4.5), progress=False)
    (root / "clips" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    write_mp4(root / "clips" / "short.mp4", np.full((3, 32, 32, 3), 90, dtype=np.uint8), fps=8)
    shutil.copy(root / "clips" / "000000.mp4", root / "clips" / "wordy.mp4")
    extra = [{"video": "clips/corrupt.mp4", "caption": "a red circle moves left slowly"},
             {"video": "clips/short.mp4", "caption": "a red circle moves left slowly"},
             {"video": "clips/wordy.mp4", "caption": "a red circle moves left slowly and a blue square moves up"}]
    with open(root / "captions.jsonl", "a") as captions:
        captions.writelines(json.dumps(line) + "\n" for line in extra)
    return root


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    frame_directory = save_tokenizer(VQVAE(TINY_TOKENIZER), tmp_path_factory.mktemp("frame_tokenizer"))
    text_directory = tmp_path_factory.mktemp("text_tokenizer")
    train_text_model(all_captions(), text_directory / "text.model", 1000, RATES)
    return frame_directory, text_directory


def make_config(dataset, tokenizers, out, **changes) -> PrepareConfig:
    settings = dict(data=dataset, tokenizer=tokenizers[0], text=tokenizers[1], out=out, num_frames=5, rates=RATES,
                    clips_per_rate=1, batch_size=2, text_length=8, seed=0, part_size=4)
    return PrepareConfig(**{**settings, **changes})


def only_bad_dataset(dataset: Path, root: Path) -> Path:
    """A dataset folder whose one video is corrupt: prepare stops with 'no usable clips' before writing a part."""
    root.mkdir()
    shutil.copy(dataset / "clips" / "corrupt.mp4", root / "corrupt.mp4")
    (root / "captions.jsonl").write_text(json.dumps({"video": "corrupt.mp4", "caption": "a red circle"}) + "\n")
    return root


def part_files(out: Path) -> dict[str, bytes]:
    """Every file of every part of a shard directory, by its path inside the directory."""
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.glob("part-*/*"))}


@pytest.fixture(scope="module")
def prepared(dataset, tokenizers, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("shards")
    return out, prepare(make_config(dataset, tokenizers, out), progress=False, device="cpu")


def test_shards_equal_a_direct_encode_of_each_clip(prepared, dataset, tokenizers):
    out, summary = prepared
    shards = TokenShards(out)
    assert summary.complete and len(shards) == summary.total_samples == GOOD_CLIPS * len(RATES)
    assert shards.meta["grid"] == [4, 4] and summary.parts == 3
    frame_tokenizer = load_tokenizer(tokenizers[0])
    text_tokenizer = TextTokenizer.load(tokenizers[1])
    for index in range(len(shards)):
        sample, source = shards[index], shards.source(index)
        frames = read_clip(dataset / source["video"], 5, source["rate"], 32, start=source["start"])
        assert torch.equal(sample["codes"], frame_tokenizer.encode(frames[None])[0])
        assert sample["text"].tolist() == text_tokenizer.encode_padded(source["caption"], 8)
        assert sample["fps"] == source["rate"]
    assert sorted(shards[i]["fps"] for i in range(len(shards))) == sorted(RATES * GOOD_CLIPS)
    assert len(shards.indices_with_rate([1])) == GOOD_CLIPS


def test_bad_videos_are_skipped_and_counted(prepared):
    problems = {(Path(problem.path).name, problem.reason) for problem in prepared[1].problems}
    assert problems == {("corrupt.mp4", "corrupt or truncated video"), ("short.mp4", "too short"),
                        ("wordy.mp4", "caption refused")}
    assert "1 caption refused, 1 corrupt or truncated video, 1 too short" in prepared[1].describe()


def test_worker_processes_write_the_same_shards(prepared, dataset, tokenizers, tmp_path):
    out = tmp_path / "with-workers"
    summary = prepare(make_config(dataset, tokenizers, out, workers=2), progress=False, device="cpu")
    assert part_files(out) == part_files(prepared[0])
    assert sorted(map(str, summary.problems)) == sorted(map(str, prepared[1].problems))


def test_interrupted_run_resumes_to_identical_shards(prepared, dataset, tokenizers, tmp_path):
    config = make_config(dataset, tokenizers, tmp_path)
    first = prepare(config, max_parts=1, progress=False, device="cpu")
    assert (first.parts, first.written, first.complete) == (1, 4, False)
    with pytest.raises(ShardError, match="incomplete"):
        TokenShards(tmp_path)
    second = prepare(config, progress=False, device="cpu")
    assert (second.parts, second.written, second.complete) == (3, 8, True)
    reference = prepared[0]
    for part in ("part-00000", "part-00001", "part-00002"):
        for name in ("codes.npy", "text.npy", "fps.npy", "source.jsonl"):
            assert (tmp_path / part / name).read_bytes() == (reference / part / name).read_bytes(), f"{part}/{name}"
    again = prepare(config, progress=False, device="cpu")
    assert (again.written, again.total_samples, again.complete) == (0, 12, True)


def test_other_arguments_or_tokenizer_are_refused(prepared, dataset, tokenizers, tmp_path):
    out = prepared[0]
    with pytest.raises(ShardError, match=r"Differences: prepare\.seed: existing 0, wanted 1"):
        prepare(make_config(dataset, tokenizers, out, seed=1), progress=False, device="cpu")
    with pytest.raises(ShardError, match=r"num_frames: existing 5, wanted 3"):
        prepare(make_config(dataset, tokenizers, out, num_frames=3), progress=False, device="cpu")
    torch.manual_seed(1)
    other_tokenizer = save_tokenizer(VQVAE(TINY_TOKENIZER), tmp_path / "other")
    with pytest.raises(ShardError, match=r"frame_tokenizer\.weights_sha256: existing '[0-9a-f]{64}', wanted"):
        prepare(make_config(dataset, (other_tokenizer, tokenizers[1]), out), progress=False, device="cpu")


def test_config_and_rate_errors_are_clear(dataset, tokenizers, tmp_path):
    with pytest.raises(ValueError, match=r"part_size=5: expected a multiple of batch_size=2"):
        make_config(dataset, tokenizers, tmp_path, part_size=5)
    with pytest.raises(ValueError, match=r"fps tokens for rates \(1, 2, 4, 8\), not for \[16\]"):
        prepare(make_config(dataset, tokenizers, tmp_path, rates=(1, 2, 4, 8, 16)), progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"rates \(1, 3\) do not double"):
        make_config(dataset, tokenizers, tmp_path, rates=(1, 3))


def test_a_dataset_without_usable_clips_is_an_error_that_writes_nothing(dataset, tokenizers, tmp_path):
    only_bad = only_bad_dataset(dataset, tmp_path / "bad")
    with pytest.raises(ValueError, match=r"no usable clips in .*bad: .*skipped: 1 corrupt or truncated video"):
        prepare(make_config(only_bad, tokenizers, tmp_path / "shards"), progress=False, device="cpu")
    assert not (tmp_path / "shards" / "meta.json").exists()


def test_steady_codes_flicker_less_and_are_recorded(prepared, dataset, tokenizers, tmp_path):
    """With a margin, frame t keeps frame t-1's code where it is nearly as close as the nearest: the shards equal
    VQVAE.encode(frames, margin) (frame 0 untouched), fewer codes change from frame to frame, and meta says so."""
    out = tmp_path / "steady"
    prepare(make_config(dataset, tokenizers, out, steady_margin=0.05), progress=False, device="cpu")
    steady, plain = TokenShards(out), TokenShards(prepared[0])
    assert steady.meta["prepare"]["steady_margin"] == 0.05 and "steady_margin" not in plain.meta["prepare"]
    frame_tokenizer = load_tokenizer(tokenizers[0])
    changes = {"steady": 0, "plain": 0}
    for index in range(len(steady)):
        source = steady.source(index)
        frames = read_clip(dataset / source["video"], 5, source["rate"], 32, start=source["start"])
        codes = steady[index]["codes"]
        assert torch.equal(codes, frame_tokenizer.encode(frames[None], steady_margin=0.05)[0])
        assert torch.equal(codes[0], plain[index]["codes"][0])
        changes["steady"] += int((codes[1:] != codes[:-1]).sum())
        changes["plain"] += int((plain[index]["codes"][1:] != plain[index]["codes"][:-1]).sum())
    assert changes["steady"] < changes["plain"]
    with pytest.raises(ValueError, match="steady_margin=-0.1: expected a cosine margin"):
        make_config(dataset, tokenizers, tmp_path / "x", steady_margin=-0.1)


def test_resume_refuses_when_an_encoded_video_was_removed(dataset, tokenizers, tmp_path):
    """The plan numbers the clips of the videos usable now: removing an encoded video shifts every later entry, so
    continuing after plan entry 3 would silently drop a video. Refused naming the first differing sample."""
    data = shutil.copytree(dataset, tmp_path / "data")
    out = tmp_path / "shards"
    config = make_config(data, tokenizers, out)
    prepare(config, max_parts=1, progress=False, device="cpu")  # part-00000: plan 0-3, the 4 rates of 000000.mp4
    written = part_files(out)
    (data / "clips" / "000000.mp4").unlink()
    with pytest.raises(ShardError, match=r'sample 0 \(part-00000\) is \{"video": "clips/000000\.mp4".*"plan": 0\}, '
                                         r'but plan entry 0 is now \{"video": "clips/000001\.mp4".*Restore the dataset'):
        prepare(config, progress=False, device="cpu")
    assert part_files(out) == written and json.loads((out / "meta.json").read_text())["num_samples"] is None


def test_resume_refuses_when_a_skipped_video_was_repaired(dataset, tokenizers, tmp_path):
    """The reverse: a video unusable in the first run and repaired before the second inserts its clips before ones
    already written; continuing after them would encode 000002.mp4 a second time."""
    data = shutil.copytree(dataset, tmp_path / "data")
    video = data / "clips" / "000001.mp4"
    original = video.read_bytes()
    video.write_bytes(original[: len(original) // 3])  # truncated: skipped by the scan
    config = make_config(data, tokenizers, tmp_path / "shards")
    first = prepare(config, max_parts=2, progress=False, device="cpu")  # parts: 000000.mp4, then 000002.mp4
    assert [problem.path for problem in first.problems if "000001" in problem.path] == [str(video)]
    video.write_bytes(original)
    with pytest.raises(ShardError, match=r'sample 4 \(part-00001\) is \{"video": "clips/000002\.mp4".*'
                                         r'but plan entry 4 is now \{"video": "clips/000001\.mp4"'):
        prepare(config, progress=False, device="cpu")


def test_resume_after_removing_a_video_not_yet_encoded_equals_a_fresh_run(dataset, tokenizers, tmp_path):
    """Only the written prefix must match: a change past it is what an uninterrupted run would see too."""
    data = shutil.copytree(dataset, tmp_path / "data")
    config = make_config(data, tokenizers, tmp_path / "resumed")
    prepare(config, max_parts=1, progress=False, device="cpu")
    (data / "clips" / "000002.mp4").unlink()
    resumed = prepare(config, progress=False, device="cpu")
    assert (resumed.written, resumed.total_samples, resumed.complete) == (4, 8, True)
    prepare(make_config(data, tokenizers, tmp_path / "fresh"), progress=False, device="cpu")
    assert part_files(tmp_path / "resumed") == part_files(tmp_path / "fresh")


def test_a_stale_text_copy_is_replaced_before_the_first_part_and_refused_after(dataset, tokenizers, tmp_path):
    """A first attempt that wrote no part leaves its text/ copy; a re-run with another --text replaces it, so the
    shards match their own text model. Once parts exist, a copy of another model is refused naming both sha256."""
    other_text = tmp_path / "other_text"
    train_text_model(all_captions()[::3], other_text / "text.model", 1000, RATES)
    ours, other = sha256_file(tokenizers[1] / "text.model"), sha256_file(other_text / "text.model")
    assert ours != other
    out = tmp_path / "shards"
    with pytest.raises(ValueError, match="no usable clips"):
        prepare(make_config(only_bad_dataset(dataset, tmp_path / "bad"), (tokenizers[0], other_text), out),
                progress=False, device="cpu")
    assert sha256_file(out / "text" / "text.model") == other
    prepare(make_config(dataset, tokenizers, out), max_parts=1, progress=False, device="cpu")
    assert sha256_file(out / "text" / "text.model") == ours
    assert json.loads((out / "meta.json").read_text())["text_model_sha256"] == ours
    shutil.rmtree(out / "text")
    shutil.copytree(other_text, out / "text")
    with pytest.raises(ShardError, match=rf"text holds a text model with sha256 {other}, but the 1 part\(s\) .* "
                                         rf"\(sha256 {ours}, as .*meta\.json records\)"):
        prepare(make_config(dataset, tokenizers, out), progress=False, device="cpu")
    assert sha256_file(out / "text" / "text.model") == other and len(part_files(out)) == 4


def test_command_line_input_errors_name_the_option(dataset, tokenizers, tmp_path, capsys):
    """Unusable inputs end in one argparse error line (exit 2) naming the option, not a traceback."""
    out = tmp_path / "out"
    (tmp_path / "a_file").write_text("")
    arguments = ["--data", str(dataset), "--tokenizer", str(tokenizers[0]), "--text", str(tokenizers[1]),
                 "--out", str(out), "--batch-size", "2", "--part-size", "4", "--text-length", "8"]
    cases = [(["--tokenizer", str(tmp_path)], r"argument --tokenizer: .* is not a frame tokenizer directory: "
                                              r".*config\.json: tokenizer config file not found"),
             (["--text", str(tmp_path / "missing")], r"argument --text: .*missing is not a text tokenizer directory: "
                                                     r"no text tokenizer spec"),
             (["--data", str(tmp_path)], r"argument --data: .*: no captions file"),
             (["--out", str(tmp_path / "a_file")], r"argument --out: .*a_file exists and is not a folder"),
             (["--part-size", "10", "--batch-size", "4"], r"error: --part-size 10: expected a multiple of --batch-size 4"),
             (["--rates", "1,3"], r"argument --rates: rates \(1, 3\) do not double")]
    for change, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(arguments + change)  # argparse keeps the last value of a repeated option
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in error, change
        assert re.search(expected, error.strip().splitlines()[-1]), error
    assert not out.exists()
