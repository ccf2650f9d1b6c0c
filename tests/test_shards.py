"""Tests of the token shard writer and memory-mapped reader, against the arrays that were written."""

import json
import pickle

import numpy as np
import pytest
import torch

from cogvideo_lite.provenance import CheckpointMismatch, Provenance
from cogvideo_lite.prepare.shards import ShardError, ShardWriter, TokenShards, complete_part_directories, read_sources

NUM_FRAMES, GRID, TEXT_LENGTH, RATES = 3, (2, 4), 5, [1, 2, 4]
META = {"num_frames": NUM_FRAMES, "grid": list(GRID), "text_length": TEXT_LENGTH, "rates": RATES,
        "frame_tokenizer": {"config": {"image_size": 16}, "weights_sha256": "a" * 64},
        "text_model_sha256": "b" * 64, "source": "/data/videos"}


def random_samples(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, int, dict]]:
    generator = np.random.default_rng(seed)
    return [(generator.integers(0, 20000, size=(NUM_FRAMES, *GRID)), generator.integers(0, 300, size=TEXT_LENGTH),
             int(generator.choice(RATES)), {"video": f"v{index}.mp4", "start": 0.5 * index, "caption": "a cat"})
            for index in range(count)]


def write(directory, samples, part_size=3, meta=META) -> ShardWriter:
    writer = ShardWriter(directory, meta, part_size)
    for codes, text, fps, source in samples:
        writer.add(codes, text, fps, {**source, "rate": fps})
    writer.close()
    return writer


def test_round_trip_is_exact_across_parts(tmp_path):
    samples = random_samples(7)
    writer = write(tmp_path, samples)
    assert writer.num_parts == 3 and sorted(path.name for path in tmp_path.iterdir()) == [
        "meta.json", "part-00000", "part-00001", "part-00002"]
    shards = TokenShards(tmp_path)
    assert len(shards) == 7 and shards.meta["num_samples"] == 7
    for index, (codes, text, fps, source) in enumerate(samples):
        sample = shards[index]
        assert sample["codes"].dtype == torch.long and sample["codes"].shape == (NUM_FRAMES, *GRID)
        assert torch.equal(sample["codes"], torch.from_numpy(codes))
        assert torch.equal(sample["text"], torch.from_numpy(text))
        assert sample["fps"] == fps
        assert shards.source(index) == {**source, "rate": fps}
    assert torch.equal(shards[-1]["codes"], torch.from_numpy(samples[-1][0]))
    with pytest.raises(IndexError, match="sample 7 out of range for 7"):
        shards[7]


def test_parts_are_memory_mapped_with_stored_dtypes(tmp_path):
    write(tmp_path, random_samples(4))
    codes = np.load(tmp_path / "part-00000" / "codes.npy", mmap_mode="r")
    assert isinstance(codes, np.memmap) and codes.dtype == np.int16 and codes.shape == (3, NUM_FRAMES, *GRID)
    assert np.load(tmp_path / "part-00001" / "text.npy").dtype == np.int32
    assert np.load(tmp_path / "part-00001" / "fps.npy").dtype == np.int16


def test_indices_with_rate_match_brute_force(tmp_path):
    samples = random_samples(10, seed=3)
    shards = TokenShards(write(tmp_path, samples).directory)
    for wanted in ([1], [2, 4], [8], RATES):
        assert shards.indices_with_rate(wanted) == [i for i, sample in enumerate(samples) if sample[2] in wanted]


def test_pickled_reader_reopens_the_same_samples(tmp_path):
    write(tmp_path, random_samples(5))
    shards = TokenShards(tmp_path)
    copy = pickle.loads(pickle.dumps(shards))
    assert len(pickle.dumps(shards)) < 1000  # the memory maps are not copied into the pickle
    assert all(torch.equal(copy[i]["codes"], shards[i]["codes"]) for i in range(5))


