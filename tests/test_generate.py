"""Sampling knobs against closed forms, and generation loops: cached == uncached, guidance, interpolation rounds."""

import pytest
import torch

from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.sample.generate import Condition, Sampler, generate_image, generate_keyframes, interpolate
from cogvideo_lite.sample.knobs import SamplingKnobs, code_noise, filter_logits, guided_logits, sample_token
from cogvideo_lite.model.transformer import Generator

LAYOUT = SequenceLayout(text_length=4, num_frames=5, grid=(2, 2), text_vocab_size=20, codebook_size=16)
BOI_ID = 3
TEXT_IDS = torch.tensor([[0, 0, 11, 12], [13, 14, 15, 16]])
TEXT_PAD = torch.tensor([[True, True, False, False], [False, False, False, False]])
FPS_IDS = torch.tensor([5, 6])
FIRST_FRAMES = torch.tensor([[[[1, 2], [3, 4]]], [[[5, 6], [7, 8]]]])  # (B, 1, h, w)
CONDITION = Condition(TEXT_IDS, TEXT_PAD, FPS_IDS, BOI_ID)


def make_model(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    model = Generator(GeneratorConfig(dim=32, depth=2, heads=2), LAYOUT).double().eval()
    with torch.no_grad():  # far from initialisation: text, frame embedding and both channels all matter
        for parameter in model.parameters():
            parameter.normal_(std=0.5 if parameter.dim() > 1 else 1.0)
    return model


# ------------------------------------------------------------------ sampling
def random_logits(seed: int = 0, shape: tuple[int, int] = (64, 16)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_top_k_one_and_tiny_top_p_are_argmax():
    logits = random_logits()
    noise = code_noise(*logits.shape, torch.Generator().manual_seed(0))
    assert torch.equal(sample_token(logits, SamplingKnobs(top_k=1), None), logits.argmax(dim=-1))
    assert torch.equal(sample_token(logits, SamplingKnobs(top_p=1e-6), noise), logits.argmax(dim=-1))
    assert torch.equal(sample_token(logits, SamplingKnobs(temperature=1e-4), noise), logits.argmax(dim=-1))


def test_a_draw_is_torch_multinomial_with_the_same_random_numbers():
    logits = random_logits(shape=(16, 1024))
    knobs = SamplingKnobs(top_k=20)
    probabilities = filter_logits(logits, 20, 1.0).softmax(dim=-1)
    for seed in range(20):
        expected = torch.multinomial(probabilities, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
        noise = code_noise(*logits.shape, torch.Generator().manual_seed(seed))
        assert torch.equal(sample_token(logits, knobs, noise), expected)


def test_filters_keep_exactly_the_brute_force_sets():
    logits = random_logits(shape=(8, 16))
    kept_k = torch.isfinite(filter_logits(logits, top_k=5, top_p=1.0))
    kept_p = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.7))
    probabilities = logits.softmax(dim=-1)
    for row in range(8):
        order = logits[row].argsort(descending=True).tolist()
        assert set(torch.nonzero(kept_k[row])[:, 0].tolist()) == set(order[:5])
        mass, nucleus = 0.0, []
        for code in order:  # smallest most-likely set whose mass reaches 0.7
            nucleus.append(code)
            mass += probabilities[row, code].item()
            if mass >= 0.7:
                break
        assert set(torch.nonzero(kept_p[row])[:, 0].tolist()) == set(nucleus)


def test_sampling_frequencies_follow_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(40000, 1)
    for temperature in (0.5, 2.0):
        noise = code_noise(*logits.shape, torch.Generator().manual_seed(1))
        draws = sample_token(logits, SamplingKnobs(temperature=temperature), noise)
        frequencies = torch.bincount(draws, minlength=4).double() / draws.numel()
        expected = (logits[0].double() / temperature).softmax(dim=-1)
        torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.01)


def test_guidance_formula_is_exact_at_zero_and_one():
    conditional, unconditional = random_logits(1), random_logits(2)
    assert torch.equal(guided_logits(conditional, unconditional, 1.0), conditional)
    assert torch.equal(guided_logits(conditional, unconditional, 0.0), unconditional)
    torch.testing.assert_close(guided_logits(conditional, unconditional, 3.0),
                               unconditional + 3.0 * (conditional - unconditional))


def test_knob_validation_names_the_knob():
    with pytest.raises(ValueError, match="temperature=0"):
        SamplingKnobs(temperature=0)
    with pytest.raises(ValueError, match="top_k=0"):
        SamplingKnobs(top_k=0)
    with pytest.raises(ValueError, match="top_p=1.5"):
        SamplingKnobs(top_p=1.5)
    with pytest.raises(ValueError, match="guidance_scale=-1"):
        SamplingKnobs(guidance_scale=-1)
    with pytest.raises(ValueError, match="top_p=0"):
        SamplingKnobs(top_p=0)


