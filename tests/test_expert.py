"""The image expert (a second text-to-image export joined at sampling time): frames drawn from
log p_model + w log p_expert match a naive loop that runs both models on whole sequences without a cache; a huge
weight gives the expert's own greedy image; weight 0 changes nothing; a bundle carries the expert as an optional
part whose contracts are checked, the interpolation rounds take their own weight, and sampling refuses a weight
without an expert."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cogvideo_lite.bundle.exports import FULL_WEIGHTS, SPEC_FILE
from cogvideo_lite.bundle.make import main as bundle_main
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import IMAGE, KEYFRAME
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.provenance import CheckpointMismatch
from cogvideo_lite.sample.generate import Condition, Sampler, generate_image, generate_keyframes
from cogvideo_lite.sample.knobs import SamplingKnobs, interpolation_knobs
from cogvideo_lite.sample.pipeline import Pipeline
from tests.test_pipeline import generate

LAYOUT = SequenceLayout(text_length=4, num_frames=4, grid=(2, 3), text_vocab_size=20, codebook_size=32)
BOI = 3
PARTS = ("tokenizer", "text", "image", "keyframe", "interpolate")


def _model(seed: int) -> Generator:
    torch.manual_seed(seed)
    model = Generator(GeneratorConfig(dim=32, depth=2, heads=2), LAYOUT)
    with torch.no_grad():  # zero-initialised mixes and projections would leave the channels silent
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


def _inputs():
    text = torch.tensor([[0, 0, 11, 12], [13, 14, 15, 16], [0, 17, 18, 19]])
    return text, text == 0, torch.tensor([5, 6, 5])


CONDITION = Condition(*_inputs(), BOI)


@torch.no_grad()
def _naive_greedy_keyframes(model, expert, text, pad, fps, first, weight):
    """Greedy key frames after `first` (B, 1, h, w): every step runs both models on the whole sequence so far
    (padded with filler the last position cannot see) and takes argmax(log p_model + weight * log p_expert)."""
    prefix = torch.cat([text, fps[:, None]], dim=1)
    boi = torch.full((text.shape[0], 1), BOI)
    frames = [first[:, 0].flatten(1) + LAYOUT.image_offset]  # (B, h*w) ids per frame
    for _ in range(1, LAYOUT.num_frames):
        codes = torch.zeros(text.shape[0], 0, dtype=torch.long)
        for _ in range(LAYOUT.tokens_per_frame):
            known = torch.cat([prefix] + [torch.cat([boi, frame], 1) for frame in frames] + [boi, codes], dim=1)
            padded = torch.cat([known, known.new_zeros(known.shape[0], LAYOUT.seq_length - known.shape[1])], 1)
            main = model(padded, pad, KEYFRAME)[:, known.shape[1] - 1].log_softmax(-1)
            own = torch.cat([prefix, boi, codes], dim=1)
            image_length = LAYOUT.with_frames(1).seq_length
            own_padded = torch.cat([own, own.new_zeros(own.shape[0], image_length - own.shape[1])], 1)
            side = expert(own_padded, pad, IMAGE)[:, own.shape[1] - 1].log_softmax(-1)
            codes = torch.cat([codes, (main + weight * side).argmax(-1, keepdim=True) + LAYOUT.image_offset], 1)
        frames.append(codes)
    return (torch.stack(frames, 1) - LAYOUT.image_offset).reshape(text.shape[0], LAYOUT.num_frames, *LAYOUT.grid)


def test_expert_key_frames_match_a_naive_product_of_experts():
    model, expert = _model(0), _model(1)
    text, pad, fps = _inputs()
    first = torch.randint(0, 32, (3, 1, *LAYOUT.grid), generator=torch.Generator().manual_seed(0))
    weight = 0.7
    expected = _naive_greedy_keyframes(model, expert, text, pad, fps, first, weight)
    knobs = SamplingKnobs(top_k=1, expert_weight=weight)
    for use_cache in (True, False):
        found = generate_keyframes(model, CONDITION, first, Sampler(knobs, 0, use_cache, expert))
        assert torch.equal(found, expected)
    alone = generate_keyframes(model, CONDITION, first, Sampler(SamplingKnobs(top_k=1)))
    assert not torch.equal(alone, expected)  # the expert changed the key frames
    assert torch.equal(_naive_greedy_keyframes(model, expert, text, pad, fps, first, 0.0), alone)


def test_a_huge_weight_gives_the_experts_own_image_and_zero_changes_nothing():
    model, expert = _model(0), _model(1)
    own = generate_image(expert, CONDITION, Sampler(SamplingKnobs(top_k=1)))
    ruled = generate_image(model, CONDITION, Sampler(SamplingKnobs(top_k=1, expert_weight=1e6), expert=expert))
    assert torch.equal(ruled, own) and not torch.equal(
        generate_image(model, CONDITION, Sampler(SamplingKnobs(top_k=1))), own)
    knobs = SamplingKnobs(top_k=8)
    plain = generate_keyframes(model, CONDITION, own, Sampler(knobs, 4))
    assert torch.equal(generate_keyframes(model, CONDITION, own, Sampler(knobs, 4, expert=expert)),
                       plain)  # weight 0: the expert is not consulted
    with pytest.raises(ValueError, match="expert_weight=0.5: no image expert was given"):
        generate_keyframes(model, CONDITION, own, Sampler(SamplingKnobs(expert_weight=0.5), 4))
    with pytest.raises(ValueError, match=r"expert_weight=-1: expected a number >= 0"):
        SamplingKnobs(expert_weight=-1)


def _expert_export(bundle, directory, shift=0.05):
    """A copy of the bundle's image export with other weights: an expert of the same inputs."""
    shutil.copytree(bundle / "image", directory)
    weights = {name: value + shift for name, value in load_file(str(directory / FULL_WEIGHTS)).items()}
    save_file(weights, str(directory / FULL_WEIGHTS))
    return directory


