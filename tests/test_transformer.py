"""Generator: masks respected (brute force over positions), initialisation, KV cache, loss, parameter groups."""

import ast
from pathlib import Path

import pytest
import torch

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.config import GENERATOR_SIZES, GeneratorConfig
from cogvideo_lite.model.masks import stage_masks, with_text_padding
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, stage_named
from cogvideo_lite.model.transformer import Generator, change_weights, stage_loss

LAYOUT = SequenceLayout(text_length=4, num_frames=5, grid=(2, 2), text_vocab_size=20, codebook_size=16)
CONFIG = GeneratorConfig(dim=32, depth=2, heads=2)
BOI_ID = 3
TEXT_PAD = torch.tensor([[True, True, False, False], [False, False, False, False]])


def make_model(config: GeneratorConfig = CONFIG, dtype: torch.dtype = torch.float64, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(config, LAYOUT).to(dtype).eval()


def make_tokens(layout: SequenceLayout, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 20, (2, layout.text_length), generator=generator)
    codes = torch.randint(0, 16, (2, layout.num_frames, *layout.grid), generator=generator)
    return layout.assemble(text, torch.tensor([5, 6]), codes, BOI_ID)


def set_mixing(model: Generator, value: float) -> None:
    with torch.no_grad():
        for block in model.blocks:
            block.attention.mixing.fill_(value)


def reachable(step: torch.Tensor, depth: int) -> torch.Tensor:
    """(S, S) bool: query q depends on token p through at most `depth` attention layers (residual included)."""
    step = step | torch.eye(step.shape[0], dtype=torch.bool)
    reach = torch.eye(step.shape[0], dtype=torch.bool)
    for _ in range(depth):
        reach = (reach.double() @ step.double()) > 0
    return reach


# ------------------------------------------------------------------ masks respected, brute force
CHANNEL_CASES = [(IMAGE, "spatial"), (KEYFRAME, "spatial"), (KEYFRAME, "temporal"), (KEYFRAME, "mixed"),
                 (INTERPOLATE, "spatial"), (INTERPOLATE, "temporal"), (INTERPOLATE, "mixed")]
MIXING_FOR_CHANNEL = {"spatial": 1e4, "temporal": -1e4, "mixed": 0.0}  # sigmoid: exactly 1, 0, 0.5


@pytest.mark.parametrize("stage, channel", CHANNEL_CASES)
def test_changing_a_token_changes_exactly_the_logits_allowed_to_see_it(stage, channel):
    layout = LAYOUT.with_frames(1) if stage is IMAGE else LAYOUT
    model = make_model()
    set_mixing(model, MIXING_FOR_CHANNEL[channel])
    masks = stage_masks(layout, stage)
    step = {"spatial": masks.spatial, "temporal": masks.temporal,
            "mixed": masks.spatial | (masks.temporal if masks.temporal is not None else masks.spatial)}[channel]
    tokens = make_tokens(layout)
    with torch.no_grad():
        reference = model(tokens, TEXT_PAD, stage)
        for position in range(layout.seq_length):
            changed_tokens = tokens.clone()
            changed_tokens[:, position] = (tokens[:, position] + 7) % layout.vocab_size
            difference = (model(changed_tokens, TEXT_PAD, stage) - reference).abs().amax(dim=-1)  # (B, S)
            for sample in range(2):
                allowed = with_text_padding(step, TEXT_PAD[sample:sample + 1])[0, 0]
                expected = reachable(allowed, CONFIG.depth)[:, position]
                assert torch.equal(difference[sample] > 1e-9, expected), (sample, position)
                assert (difference[sample][~expected] == 0).all()


# ------------------------------------------------------------------ initialisation
def test_mixing_starts_at_half_and_temporal_channel_is_a_copy_of_spatial():
    model = make_model(dtype=torch.float32)
    for block in model.blocks:
        attention = block.attention
        assert torch.equal(torch.sigmoid(attention.mixing), torch.full((CONFIG.dim,), 0.5))
        assert torch.equal(attention.temporal_qkv.weight, attention.spatial_qkv.weight)
        assert torch.equal(attention.temporal_qkv.bias, attention.spatial_qkv.bias)
        assert torch.equal(attention.temporal_proj.weight, attention.spatial_proj.weight)
    assert not model.frame_embedding.any()


def test_spatial_share_mixes_the_two_channels_in_that_proportion():
    model = make_model()
    with torch.no_grad():  # a temporal channel unlike the spatial one, so that the two outputs differ
        model.blocks[0].attention.temporal_qkv.weight.mul_(-0.5)
    captured = []
    model.blocks[0].attention.register_forward_hook(lambda module, inputs, output: captured.append(output))
    tokens = make_tokens(LAYOUT)
    for mixing in (1e4, -1e4):  # the spatial channel alone, then the temporal one alone
        set_mixing(model, mixing)
        with torch.no_grad():
            model(tokens, TEXT_PAD, KEYFRAME)
    model.set_spatial_share(0.25)
    quarter = torch.full((CONFIG.dim,), 0.25, dtype=torch.float64)
    assert all(torch.allclose(torch.sigmoid(block.attention.mixing), quarter) for block in model.blocks)
    with torch.no_grad():
        model(tokens, TEXT_PAD, KEYFRAME)
    spatial, temporal, mixed = captured  # the first layer's attention output: its input is the same in all three
    assert not torch.allclose(spatial, temporal)
    torch.testing.assert_close(mixed, 0.25 * spatial + 0.75 * temporal, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="spatial share 1.0: expected a number strictly between 0 and 1"):
        model.set_spatial_share(1.0)


def test_fresh_keyframe_model_equals_image_model_on_frame_zero():
    model = make_model()
    video_tokens = make_tokens(LAYOUT)
    image_length = LAYOUT.with_frames(1).seq_length
    with torch.no_grad():
        image_logits = model(video_tokens[:, :image_length], TEXT_PAD, IMAGE)
        keyframe_logits = model(video_tokens, TEXT_PAD, KEYFRAME)[:, :image_length]
    torch.testing.assert_close(keyframe_logits, image_logits, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ decoding over the static KV cache
def decode_in_chunks(model, layout, stage, tokens, cuts):
    """Prefill positions 0 .. cuts[0] - 1, then decode the chunks between cuts; the logits of every decoded position."""
    tables = model.decode_tables(layout, stage, tokens.device)
    cache = model.new_cache(tables, TEXT_PAD)
    prefill = torch.arange(cuts[0])
    cache.show(prefill)
    model.decode(tokens[:, :cuts[0]], prefill, cache, tables, layout.prefix_length)
    chunks = []
    for start, stop in zip(cuts, cuts[1:]):
        positions = torch.arange(start, stop)
        cache.show(positions)
        chunks.append(model.decode(tokens[:, start:stop], positions, cache, tables))
    return torch.cat(chunks, dim=1), cache


@pytest.mark.parametrize("stage", [IMAGE, KEYFRAME, INTERPOLATE])
def test_decoding_passes_equal_the_uncached_forward(stage):
    layout = LAYOUT.with_frames(1) if stage is IMAGE else LAYOUT
    model = make_model(dtype=torch.float32)
    set_mixing(model, 0.3)  # away from the symmetric start
    tokens = make_tokens(layout)
    known = layout.prefix_length + len(stage.plan(layout).given_slots) * layout.slot_length
    cuts = sorted({known, known + 1, known + 3, known + 4, layout.seq_length - 1, layout.seq_length})
    with torch.no_grad():
        full = model(tokens, TEXT_PAD, stage)
        decoded, cache = decode_in_chunks(model, layout, stage, tokens, cuts)
    torch.testing.assert_close(decoded, full[:, known:], rtol=0, atol=1e-5)
    assert cache.visible[:, layout.text_length:].all() and torch.equal(cache.visible[:, :layout.text_length],
                                                                       ~TEXT_PAD)


def test_a_hidden_position_is_seen_by_its_own_query_only():
    """A stand-in fed at a position without `show` is seen by its own query only: a later query sees what it would
    see if that position were never fed, until the true token is fed there and shown."""
    model, stage = make_model(), KEYFRAME
    tokens = make_tokens(LAYOUT)
    known = LAYOUT.prefix_length + LAYOUT.slot_length  # frame 0 given
    tables = model.decode_tables(LAYOUT, stage, tokens.device)
    stand_in, later = torch.tensor([known + 2]), torch.tensor([known + 3])
    with torch.no_grad():
        full = model(tokens, TEXT_PAD, stage)
        _, cache = decode_in_chunks(model, LAYOUT, stage, tokens, [known, known + 2])
        model.decode(tokens[:, known:known + 1], stand_in, cache, tables)  # a wrong token at known + 2, hidden
        cache.show(later)
        hidden = model.decode(tokens[:, known + 3:known + 4], later, cache, tables)[:, 0]
        cache.show(stand_in)
        model.decode(tokens[:, known + 2:known + 3], stand_in, cache, tables)  # the true token, shown
        seen = model.decode(tokens[:, known + 3:known + 4], later, cache, tables)[:, 0]
        blind = model.new_cache(tables, TEXT_PAD)  # every position up to known + 3 but known + 2, fed and shown
        positions = torch.tensor([p for p in range(known + 4) if p != known + 2])
        blind.show(positions)
        never_fed = model.decode(tokens[:, positions], positions, blind, tables, LAYOUT.prefix_length)[:, -1]
    torch.testing.assert_close(hidden, never_fed, rtol=0, atol=1e-10)
    torch.testing.assert_close(seen, full[:, known + 3], rtol=0, atol=1e-10)
    assert not torch.allclose(hidden, seen)


# ------------------------------------------------------------------ loss and training
def test_stage_loss_equals_per_code_cross_entropy():
    model = make_model()
    tokens = make_tokens(LAYOUT)
    loss_slots = INTERPOLATE.plan(LAYOUT).loss_slots
    rows = LAYOUT.prediction_rows(loss_slots)
    with torch.no_grad():
        logits = model(tokens, TEXT_PAD, INTERPOLATE)
        at_rows = model(tokens, TEXT_PAD, INTERPOLATE, rows)
    # the head at the loss rows alone gives those rows of the whole sequence's logits
    assert rows.tolist() == [p for slot in loss_slots for p in range(*LAYOUT.prediction_slice(slot).indices(10**6))]
    torch.testing.assert_close(at_rows, logits[:, rows], rtol=0, atol=1e-6)
    terms = []
    for sample in range(2):
        for slot in loss_slots:
            for index in range(LAYOUT.tokens_per_frame):
                target_position = LAYOUT.slot_start(slot) + 1 + index
                log_probabilities = logits[sample, target_position - 1].log_softmax(dim=-1)
                terms.append(-log_probabilities[tokens[sample, target_position] - LAYOUT.image_offset])
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(stage_loss(at_rows, tokens, LAYOUT, loss_slots), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not image codes"):
        stage_loss(at_rows, tokens.roll(1, dims=1), LAYOUT, loss_slots)
    with pytest.raises(ValueError, match="at the loss rows expected"):
        stage_loss(logits, tokens, LAYOUT, loss_slots)


def test_change_weights_mark_codes_that_differ_from_the_frame_before_in_time():
    codes = torch.zeros(1, 5, 2, 2, dtype=torch.long)  # true frames 0..4, all code 0 ...
    codes[0, 1, 0, 1] = 4  # ... but frame 1 at (0, 1)
    codes[0, 3, 1, 1] = 9  # and frame 3 at (1, 1)
    text, fps = torch.zeros(1, LAYOUT.text_length, dtype=torch.long), torch.tensor([5])
    keyframe = KEYFRAME.plan(LAYOUT, learn_first_frame=True)  # slots = true frames 0..4
    weights = change_weights(LAYOUT.assemble(text, fps, codes, BOI_ID), LAYOUT, keyframe, 3.0).view(5, 4)
    expected = torch.ones(5, 4)
    expected[1, 1] = expected[2, 1] = 3  # (0, 1) changes into frame 1 and back in frame 2
    expected[3, 3] = expected[4, 3] = 3
    torch.testing.assert_close(weights, expected)
    interpolate = INTERPOLATE.plan(LAYOUT)  # slots hold true frames 0, 2, 4, 1, 3; loss on 1 and 3
    slot_order = codes[:, list(interpolate.frame_positions)]
    weights = change_weights(LAYOUT.assemble(text, fps, slot_order, BOI_ID), LAYOUT, interpolate, 3.0).view(2, 4)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 3, 1, 1], [1, 1, 1, 3]]))  # frame 1 vs 0, 3 vs 2