# ------------------------------------------------------------------ generation
@pytest.mark.parametrize("knobs", [SamplingKnobs(), SamplingKnobs(top_k=4, top_p=0.9, guidance_scale=3.0)])
def test_cached_and_uncached_generation_give_identical_codes(knobs):
    model = make_model()
    for use_cache in (True, False):
        image = generate_image(model, CONDITION, Sampler(knobs, seed=1, use_cache=use_cache))
        keys = generate_keyframes(model, CONDITION, image, Sampler(knobs, seed=2, use_cache=use_cache))
        between = interpolate(model, CONDITION, keys, Sampler(knobs, seed=3, use_cache=use_cache))
        if use_cache:
            cached = (image, keys, between)
    for with_cache, without_cache in zip(cached, (image, keys, between)):
        assert torch.equal(with_cache, without_cache)
    assert cached[0].shape == (2, 1, 2, 2) and cached[1].shape == (2, 5, 2, 2) and cached[2].shape == (2, 9, 2, 2)


def test_generation_is_reproducible_from_the_seed_and_depends_on_it():
    model = make_model()
    runs = [generate_keyframes(model, CONDITION, FIRST_FRAMES, Sampler(SamplingKnobs(), seed)) for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert torch.equal(runs[0][:, :1], FIRST_FRAMES)


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional():
    model = make_model()

    def generate(text_pad: torch.Tensor, scale: float) -> torch.Tensor:
        return generate_keyframes(model, Condition(TEXT_IDS, text_pad, FPS_IDS, BOI_ID), FIRST_FRAMES,
                                  Sampler(SamplingKnobs(guidance_scale=scale), seed=4))
    conditional = generate(TEXT_PAD, 1.0)
    assert torch.equal(generate(TEXT_PAD, 1.0), conditional)
    no_text = torch.ones_like(TEXT_PAD)
    unconditional = generate(no_text, 1.0)
    assert torch.equal(generate(TEXT_PAD, 0.0), unconditional)  # guided batch: the all-pad half alone
    assert not torch.equal(conditional, unconditional)
    assert not torch.equal(generate(TEXT_PAD, 5.0), conditional)


def test_interpolation_rounds_keep_given_codes_and_go_5_9_17_33():
    model = make_model()
    knobs = SamplingKnobs(top_k=8)
    frames = generate_keyframes(model, CONDITION, FIRST_FRAMES, Sampler(knobs, seed=0))
    for round_index, expected_frames in enumerate((9, 17, 33)):
        result = interpolate(model, CONDITION, frames, Sampler(knobs, seed=round_index))
        assert result.shape == (2, expected_frames, 2, 2)
        assert torch.equal(result[:, ::2], frames)
        assert ((result >= 0) & (result < LAYOUT.codebook_size)).all()
        frames = result


def test_interpolation_of_one_sample_matches_its_place_in_a_batch():
    """Groups of all samples form one batch; each group sees only its own sample's text and frames."""
    model = make_model()
    frames = generate_keyframes(model, CONDITION, FIRST_FRAMES, Sampler(SamplingKnobs()))
    greedy = Sampler(SamplingKnobs(top_k=1))
    batched = interpolate(model, CONDITION, frames, greedy)
    alone = interpolate(model, CONDITION.rows(torch.tensor([1])), frames[1:], greedy)
    assert torch.equal(batched[1:], alone)


def test_bad_generation_requests_fail_clearly():
    model = make_model()
    with pytest.raises(ValueError, match="cannot be cut into groups of 3"):
        interpolate(model, CONDITION, torch.zeros(2, 4, 2, 2, dtype=torch.long), Sampler(SamplingKnobs()))
    with pytest.raises(ValueError, match="0 <= given < num_frames"):
        generate_keyframes(model, CONDITION, torch.zeros(2, 5, 2, 2, dtype=torch.long), Sampler(SamplingKnobs()))
    with pytest.raises(ValueError, match="codes hold values outside"):
        generate_keyframes(model, CONDITION, FIRST_FRAMES + 16, Sampler(SamplingKnobs()))
    model.train()
    with pytest.raises(ValueError, match="model.eval"):
        generate_image(model, CONDITION, Sampler(SamplingKnobs()))


def test_keyframes_from_nothing_continue_like_keyframes_from_their_own_first_frame():
    """k = 0 given frames (a model trained with learn_first_frame): greedy decoding that starts at frame 0 gives the
    frames 1..4 that greedy decoding gives when handed that frame 0; cached equals uncached."""
    model, greedy = make_model(), Sampler(SamplingKnobs(top_k=1))
    none = torch.zeros(2, 0, 2, 2, dtype=torch.long)
    whole = generate_keyframes(model, CONDITION, none, greedy)
    assert whole.shape == (2, 5, 2, 2)
    continued = generate_keyframes(model, CONDITION, whole[:, :1], greedy)
    assert torch.equal(whole, continued)
    sampled = [generate_keyframes(model, CONDITION, none, Sampler(SamplingKnobs(), seed=4, use_cache=cache))
               for cache in (True, False)]
    assert torch.equal(*sampled)