def test_a_bundle_carries_an_expert_and_checks_its_contracts(bundle, pipeline, tmp_path):
    expert = _expert_export(bundle, tmp_path / "expert")
    arguments = [item for name in PARTS for item in (f"--{name}", str(bundle / name))]
    out = bundle_main(["--out", str(tmp_path / "with-expert"), "--expert", str(expert),
                       "--recommend", "expert_weight=0.5"] + arguments)
    loaded = Pipeline.load(out)
    assert loaded.expert is not None and loaded.recommended_knobs == {"expert_weight": 0.5}
    weights = load_file(str(expert / FULL_WEIGHTS))
    assert all(torch.equal(value, weights[name]) for name, value in loaded.expert.state_dict().items())
    greedy = SamplingKnobs(top_k=1)
    plain, joined = (generate(loaded, knobs=knobs, rounds=1) for knobs in (greedy, SamplingKnobs(top_k=1,
                                                                                                  expert_weight=3.0)))
    assert any(not torch.equal(a.codes, b.codes) for a, b in zip(plain, joined))
    keys_only = generate(loaded, knobs=SamplingKnobs(top_k=1, expert_weight=3.0), rounds=1,
                         interpolation_knobs=interpolation_knobs(greedy, None, 0.0))  # in-betweens without it
    for a, b in zip(joined, keys_only):
        assert torch.equal(a.codes[a.key_indices], b.codes[b.key_indices])
    assert any(not torch.equal(a.codes, b.codes) for a, b in zip(joined, keys_only))
    same = generate(pipeline, knobs=greedy, rounds=1)  # the expert part alone changes nothing at weight 0
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(plain, same))
    with pytest.raises(ValueError, match="has no image expert"):
        generate(pipeline, knobs=SamplingKnobs(expert_weight=0.5))

    spec = json.loads((expert / SPEC_FILE).read_text())
    (expert / SPEC_FILE).write_text(json.dumps({**spec, "text": {**spec["text"], "model_sha256": "0" * 64}}))
    with pytest.raises(SystemExit) as raised:
        bundle_main(["--out", str(tmp_path / "refused"), "--expert", str(expert)] + arguments)
    assert raised.value.code == 2 and not (tmp_path / "refused").exists()
    shutil.rmtree(out / "expert")
    shutil.copytree(expert, out / "expert")
    with pytest.raises(CheckpointMismatch, match=r"expert/generator.json records text .* but .*image/generator.json"):
        Pipeline.load(out)


def test_sample_and_evaluate_name_a_missing_expert(bundle, tmp_path, capsys):
    from cogvideo_lite.evaluate.command import main as evaluate_main
    from tests.test_sample import PROMPT, run_sample

    for call in (lambda: run_sample(["--prompt", PROMPT, "--expert-weight", "0.5"], bundle, tmp_path / "out"),
                 lambda: evaluate_main(["shapes", "--ckpt", str(bundle), "--interp-expert-weight", "0.5"])):
        with pytest.raises(SystemExit) as raised:
            call()
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert raised.value.code == 2 and "0.5: this bundle has no image expert" in error, error
    assert not (tmp_path / "out").exists()