def test_weighted_stage_loss_is_the_weighted_mean_of_per_code_cross_entropy():
    model = make_model()
    tokens = make_tokens(LAYOUT)
    loss_slots = KEYFRAME.plan(LAYOUT).loss_slots
    with torch.no_grad():
        logits = model(tokens, TEXT_PAD, KEYFRAME)
        at_rows = model(tokens, TEXT_PAD, KEYFRAME, LAYOUT.prediction_rows(loss_slots))
    weights = torch.rand(2, len(loss_slots) * LAYOUT.tokens_per_frame, dtype=torch.float64) + 0.5
    terms = torch.stack([torch.stack([-logits[sample, LAYOUT.slot_start(slot) + index].log_softmax(-1)[
        tokens[sample, LAYOUT.slot_start(slot) + 1 + index] - LAYOUT.image_offset]
        for slot in loss_slots for index in range(LAYOUT.tokens_per_frame)]) for sample in range(2)])  # (B, N)
    expected = (terms * weights).sum() / weights.sum()
    torch.testing.assert_close(stage_loss(at_rows, tokens, LAYOUT, loss_slots, weights), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(stage_loss(at_rows, tokens, LAYOUT, loss_slots, torch.ones_like(weights)),
                               stage_loss(at_rows, tokens, LAYOUT, loss_slots), rtol=0, atol=1e-12)


def train_steps(model: Generator, parameters, tokens: torch.Tensor, stage: str, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    loss_slots = stage.plan(LAYOUT).loss_slots
    losses = []
    for _ in range(steps):
        loss = stage_loss(model(tokens, TEXT_PAD, stage, LAYOUT.prediction_rows(loss_slots)), tokens, LAYOUT,
                          loss_slots)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_loss_falls_when_overfitting_one_batch():
    model = make_model(dtype=torch.float32).train()
    losses = train_steps(model, model.parameters(), make_tokens(LAYOUT), KEYFRAME, 50)
    assert losses[-1] < 0.3 * losses[0]


def test_video_stage_training_leaves_spatial_parameters_bit_identical():
    model = make_model(dtype=torch.float32).train()
    spatial_before = {name: tensor.clone() for name, tensor in model.state_dict().items()
                      if name in set(model.spatial_parameter_names())}
    temporal_before = model.temporal_state_dict()
    model.freeze_spatial()
    parameters = dict(model.named_parameters())
    train_steps(model, [parameters[name] for name in model.temporal_parameter_names()],
                make_tokens(LAYOUT), INTERPOLATE, 3)
    for name, before in spatial_before.items():
        assert torch.equal(parameters[name], before), name
        assert parameters[name].grad is None, name
    for name, before in temporal_before.items():
        assert not torch.equal(parameters[name], before), name


def test_parameter_groups_partition_the_model_and_temporal_state_round_trips():
    model = make_model()
    temporal, spatial = model.temporal_parameter_names(), model.spatial_parameter_names()
    assert sorted(temporal + spatial) == sorted(name for name, _ in model.named_parameters())
    assert set(temporal) == {"frame_embedding"} | {
        f"blocks.{layer}.attention.{part}" for layer in range(CONFIG.depth)
        for part in ("temporal_qkv.weight", "temporal_qkv.bias", "temporal_proj.weight", "temporal_proj.bias",
                     "mixing")}
    with torch.no_grad():
        model.frame_embedding.normal_()
    other = make_model(seed=5)
    other.load_temporal_state_dict(model.temporal_state_dict())
    for name, tensor in model.temporal_state_dict().items():
        assert torch.equal(other.temporal_state_dict()[name], tensor)
    with pytest.raises(KeyError, match="missing \\['frame_embedding'\\]"):
        other.load_temporal_state_dict({name: tensor for name, tensor in model.temporal_state_dict().items()
                                        if name != "frame_embedding"})


def test_activation_checkpointing_gives_the_same_gradients():
    tokens = make_tokens(LAYOUT)
    gradients = []
    for checkpointing in (False, True):
        config = GeneratorConfig(dim=32, depth=2, heads=2, activation_checkpointing=checkpointing)
        model = make_model(config).train()
        loss = stage_loss(model(tokens, TEXT_PAD, KEYFRAME, LAYOUT.prediction_rows((1, 2, 3, 4))), tokens, LAYOUT,
                          (1, 2, 3, 4))
        loss.backward()
        gradients.append([parameter.grad for parameter in model.parameters()])
    for plain, recomputed in zip(*gradients):
        torch.testing.assert_close(recomputed, plain, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ configuration and imports
def test_config_validation_names_every_bad_key():
    with pytest.raises(ValueError) as error:
        GeneratorConfig(dim=30, depth=0, heads=4, dropout=1.5, temporal_window=(1, 2))
    message = str(error.value)
    for fragment in ("depth=0", "dropout=1.5", "temporal_window=(1, 2)"):
        assert fragment in message
    with pytest.raises(ValueError, match="dim=30 is not divisible by heads=4"):
        GeneratorConfig(dim=30, depth=1, heads=4)
    assert GeneratorConfig(dim=8, depth=1, heads=2, temporal_window=[1, 2, 2]).temporal_window == (1, 2, 2)
    assert set(GENERATOR_SIZES) == {"tiny", "small", "base"}
    with pytest.raises(ValueError, match="max_frames=33"):
        Generator(CONFIG, LAYOUT.with_frames(34))


def test_model_package_imports_only_itself():
    package = Path(__file__).resolve().parents[1] / "cogvideo_lite" / "model"
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                inside = name.startswith("cogvideo_lite.model")
                assert inside or not name.startswith(("cogvideo_lite", "tokenizer")), (source.name, name)
