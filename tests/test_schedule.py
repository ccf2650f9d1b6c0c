"""Decoding schedules: the pass counts that each mode's formula predicts, every code drawn once with its query's keys
in place, and the codes: the exact wavefront under a local temporal window draws the codes of one-code-per-pass
decoding bit for bit (cached and uncached, with guidance, top-k / top-p and an image expert), and the diagonal mode
with the grid's own lags is sequential decoding again."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.masks import stage_masks
from cogvideo_lite.model.stages import INTERPOLATE, KEYFRAME
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.sample.generate import Condition, Sampler, generate_image, generate_keyframes, interpolate
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.schedule import DecodeMode, parse_mode, schedule

LAYOUT = SequenceLayout(text_length=4, num_frames=5, grid=(3, 4), text_vocab_size=20, codebook_size=16)
BOI_ID = 3
CONDITION = Condition(torch.tensor([[0, 0, 11, 12], [13, 14, 15, 16]]),
                      torch.tensor([[True, True, False, False], [False, False, False, False]]),
                      torch.tensor([5, 6]), BOI_ID)
WINDOWS = [(1, 0, 0), (1, 1, 1), (2, 1, 2), (1, 2, 0), (0, 1, 1), (4, 2, 3), (2, 5, 5)]


def exact_passes(window: tuple[int, int, int] | None, generated: int, distance: int) -> int:
    """The exact wavefront's passes for `generated` slots, consecutive ones `distance` true frames apart: the first
    slot takes n passes, and each next slot starts s passes after the one before, where s is the raster index + 1 of
    the last code its BOI sees in that slot (the BOI stands at row 0, column 0); without a window s = n."""
    height, width = LAYOUT.grid
    n = height * width
    if window is None:
        return generated * n
    frames, rows, cols = window
    lag = min(rows, height - 1) * width + min(cols, width - 1) + 1 if distance <= frames else 0
    return n + (generated - 1) * lag


def diagonal_passes(row_lag: int, frame_lead: int, generated: int) -> int:
    """Slot g starts at g*F*R and its code (r, c) R*r + c passes later: the last code at (G-1)*F*R + (h-1)*R + w - 1."""
    height, width = LAYOUT.grid
    return (generated - 1) * frame_lead * row_lag + (height - 1) * row_lag + width


# ------------------------------------------------------------------ pass counts
@pytest.mark.parametrize("window", [None] + WINDOWS)
def test_exact_passes_follow_the_window(window):
    n = LAYOUT.tokens_per_frame
    for given in (0, 1, 3):
        plan = schedule(LAYOUT, KEYFRAME, window, given, DecodeMode("exact"))
        assert len(plan.passes) == exact_passes(window, LAYOUT.num_frames - given, 1), (window, given)
        assert plan.codes == (LAYOUT.num_frames - given) * n
    interpolation = schedule(LAYOUT, INTERPOLATE, window, 3, DecodeMode("exact"))  # slots hold frames 1 and 3
    assert len(interpolation.passes) == exact_passes(window, 2, 2)
    assert len(schedule(LAYOUT, KEYFRAME, window, 0, DecodeMode("sequential")).passes) == LAYOUT.num_frames * n


@pytest.mark.parametrize("row_lag, frame_lead", [(1, 1), (2, 1), (1, 3), (2, 2), (3, 1), (4, 2)])
def test_diagonal_passes_follow_the_lags(row_lag, frame_lead):
    mode = parse_mode(f"diagonal-{row_lag}-{frame_lead}")
    assert len(schedule(LAYOUT, KEYFRAME, None, 0, mode).passes) == diagonal_passes(row_lag, frame_lead, 5)
    assert len(schedule(LAYOUT, INTERPOLATE, None, 3, mode).passes) == diagonal_passes(row_lag, frame_lead, 2)


@pytest.mark.parametrize("mode, window", [(DecodeMode("exact"), window) for window in WINDOWS]
                         + [(DecodeMode("sequential"), (1, 1, 1)), (parse_mode("diagonal-2-1"), None)])
def test_every_code_is_drawn_once_after_everything_its_query_sees(mode, window):
    """Each code once; a query holds its true token or a stand-in that stays hidden; in exact modes every key a
    query sees (either channel) is fed with its true token and shown in that pass or before."""
    for stage, given in ((KEYFRAME, 0), (KEYFRAME, 2), (INTERPOLATE, 3)):
        plan = schedule(LAYOUT, stage, window, given, mode)
        masks = stage_masks(LAYOUT, stage, window)
        sees = masks.spatial | masks.temporal
        shown, drawn = set(range(plan.known_length)), set(range(plan.known_length))
        drawn |= {LAYOUT.slot_start(slot) for slot in range(given, LAYOUT.num_frames)}  # the BOIs
        orders = []
        for step in plan.passes:
            assert set(step.shown) <= drawn and set(step.sources) <= drawn
            shown |= set(step.shown)
            for index, target in zip(step.draws, step.targets):
                query = step.positions[index]
                assert target == query + 1 and target not in drawn
                if mode.is_exact:
                    assert step.sources[index] == query
                    assert set(torch.nonzero(sees[query])[:, 0].tolist()) <= shown, (query, step)
            drawn |= set(step.targets)
            orders += step.order
        assert sorted(orders) == list(range((LAYOUT.num_frames - given) * LAYOUT.tokens_per_frame))
        assert drawn == set(range(LAYOUT.seq_length))


def test_modes_are_parsed_and_refused_by_name():
    assert parse_mode("diagonal-2-3") == DecodeMode("diagonal", 2, 3) and str(parse_mode("diagonal-2-3")) == \
        "diagonal-2-3"
    assert parse_mode("exact").is_exact and parse_mode("sequential").is_exact and not parse_mode("diagonal-1-1").is_exact
    for bad in ("fast", "diagonal-0-1", "diagonal-2", "Exact", 3, None):
        with pytest.raises(ValueError, match="expected sequential, exact, or diagonal-R-F"):
            parse_mode(bad)


# ------------------------------------------------------------------ the codes
def windowed_model(window: tuple[int, int, int] | None, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    model = Generator(GeneratorConfig(dim=32, depth=2, heads=2, temporal_window=window), LAYOUT).double().eval()
    with torch.no_grad():  # far from initialisation, yet sampling stays random: all 16 codes come up
        for parameter in model.parameters():
            parameter.normal_(std=0.2)
    return model


@pytest.mark.parametrize("window", [(1, 1, 1), (2, 0, 2), (1, 2, 0)])
def test_exact_passes_fed_the_true_tokens_give_the_logits_of_the_whole_sequence(window):
    """Teacher forcing: with every token known, each query of an exact schedule, fed in its pass over the static
    cache, has the logits the uncached forward gives its position."""
    model = windowed_model(window)
    tokens = LAYOUT.assemble(CONDITION.text_ids, CONDITION.fps_ids,
                             torch.randint(0, 16, (2, 5, *LAYOUT.grid), generator=torch.Generator().manual_seed(0)),
                             BOI_ID)
    for stage, given in ((KEYFRAME, 0), (KEYFRAME, 1), (INTERPOLATE, 3)):
        plan = schedule(LAYOUT, stage, window, given, DecodeMode("exact"))
        tables = model.decode_tables(LAYOUT, stage, tokens.device)
        cache = model.new_cache(tables, CONDITION.text_pad)
        with torch.no_grad():
            full = model(tokens, CONDITION.text_pad, stage)
            known = torch.arange(plan.known_length)
            cache.show(known)
            model.decode(tokens[:, known], known, cache, tables, LAYOUT.prefix_length)
            for step in plan.passes:
                positions = torch.tensor(step.positions)
                cache.show(torch.tensor(step.shown))
                logits = model.decode(tokens[:, positions], positions, cache, tables)
                torch.testing.assert_close(logits, full[:, positions], rtol=0, atol=1e-10)


def run_all(model: Generator, knobs: SamplingKnobs, use_cache: bool, expert: Generator | None = None):
    first = generate_image(model, CONDITION, Sampler(knobs, 1, use_cache, expert))
    keys = generate_keyframes(model, CONDITION, first, Sampler(knobs, 2, use_cache, expert))
    from_nothing = generate_keyframes(model, CONDITION, first[:, :0], Sampler(knobs, 3, use_cache, expert))
    between = interpolate(model, CONDITION, keys, Sampler(knobs, 4, use_cache, expert))
    return first, keys, from_nothing, between


KNOBS = [SamplingKnobs(), SamplingKnobs(top_k=5, top_p=0.9, guidance_scale=2.5, temperature=0.8)]


@pytest.mark.parametrize("window, knobs", list(itertools.product([(1, 1, 1), (2, 0, 2)], KNOBS)))
def test_the_wavefront_draws_the_codes_of_one_code_per_pass(window, knobs):
    model = windowed_model(window)
    runs = {(mode, cache): run_all(model, replace(knobs, decode=mode), cache)
            for mode in ("sequential", "exact") for cache in (True, False)}
    reference = runs["sequential", True]
    for key, codes in runs.items():
        assert all(torch.equal(a, b) for a, b in zip(codes, reference)), key
    assert len(schedule(LAYOUT, KEYFRAME, window, 1, DecodeMode("exact")).passes) < 4 * LAYOUT.tokens_per_frame


def test_the_wavefront_with_an_image_expert_draws_the_codes_of_one_code_per_pass():
    model, expert = windowed_model((1, 1, 1)), windowed_model(None, seed=1)
    runs = [run_all(model, SamplingKnobs(top_k=6, expert_weight=0.7, decode=mode), cache, expert)
            for mode in ("sequential", "exact") for cache in (True, False)]
    for codes in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(codes, runs[0]))
    alone = run_all(model, SamplingKnobs(top_k=6), True)
    assert not torch.equal(alone[1], runs[0][1])  # the expert took part


def test_diagonal_with_the_grids_own_lags_is_sequential_and_other_lags_are_not():
    model = windowed_model(None)
    height, width = LAYOUT.grid
    knobs = SamplingKnobs(top_k=5)
    sequential = run_all(model, knobs, True)
    same = run_all(model, SamplingKnobs(top_k=5, decode=f"diagonal-{width}-{height}"), True)
    assert all(torch.equal(a, b) for a, b in zip(sequential, same))
    faster = run_all(model, SamplingKnobs(top_k=5, decode="diagonal-1-1"), True)
    assert not all(torch.equal(a, b) for a, b in zip(sequential, faster))
    assert torch.equal(sequential[1][:, 1, 0], faster[1][:, 1, 0])  # the first row drawn sees the same in both
    assert torch.equal(sequential[2][:, 0, 0], faster[2][:, 0, 0])
    with pytest.raises(ValueError, match="approximate mode decodes through the KV cache only"):
        Sampler(SamplingKnobs(decode="diagonal-1-1"), use_cache=False)
