"""SequenceLayout: derived numbers against hand counts, slices against brute force, assemble/extract round trip."""

import pytest
import torch

from cogvideo_lite.model.layout import SequenceLayout

BOI_ID = 3


def make_layout(num_frames: int = 5) -> SequenceLayout:
    return SequenceLayout(text_length=4, num_frames=num_frames, grid=(2, 3), text_vocab_size=20, codebook_size=16)


def test_derived_numbers_match_hand_count():
    layout = make_layout()
    # [t t t t][fps] then 5 x [BOI c c c c c c]
    assert layout.prefix_length == 5
    assert layout.fps_position == 4
    assert layout.tokens_per_frame == 6
    assert layout.slot_length == 7
    assert layout.seq_length == 5 + 5 * 7
    assert layout.image_offset == 20
    assert layout.vocab_size == 36
    assert layout.slot_slice(2) == slice(19, 26)
    assert layout.code_slice(2) == slice(20, 26)
    assert layout.prediction_slice(2) == slice(19, 25)


def test_slots_tile_the_sequence_and_each_code_is_predicted_by_the_position_before_it():
    layout = make_layout()
    positions = list(range(layout.prefix_length))
    for slot in range(layout.num_frames):
        positions += list(range(layout.seq_length))[layout.slot_slice(slot)]
        codes = list(range(layout.seq_length))[layout.code_slice(slot)]
        predictors = list(range(layout.seq_length))[layout.prediction_slice(slot)]
        assert [position - 1 for position in codes] == predictors
        assert predictors[0] == layout.slot_start(slot)  # the slot's BOI predicts its first code
    assert positions == list(range(layout.seq_length))


def test_assemble_places_every_part_and_extract_inverts_it():
    layout = make_layout()
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, 20, (2, 4), generator=generator)
    fps = torch.tensor([7, 8])
    codes = torch.randint(0, 16, (2, 5, 2, 3), generator=generator)
    tokens = layout.assemble(text, fps, codes, BOI_ID)
    assert tokens.shape == (2, layout.seq_length) and tokens.dtype == torch.long
    assert torch.equal(tokens[:, :4], text)
    assert torch.equal(tokens[:, layout.fps_position], fps)
    for slot in range(5):
        assert (tokens[:, layout.slot_start(slot)] == BOI_ID).all()
        assert torch.equal(tokens[:, layout.code_slice(slot)], codes[:, slot].reshape(2, 6) + 20)
    assert torch.equal(layout.extract_codes(tokens), codes)


def test_with_frames_changes_only_the_frame_count():
    layout = make_layout()
    image = layout.with_frames(1)
    assert (image.text_length, image.grid, image.vocab_size, image.num_frames) == (4, (2, 3), 36, 1)
    assert image.seq_length == 5 + 7
    assert layout.frames_for_length(layout.seq_length) == 5
    with pytest.raises(ValueError, match="not prefix 5"):
        layout.frames_for_length(layout.seq_length - 1)


def test_validation_lists_every_problem():
    with pytest.raises(ValueError) as error:
        SequenceLayout(text_length=0, num_frames=-1, grid=(2,), text_vocab_size=10, codebook_size=0)
    message = str(error.value)
    for name in ("text_length=0", "num_frames=-1", "grid=(2,)", "codebook_size=0"):
        assert name in message


def test_grid_from_yaml_list_becomes_tuple():
    layout = SequenceLayout(text_length=2, num_frames=1, grid=[2, 2], text_vocab_size=5, codebook_size=4)
    assert layout.grid == (2, 2)
    hash(layout)


def test_assemble_rejects_bad_parts_naming_them():
    layout = make_layout(num_frames=1)
    text = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="codes hold values outside"):
        layout.assemble(text, torch.tensor([1]), torch.full((1, 1, 2, 3), 16), BOI_ID)
    with pytest.raises(ValueError, match="boi_id=25"):
        layout.assemble(text, torch.tensor([1]), torch.zeros(1, 1, 2, 3, dtype=torch.long), 25)
    with pytest.raises(ValueError, match="codes shape"):
        layout.assemble(text, torch.tensor([1]), torch.zeros(1, 2, 2, 3, dtype=torch.long), BOI_ID)
    tokens = layout.assemble(text, torch.tensor([1]), torch.zeros(1, 1, 2, 3, dtype=torch.long), BOI_ID)
    tokens[0, -1] = 2  # a text id where a code belongs
    with pytest.raises(ValueError, match="code positions hold ids"):
        layout.extract_codes(tokens)
