"""Stage masks: frame-level tables read back from the token-level masks, prefix and padding rules, local window."""

import pytest
import torch

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.masks import stage_masks, with_text_padding
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, stage_named

LAYOUT = SequenceLayout(text_length=4, num_frames=5, grid=(2, 2), text_vocab_size=20, codebook_size=16)

# Rows and columns are TRUE frame indices (model/masks.py).
INTERPOLATE_TEMPORAL = ["F.F.F",
                        "FCF.F",
                        "F.F.F",
                        "FFFCF",
                        "F.F.F"]
KEYFRAME_TEMPORAL = ["C....",
                     "FC...",
                     "FFC..",
                     "FFFC.",
                     "FFFFC"]


def frame_table(mask: torch.Tensor, layout: SequenceLayout, frame_positions: tuple[int, ...]) -> list[str]:
    """Reduce an (S, S) token mask to F / C / . per (query frame, key frame), ordered by true frame."""
    n = layout.slot_length
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool))
    slot_of_frame = {frame: slot for slot, frame in enumerate(frame_positions)}
    rows = []
    for query_frame in range(layout.num_frames):
        row = ""
        for key_frame in range(layout.num_frames):
            block = mask[layout.slot_slice(slot_of_frame[query_frame]), layout.slot_slice(slot_of_frame[key_frame])]
            row += "F" if block.all() else "." if not block.any() else "C" if torch.equal(block, lower) else "?"
        rows.append(row)
    return rows


@pytest.mark.parametrize("stage, expected", [(INTERPOLATE, INTERPOLATE_TEMPORAL), (KEYFRAME, KEYFRAME_TEMPORAL)])
def test_temporal_tables(stage, expected):
    plan = stage.plan(LAYOUT)
    assert frame_table(stage_masks(LAYOUT, stage).temporal, LAYOUT, plan.frame_positions) == expected


def test_interpolate_slots_hold_even_then_odd_frames():
    plan = INTERPOLATE.plan(LAYOUT)
    assert plan.frame_positions == (0, 2, 4, 1, 3)
    assert plan.given_slots == (0, 1, 2) and plan.loss_slots == (3, 4)
    assert KEYFRAME.plan(LAYOUT).loss_slots == (1, 2, 3, 4)
    assert IMAGE.plan(LAYOUT.with_frames(1)).loss_slots == (0,)


@pytest.mark.parametrize("stage, own_slot", [(INTERPOLATE, "FCFCF"), (KEYFRAME, "CCCCC"), (IMAGE, "C")])
def test_spatial_channel_sees_its_own_slot_only(stage, own_slot):
    layout = LAYOUT.with_frames(1) if stage is IMAGE else LAYOUT
    plan = stage.plan(layout)
    table = frame_table(stage_masks(layout, stage).spatial, layout, plan.frame_positions)
    expected = ["".join(own_slot[frame] if key == frame else "." for key in range(layout.num_frames))
                for frame in range(layout.num_frames)]
    assert table == expected


def test_generalises_to_seven_slot_interpolation():
    layout = LAYOUT.with_frames(7)
    plan = INTERPOLATE.plan(layout)
    assert plan.frame_positions == (0, 2, 4, 6, 1, 3, 5)
    table = frame_table(stage_masks(layout, INTERPOLATE).temporal, layout, plan.frame_positions)
    assert table == ["F.F.F.F", "FCF.F.F", "F.F.F.F", "FFFCF.F", "F.F.F.F", "FFFFFCF", "F.F.F.F"]


@pytest.mark.parametrize("stage", [INTERPOLATE, KEYFRAME])
def test_prefix_sees_prefix_only_and_frames_see_prefix(stage):
    prefix = LAYOUT.prefix_length
    for mask in (stage_masks(LAYOUT, stage).spatial, stage_masks(LAYOUT, stage).temporal):
        assert mask[:prefix, :prefix].all()
        assert not mask[:prefix, prefix:].any()
        assert mask[prefix:, :prefix].all()


def test_text_padding_hides_pad_keys_and_pad_queries_see_themselves():
    text_pad = torch.tensor([[True, True, False, False], [False, False, False, False]])
    masks = stage_masks(LAYOUT, KEYFRAME)
    padded = with_text_padding(masks.temporal, text_pad)  # (B, 1, S, S)
    assert padded.shape == (2, 1, LAYOUT.seq_length, LAYOUT.seq_length)
    assert not padded[0, 0, 2:, :2].any()  # nobody else sees the pads
    for pad in (0, 1):
        expected_row = torch.zeros(LAYOUT.seq_length, dtype=torch.bool)
        expected_row[pad] = True
        assert torch.equal(padded[0, 0, pad], expected_row)
    assert torch.equal(padded[1, 0], masks.temporal)
    assert padded.any(dim=-1).all()  # no empty row, so no NaN


def test_padding_of_row_chunks_equals_chunk_of_padded_mask():
    text_pad = torch.tensor([[True, False, False, False]])
    full = with_text_padding(stage_masks(LAYOUT, INTERPOLATE).spatial, text_pad)
    for start, stop in ((0, 3), (0, 12), (3, 9), (12, 13), (20, 30)):
        rows = stage_masks(LAYOUT, INTERPOLATE).spatial[start:stop, :stop]
        assert torch.equal(with_text_padding(rows, text_pad, start), full[:, :, start:stop, :stop])


def test_local_window_matches_brute_force():
    layout = SequenceLayout(text_length=2, num_frames=5, grid=(3, 3), text_vocab_size=10, codebook_size=8)
    window = (1, 1, 0)
    plan = INTERPOLATE.plan(layout)
    plain = stage_masks(layout, INTERPOLATE).temporal
    windowed = stage_masks(layout, INTERPOLATE, window).temporal
    n = layout.slot_length
    for query in range(layout.prefix_length, layout.seq_length):
        for key in range(layout.seq_length):
            expected = bool(plain[query, key])
            query_slot, query_within = divmod(query - layout.prefix_length, n)
            key_slot, key_within = divmod(key - layout.prefix_length, n)
            if key >= layout.prefix_length and key_slot != query_slot:
                frames_apart = abs(plan.frame_positions[query_slot] - plan.frame_positions[key_slot])
                expected &= frames_apart <= 1
                query_row, query_col = divmod(max(query_within - 1, 0), 3)  # a BOI stands at (0, 0)
                key_row, key_col = divmod(max(key_within - 1, 0), 3)
                expected &= abs(query_row - key_row) <= 1 and query_col == key_col
            assert bool(windowed[query, key]) == expected, (query, key)


def test_stage_frame_counts_are_checked():
    with pytest.raises(ValueError, match="image stage uses a layout of 1 frame"):
        IMAGE.plan(LAYOUT)
    with pytest.raises(ValueError, match="odd number >= 3"):
        INTERPOLATE.plan(LAYOUT.with_frames(4))
    with pytest.raises(ValueError, match="unknown stage 'video'"):
        stage_named("video")
