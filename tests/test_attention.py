"""The ways of attending (model/attention.py, model/masks.py): the slot-blocked and FlexAttention paths against the
dense reference, FlexAttention's block tables against the masks, the fused QKV against the separate projections, and a
50-step training run whose losses must not move."""

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from cogvideo_lite.model.attention import fused_qkv
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.masks import FLEX_BLOCK, flex_block_tables, stage_masks, with_text_padding
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME
from cogvideo_lite.model.transformer import Generator, stage_loss

# 5 slots of 1 + 3x3 codes after a prefix of 5: S = 55, small enough for brute force, several slots per tile
LAYOUT = SequenceLayout(text_length=4, num_frames=5, grid=(3, 3), text_vocab_size=20, codebook_size=16)
TEXT_PAD = torch.tensor([[True, True, False, False], [False, False, False, False], [True, True, True, True]])
WINDOW = (1, 1, 0)  # a local temporal window: neighbouring true frames, rows within 1, the same column
STAGES = [IMAGE, KEYFRAME, INTERPOLATE]


def tokens_for(layout: SequenceLayout, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(0, layout.text_vocab_size, (len(TEXT_PAD), layout.text_length), generator=generator)
    codes = torch.randint(0, layout.codebook_size, (len(TEXT_PAD), layout.num_frames, *layout.grid),
                          generator=generator)
    return layout.assemble(text, torch.tensor([5, 6, 7]), codes, 3)


def model_for(window, dtype=torch.float64) -> Generator:
    torch.manual_seed(0)
    model = Generator(GeneratorConfig(dim=32, depth=2, heads=2, temporal_window=window), LAYOUT).to(dtype).eval()
    with torch.no_grad():  # two channels that differ, mixed unevenly
        for block in model.blocks:
            block.attention.temporal_qkv.weight.mul_(-0.7)
            block.attention.mixing.fill_(0.4)
    return model


def forward(model: Generator, backend: str, stage, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the whole sequence (decoding passes over the KV cache: tests/test_transformer.py, test_schedule.py)."""
    model.attention = backend
    with torch.no_grad():
        return model(tokens, TEXT_PAD, stage)


@pytest.mark.parametrize("window", [None, WINDOW])
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("backend", ["slots", "flex"])
def test_backends_equal_the_dense_reference(backend, stage, window):
    layout = LAYOUT.with_frames(1) if stage is IMAGE else LAYOUT
    model = model_for(window)
    tokens = tokens_for(layout)
    reference = forward(model, "dense", stage, tokens)
    torch.testing.assert_close(forward(model, backend, stage, tokens), reference, rtol=0, atol=1e-12)


def test_auto_skips_masked_blocks():
    model = model_for(None)
    assert (model._attention_backend(torch.device("cpu")), model._attention_backend(torch.device("cuda"))) == (
        "slots", "flex")
    model.config = GeneratorConfig(dim=32, depth=2, heads=2, dropout=0.1)
    assert model.train()._attention_backend(torch.device("cuda")) == "slots"  # flex has no dropout
    assert model.eval()._attention_backend(torch.device("cuda")) == "flex"


# ---------------------------------------------------------------------------------------- FlexAttention's block tables
BIG = SequenceLayout(text_length=16, num_frames=5, grid=(8, 8), text_vocab_size=20, codebook_size=16)  # S = 342


@pytest.mark.parametrize("window", [None, (1, 2, 2)])
@pytest.mark.parametrize("stage, channel", [(IMAGE, "spatial"), (KEYFRAME, "spatial"), (KEYFRAME, "temporal"),
                                            (INTERPOLATE, "spatial"), (INTERPOLATE, "temporal")])
@pytest.mark.parametrize("query_start, stop", [(0, None), (17, None), (150, 300)])
def test_flex_tiles_hold_every_visible_pair_and_full_tiles_need_no_mask(stage, channel, window, query_start, stop):
    layout = BIG.with_frames(1) if stage is IMAGE else BIG
    stop = min(stop or layout.seq_length, layout.seq_length)
    text_pad = torch.zeros(4, 16, dtype=torch.bool)
    text_pad[0, :5], text_pad[1, :15], text_pad[2, :] = True, True, True
    rows = getattr(stage_masks(layout, stage, window), channel)[query_start:stop, :stop]
    padded = with_text_padding(rows, text_pad, query_start)[:, 0]  # (B, Q, K)
    partial_count, partial, full_count, full = (t[0, 0] for t in flex_block_tables(
        layout, stage, window, channel, query_start, stop, torch.device("cpu")))
    tiles = torch.zeros(len(partial), partial.shape[1], dtype=torch.long)  # 0 skipped, 1 partial, 2 full
    for row in range(len(partial)):
        tiles[row, partial[row, :partial_count[row]].long()] = 1
        tiles[row, full[row, :full_count[row]].long()] = 2
    expanded = tiles.repeat_interleave(FLEX_BLOCK, 0).repeat_interleave(FLEX_BLOCK, 1)[:rows.shape[0], :rows.shape[1]]
    assert not padded[:, expanded == 0].any()  # nothing visible is skipped, for any sample's padding
    assert padded[:, expanded == 2].all()  # where the kernel leaves the mask out, everything is visible
    if stage is KEYFRAME and query_start == 0:  # causal over slots: the first queries never see the last keys
        assert tiles[0, -1] == 0


def test_flex_attention_on_the_block_mask_equals_the_dense_masks():
    """Eager FlexAttention evaluates the mask_mod on every pair; the block tables are checked above."""
    model = model_for(WINDOW, torch.float32)
    tokens = tokens_for(LAYOUT)
    captured = {}
    model.blocks[1].attention.register_forward_hook(lambda module, args, out: captured.update(masks=args[1:3]))
    forward(model, "flex", INTERPOLATE, tokens)
    spatial, temporal = captured["masks"]
    masks = stage_masks(LAYOUT, INTERPOLATE, WINDOW)
    prefix = LAYOUT.prefix_length
    for mask, expected, first_row in ((spatial, masks.spatial, 0), (temporal, masks.temporal, prefix)):
        sample, query, key = (torch.arange(count) for count in (len(TEXT_PAD), LAYOUT.seq_length - first_row,
                                                                LAYOUT.seq_length))
        every_pair = mask.block_mask.mask_mod(sample[:, None, None], 0, query[None, :, None], key[None, None, :])
        assert torch.equal(every_pair, with_text_padding(expected[first_row:], TEXT_PAD, first_row)[:, 0])


@pytest.mark.slow  # compiles FlexAttention's CPU kernel, which reads the block tables (about a minute)
def test_compiled_flex_attention_equals_dense_on_a_sequence_of_several_tiles():
    import cogvideo_lite.model.attention as attention

    torch.manual_seed(0)
    model = Generator(GeneratorConfig(dim=64, depth=1, heads=2, temporal_window=(1, 2, 2)), BIG).eval()
    text_pad = torch.zeros(2, 16, dtype=torch.bool)
    text_pad[0, :9] = True
    generator = torch.Generator().manual_seed(0)
    tokens = BIG.assemble(torch.randint(0, 20, (2, 16), generator=generator), torch.tensor([5, 6]),
                          torch.randint(0, 16, (2, 5, 8, 8), generator=generator), 3)
    compiled = torch.compile(flex_attention, dynamic=False)
    attention._flex_attention.cache_clear()
    original = attention._flex_attention
    attention._flex_attention = lambda device_type: compiled
    try:
        results = {}
        for backend in ("dense", "flex"):
            model.attention = backend
            with torch.no_grad():
                results[backend] = model(tokens, text_pad, INTERPOLATE)
    finally:
        attention._flex_attention = original
    torch.testing.assert_close(results["flex"], results["dense"], rtol=0, atol=1e-5)


@pytest.mark.slow  # compiles a block on CPU (about a minute)
def test_compiled_blocks_train_as_the_eager_ones():
    tokens = tokens_for(LAYOUT)
    results = []
    for compiled in (False, True):
        model = model_for(None, torch.float32).train()
        model.freeze_spatial()
        if compiled:
            model.compile_blocks()
        loss_slots = KEYFRAME.plan(LAYOUT).loss_slots
        loss = stage_loss(model(tokens, TEXT_PAD, KEYFRAME, LAYOUT.prediction_rows(loss_slots)), tokens, LAYOUT,
                          loss_slots)
        loss.backward()
        results.append([loss] + [p.grad for p in model.parameters() if p.requires_grad])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------- fused QKV
def test_fused_qkv_equals_the_separate_projections_bit_for_bit_and_trains_only_what_requires_grad():
    torch.manual_seed(0)
    spatial, temporal = torch.nn.Linear(64, 192), torch.nn.Linear(64, 192)
    spatial.requires_grad_(False)  # frozen, as in the video stages
    x = torch.randn(2, 37, 64, requires_grad=True)
    fused = fused_qkv(x, spatial, temporal)
    assert torch.equal(fused[0], spatial(x)) and torch.equal(fused[1], temporal(x))
    (fused[0].square().sum() + fused[1].square().sum()).backward()
    assert spatial.weight.grad is None and spatial.bias.grad is None
    found = (x.grad, temporal.weight.grad, temporal.bias.grad)
    expected = torch.autograd.grad(spatial(x).square().sum() + temporal(x).square().sum(),
                                   (x, temporal.weight, temporal.bias))
    for value, reference in zip(found, expected):
        torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------- the losses do not move
@pytest.mark.parametrize("stage", [KEYFRAME, INTERPOLATE])
def test_fifty_training_steps_give_the_same_losses_with_and_without_skipping(stage):
    """The new attention (slot blocks, CPU's "auto") against the dense reference: 50 AdamW steps, float32."""
    tokens = tokens_for(LAYOUT)
    curves = {}
    for backend in ("dense", "slots"):
        model = model_for(WINDOW if stage is INTERPOLATE else None, torch.float32).train()
        model.freeze_spatial()
        model.attention = backend
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        curves[backend] = []
        loss_slots = stage.plan(LAYOUT).loss_slots
        for _ in range(50):
            loss = stage_loss(model(tokens, TEXT_PAD, stage, LAYOUT.prediction_rows(loss_slots)), tokens, LAYOUT,
                              loss_slots)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            curves[backend].append(loss.item())
    assert curves["dense"][-1] < 0.95 * curves["dense"][0]  # it learns
    torch.testing.assert_close(torch.tensor(curves["slots"]), torch.tensor(curves["dense"]), rtol=1e-5, atol=0)