def test_reopening_continues_after_complete_parts_and_drops_unfinished_ones(tmp_path):
    samples = random_samples(8)
    writer = ShardWriter(tmp_path, META, 3)
    for codes, text, fps, source in samples[:4]:
        writer.add(codes, text, fps, source)  # part-00000 flushed, one sample still buffered: lost on "crash"
    (tmp_path / "part-00001.tmp").mkdir()  # a flush that never finished
    resumed = ShardWriter(tmp_path, META, 3)
    assert (resumed.num_parts, resumed.num_samples) == (1, 3)
    assert read_sources(complete_part_directories(tmp_path)[-1])[-1] == samples[2][3]  # what prepare resumes after
    assert not resumed.is_complete and not (tmp_path / "part-00001.tmp").exists()
    with pytest.raises(ShardError, match="are incomplete .* re-run prepare"):
        TokenShards(tmp_path)
    for codes, text, fps, source in samples[3:]:
        resumed.add(codes, text, fps, source)
    assert resumed.close() == 8
    shards = TokenShards(tmp_path)
    assert all(torch.equal(shards[i]["codes"], torch.from_numpy(samples[i][0])) for i in range(8))
    assert ShardWriter(tmp_path, META, 3).is_complete


def test_other_meta_is_refused_naming_the_difference(tmp_path):
    write(tmp_path, random_samples(2))
    other = {**META, "frame_tokenizer": {"config": {"image_size": 16}, "weights_sha256": "c" * 64}}
    with pytest.raises(ShardError, match=r"meta\.json was written with other settings.*frame_tokenizer\.weights_sha256: "
                                         r"existing 'a+', wanted 'c+'"):
        ShardWriter(tmp_path, other, 3)


def test_tokenizer_mismatch_and_missing_meta_are_clear_errors(tmp_path):
    write(tmp_path / "shards", random_samples(2))
    made_with = Provenance.of_shards(TokenShards(tmp_path / "shards").meta)  # what training checks the text copy with
    made_with.check(Provenance("b" * 64, "a" * 64), "meta.json", "the model")
    with pytest.raises(CheckpointMismatch, match=r"meta.json records text model sha256 b+, but the model has d+"):
        made_with.check(Provenance("d" * 64, "a" * 64), "meta.json", "the model")
    with pytest.raises(CheckpointMismatch, match=r"records frame tokenizer weights sha256 a+, but the model has c+"):
        made_with.check(Provenance("b" * 64, "c" * 64), "meta.json", "the model")
    with pytest.raises(ShardError, match=r"meta\.json is missing"):
        TokenShards(tmp_path / "nowhere")
    (tmp_path / "shards" / "meta.json").unlink()
    with pytest.raises(ShardError, match=r"holds parts but no meta\.json"):
        ShardWriter(tmp_path / "shards", META, 3)


def test_shape_and_count_mismatches_name_the_file(tmp_path):
    write(tmp_path, random_samples(4))
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "text_length": 6}))
    with pytest.raises(ShardError, match=r"part-00000/text\.npy has shape \(3, 5\), expected \(3, 6\)"):
        TokenShards(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "num_samples": 5}))
    with pytest.raises(ShardError, match=r"num_samples=5 but the 2 parts hold 4"):
        TokenShards(tmp_path)


def test_bad_samples_are_refused(tmp_path):
    writer = ShardWriter(tmp_path, META, 3)
    codes, text, _, source = random_samples(1)[0]
    with pytest.raises(ShardError, match=r"codes \(3, 2, 5\) and text \(5,\) do not match"):
        writer.add(np.zeros((3, 2, 5), dtype=np.int64), text, 1, source)
    with pytest.raises(ShardError, match="outside int16"):
        writer.add(codes + 40000, text, 1, source)
    with pytest.raises(ShardError, match=r"rate 8 is not one of the shard rates \[1, 2, 4\]"):
        writer.add(codes, text, 8, source)
