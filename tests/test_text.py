"""Tests of the caption tokenizer: real sentencepiece training on small caption sets."""

import json

import pytest
import torch

from cogvideo_lite.data.shapes import all_captions
from cogvideo_lite.text import (TEXT_MODEL_FILE, PromptTooLong, TextTokenizer, main, minimum_vocab_size, parse_rates,
                                train_text_model)

CAPTIONS = all_captions()  # the built-in grammar: "a {colour} {shape} moves {direction} {speed}"
RATES = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> TextTokenizer:
    return train_text_model(CAPTIONS, tmp_path_factory.mktemp("text") / "text.model", 1000, RATES)


def test_special_tokens_are_single_distinct_ids(tokenizer):
    fps_ids = [tokenizer.fps_id(rate) for rate in RATES]
    special = [tokenizer.pad_id, tokenizer.boi_id] + fps_ids
    assert tokenizer.pad_id == 0
    assert len(set(special)) == len(special)
    assert all(0 <= i < tokenizer.vocab_size for i in special)
    processor = tokenizer._processor
    assert processor.encode("<boi>") == [processor.piece_to_id("▁"), tokenizer.boi_id]
    assert processor.encode("<fps_4>")[-1] == tokenizer.fps_id(4)
    assert tokenizer.spec["special_tokens"]["<fps_8>"] == tokenizer.fps_id(8)


def test_round_trip_on_captions_and_whole_words(tokenizer):
    for caption in CAPTIONS:
        ids = tokenizer.encode(caption)
        assert tokenizer.decode(ids) == caption
        assert tokenizer.pad_id not in ids
    # BPE on this grammar learns whole words: one id per word
    assert len(tokenizer.encode("a red circle moves left slowly")) == 6


def test_normalisation_and_unseen_characters(tokenizer):
    assert tokenizer.encode("A  RED Circle") == tokenizer.encode("a red circle")
    assert tokenizer.decode(tokenizer.encode("a purple hexagon zooms ü")) == "a purple hexagon zooms ü"


def test_encode_padded_pads_on_the_left(tokenizer):
    ids = tokenizer.encode("a blue square moves up quickly")
    padded = tokenizer.encode_padded("a blue square moves up quickly", 10)
    assert padded == [0] * (10 - len(ids)) + ids
    assert tokenizer.decode(padded) == "a blue square moves up quickly"
    assert tokenizer.encode_padded("", 4) == [0, 0, 0, 0]


def test_too_long_caption_names_both_lengths(tokenizer):
    caption = "a red circle moves left slowly"
    with pytest.raises(PromptTooLong, match=r"needs 6 text tokens but the text length is 4: 'a red circle"):
        tokenizer.encode_padded(caption, 4)
    assert issubclass(PromptTooLong, ValueError)


def test_encode_batch_ids_and_mask(tokenizer):
    captions = ["a red circle moves left slowly", "", "a green triangle moves down quickly"]
    ids, pad_mask = tokenizer.encode_batch(captions, 8)
    assert ids.shape == (3, 8) and ids.dtype == torch.long and pad_mask.dtype == torch.bool
    for row, caption in enumerate(captions):
        assert ids[row].tolist() == tokenizer.encode_padded(caption, 8)
    assert pad_mask[1].all() and pad_mask[0].tolist() == [True, True] + [False] * 6


def test_fps_id_of_unknown_rate_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match=r"frame rate 3 has no fps token; this text model knows rates \(1, 2, 4, 8\)"):
        tokenizer.fps_id(3)


def test_caption_with_special_token_text_is_refused(tokenizer):
    with pytest.raises(ValueError, match=r"contains the text of special tokens \['<boi>'\]"):
        tokenizer.encode("a red <boi> circle")


def test_training_is_deterministic(tmp_path, tokenizer):
    again = train_text_model(CAPTIONS, tmp_path / "text.model", 1000, RATES)
    assert again.spec == tokenizer.spec  # includes the sha256 of the model file
    for caption in CAPTIONS[:10]:
        assert again.encode(caption) == tokenizer.encode(caption)


def test_load_checks_model_sha256(tmp_path):
    train_text_model(CAPTIONS[:20], tmp_path / "text.model", 1000, (1, 2))
    spec = json.loads((tmp_path / "text.json").read_text())
    spec["model_sha256"] = "0" * 64
    (tmp_path / "text.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"text\.model has sha256 [0-9a-f]{64} but .*text\.json expects 0000"):
        TextTokenizer.load(tmp_path)


def test_too_small_vocabulary_and_bad_rates_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=64"):
        train_text_model(CAPTIONS, tmp_path / "text.model", 64, RATES)
    with pytest.raises(ValueError, match="distinct positive integers"):
        parse_rates("1,2,2")
    with pytest.raises(ValueError, match="do not double"):
        parse_rates("1,2,3")
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_rates("1,two")


# ---------------------------------------------------------------------------------------------------- command line
def _captions_folder(root, captions: list[str]):
    root.mkdir()
    for index in range(len(captions)):
        (root / f"clip{index}.mp4").write_bytes(b"")  # the captions file must name existing files; never decoded here
    (root / "captions.jsonl").write_text("".join(json.dumps({"video": f"clip{index}.mp4", "caption": caption}) + "\n"
                                                 for index, caption in enumerate(captions)))
    return root


def test_command_line_names_the_minimum_vocabulary_size(tmp_path, capsys):
    data = _captions_folder(tmp_path / "data", CAPTIONS)
    minimum = minimum_vocab_size(CAPTIONS, RATES)
    assert minimum == 256 + 7 + 24  # byte pieces, pad unk <boi> and 4 fps, 23 letters and the whitespace mark
    with pytest.raises(SystemExit) as raised:
        main(["--data", str(data), "--out", str(tmp_path / "text"), "--vocab-size", "60"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert raised.value.code == 2
    assert f"--vocab-size 60: these {len(CAPTIONS)} captions need at least {minimum} pieces" in error
    assert not (tmp_path / "text").exists()
    main(["--data", str(data), "--out", str(tmp_path / "text"), "--vocab-size", str(minimum)])  # the minimum works
    assert TextTokenizer.load(tmp_path / "text").vocab_size == minimum


def test_command_line_names_a_missing_captions_file_and_survives_special_token_text(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "text")])
    assert raised.value.code == 2 and "argument --data: " in capsys.readouterr().err
    data = _captions_folder(tmp_path / "data", CAPTIONS[:20] + ["a red <fps_1> circle"])
    main(["--data", str(data), "--out", str(tmp_path / "text")])  # trains; the caption is only warned about
    assert (tmp_path / "text" / TEXT_MODEL_FILE).is_file()
    assert "21 captions" in capsys.readouterr().out
