"""The sampling pipeline on a tiny untrained bundle: bundle contracts, the 5 -> 9 -> 17 -> 33 hierarchy, key frames
kept across rounds, seeds, cached == uncached, given first frames, bf16 bundles.

The bundle is built without training (seconds): a real sentencepiece model on the built-in captions, a random tiny
VQVAE, and random generator stages whose weights are pushed far from initialisation so that text, frame index and
both attention channels change the outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cogvideo_lite.bundle.exports import FULL_WEIGHTS, SPEC_FILE, load_image_model, save_stage
from cogvideo_lite.bundle.make import PROVENANCE_FILE, main as bundle_main
from cogvideo_lite.bundle.parts import BUNDLE_MAP_FILE, PART_NAMES, BundleError
from cogvideo_lite.data.shapes import all_captions
from cogvideo_lite.model.config import GeneratorConfig
from cogvideo_lite.model.layout import SequenceLayout
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, TEMPORAL_WEIGHTS, VIDEO_STAGES
from cogvideo_lite.model.transformer import Generator
from cogvideo_lite.provenance import CheckpointMismatch, sha256_file
from cogvideo_lite.sample.generate import Condition, Sampler, generate_image, generate_keyframes, interpolate
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Pipeline, Request, decode_codes, derive_seed, generate_videos, max_rounds
from cogvideo_lite.text import DEFAULT_VOCAB_SIZE, TEXT_MODEL_FILE, TEXT_SPEC_FILE, PromptTooLong, train_text_model
from tokenizer.config import TokenizerConfig
from tokenizer.io import WEIGHTS_FILE, save_tokenizer
from tokenizer.model import VQVAE

RATES = (1, 2, 4, 8)
TEXT_LENGTH = 8
KEY_FRAMES = 5
TOKENIZER_CONFIG = TokenizerConfig(image_size=32, codebook_size=64, channels=32, channel_mult=(1, 1, 1, 1))
GENERATOR_CONFIG = GeneratorConfig(dim=32, depth=2, heads=2)
PROMPTS = ["a red circle moves left slowly", "a blue square moves up quickly"]
KNOBS = SamplingKnobs(temperature=1.0)
WEIGHT_SPREAD = 0.3  # std of the random weights: far from initialisation, yet sampling stays random


def _perturb(parameters, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * WEIGHT_SPREAD)


def build_tiny_bundle(root: Path) -> Path:
    """Write tokenizer/, text/, image/, keyframe/, interpolate/ into `root` (a valid bundle); return root."""
    text = train_text_model(all_captions(), root / "text" / TEXT_MODEL_FILE, DEFAULT_VOCAB_SIZE, RATES)
    torch.manual_seed(0)
    save_tokenizer(VQVAE(TOKENIZER_CONFIG).eval(), root / "tokenizer")
    contracts = {"text": text.spec, "rates": list(RATES),
                 "frame_tokenizer": {"config": TOKENIZER_CONFIG.to_dict(),
                                     "weights_sha256": sha256_file(root / "tokenizer" / WEIGHTS_FILE)}}
    layout = SequenceLayout(text_length=TEXT_LENGTH, num_frames=1, grid=TOKENIZER_CONFIG.grid,
                            text_vocab_size=text.vocab_size, codebook_size=TOKENIZER_CONFIG.codebook_size)
    image = Generator(GENERATOR_CONFIG, layout)
    _perturb(image.parameters(), seed=1)
    save_stage(image.eval(), root / "image", IMAGE, json.loads(json.dumps(contracts)))
    for seed, stage in enumerate(VIDEO_STAGES, start=2):
        model, _ = load_image_model(root / "image")
        model.layout = layout.with_frames(KEY_FRAMES)
        model.initialise_temporal_from_spatial()
        temporal = dict(model.named_parameters())
        _perturb([temporal[name] for name in model.temporal_parameter_names()], seed)
        save_stage(model, root / stage.name, stage, json.loads(json.dumps(contracts)), image_dir=root / "image")
    return root


def generate(pipeline, knobs=KNOBS, interpolation_knobs=None, batch_size=8, use_cache=True, **overrides):
    """generate_videos of a Request with these defaults and `overrides`."""
    request = Request(**{**dict(prompts=PROMPTS, key_rate=1, rounds=1, seed=3, num_samples=1), **overrides})
    return generate_videos(pipeline, request, knobs, interpolation_knobs, batch_size, use_cache, progress=False)


# ------------------------------------------------------------------ hierarchy
def test_max_rounds_counts_doublings_inside_the_rate_set():
    assert [max_rounds(RATES, rate) for rate in RATES] == [3, 2, 1, 0]
    assert max_rounds((1, 2, 8), 1) == 1 and max_rounds((3, 6), 3) == 1
    with pytest.raises(ValueError, match="rate 5 is not one of the configured rates"):
        max_rounds(RATES, 5)


def test_frame_counts_double_per_round_and_key_frames_stay(pipeline):
    key_only = generate(pipeline, rounds=0)
    for rounds, expected in ((0, 5), (1, 9), (2, 17), (3, 33)):
        videos = key_only if rounds == 0 else generate(pipeline, rounds=rounds)
        for video, key_video in zip(videos, key_only):
            assert video.codes.shape == (expected, *TOKENIZER_CONFIG.grid) and video.codes.dtype == torch.long
            assert video.frames.shape == (expected, 32, 32, 3) and video.frames.dtype == np.uint8
            assert video.key_indices == list(range(0, expected, 2 ** rounds))
            assert video.fps == 2 ** rounds and video.key_rate == 1
            assert torch.equal(video.codes[video.key_indices], key_video.codes)
    assert not torch.equal(key_only[0].codes, key_only[1].codes)  # the prompts differ


def test_frames_are_the_tokenizer_decoding_of_the_codes(pipeline):
    video = generate(pipeline, prompts=PROMPTS[:1])[0]
    expected = ((pipeline.tokenizer.decode(video.codes[None])[0] + 1) * 127.5).round().clamp(0, 255)
    assert np.array_equal(video.frames, expected.to(torch.uint8).permute(0, 2, 3, 1).numpy())


def test_key_frames_match_the_stage_models_run_by_hand(pipeline):
    """With batch_size 1, pair b is batch b: its frame 0 comes from the image model and its key frames from the
    key-frame model, both with the key rate's fps token and the seeds derive_seed(seed, b, step) promises."""
    video = generate(pipeline, rounds=0, key_rate=2, batch_size=1)[1]
    text = pipeline.text
    ids, pad = text.encode_batch(PROMPTS[1:], TEXT_LENGTH)
    condition = Condition(ids, pad, torch.tensor([text.fps_id(2)]), text.boi_id)
    first = generate_image(pipeline.image, condition, Sampler(KNOBS, derive_seed(3, 1, 0)))
    keys = generate_keyframes(pipeline.keyframe, condition, first, Sampler(KNOBS, derive_seed(3, 1, 1)))
    assert torch.equal(keys[0], video.codes)


def test_interpolation_uses_the_output_rate_token(pipeline):
    keys = generate(pipeline, prompts=PROMPTS[:1], rounds=0)[0].codes[None]  # (1, 5, h, w)
    ids, pad = pipeline.text.encode_batch(PROMPTS[:1], TEXT_LENGTH)
    condition = Condition(ids, pad, torch.tensor([pipeline.text.fps_id(2)]), pipeline.text.boi_id)
    by_hand = interpolate(pipeline.interpolate, condition, keys, Sampler(KNOBS, derive_seed(5, 0, 2)))
    given = generate(pipeline, prompts=PROMPTS[:1], rounds=1, seed=5, init_codes=keys)[0]  # the rounds alone
    assert torch.equal(given.codes[None], by_hand)


# ------------------------------------------------------------------ seeds, batching, cache
def test_same_seed_same_videos_other_seed_other_videos(pipeline):
    first, again, other = (generate(pipeline, seed=seed, num_samples=2) for seed in (3, 3, 4))
    assert [(v.prompt, v.sample_index) for v in first] == [(p, i) for p in PROMPTS for i in range(2)]
    for a, b in zip(first, again):
        assert torch.equal(a.codes, b.codes) and np.array_equal(a.frames, b.frames)
    assert all(not torch.equal(a.codes, c.codes) for a, c in zip(first, other))
    assert not torch.equal(first[0].codes, first[1].codes)  # two samples of one prompt differ


def test_cached_and_uncached_pipelines_give_identical_videos(pipeline):
    cached = generate(pipeline, rounds=1, use_cache=True)
    uncached = generate(pipeline, rounds=1, use_cache=False)
    for a, b in zip(cached, uncached):
        assert torch.equal(a.codes, b.codes)


def test_guidance_runs_and_changes_the_video(pipeline):
    plain = generate(pipeline, prompts=PROMPTS[:1], rounds=0)[0]
    guided = generate(pipeline, prompts=PROMPTS[:1], rounds=0, knobs=SamplingKnobs(guidance_scale=3.0))[0]
    assert guided.codes.shape == plain.codes.shape and not torch.equal(guided.codes, plain.codes)


# ------------------------------------------------------------------ given frames
def test_init_codes_are_kept_and_skip_the_image_model(pipeline):
    generator = torch.Generator().manual_seed(0)
    given = torch.randint(0, TOKENIZER_CONFIG.codebook_size, (1, 2, *TOKENIZER_CONFIG.grid), generator=generator)
    videos = generate(pipeline, rounds=2, num_samples=2, init_codes=given)
    for video in videos:
        assert torch.equal(video.codes[[0, 4]], given[0]) and video.codes.shape[0] == 17
    all_keys = torch.randint(0, TOKENIZER_CONFIG.codebook_size, (2, KEY_FRAMES, *TOKENIZER_CONFIG.grid),
                             generator=generator)
    videos = generate(pipeline, rounds=1, init_codes=all_keys)
    for row, video in enumerate(videos):
        assert torch.equal(video.codes[video.key_indices], all_keys[row])


def test_bad_requests_fail_before_generating(pipeline):
    cases = [
        (dict(key_rate=3), "rate 3 is not one of the configured rates"),
        (dict(key_rate=4, rounds=2), r"allows 0\.\.1 interpolation rounds"),
        (dict(rounds=-1), r"rounds=-1"),
        (dict(seed=-1), r"seed=-1"),
        (dict(prompts=["a red circle", "  "]), "prompt 1 is '  '"),
        (dict(prompts=[]), "non-empty list"),
        (dict(num_samples=0), "num_samples=0"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(knobs={"temperature": 1.0}), "SamplingKnobs"),
        (dict(init_codes=torch.zeros(1, 6, 4, 4, dtype=torch.long)), "6 frames"),
        (dict(init_codes=torch.zeros(1, 1, 3, 4, dtype=torch.long)), r"expected int64 codes \(B, T, 4, 4\)"),
        (dict(init_codes=torch.zeros(3, 1, 4, 4, dtype=torch.long)), "batch 3"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(pipeline, **overrides)
    with pytest.raises(PromptTooLong, match=r"needs \d+ text tokens but the text length is 8"):
        generate(pipeline, prompts=["a red circle moves left slowly and then a green square moves up quickly"])


def test_decoding_in_chunks_equals_one_call(pipeline, monkeypatch):
    codes = torch.randint(0, TOKENIZER_CONFIG.codebook_size, (2, 3, *TOKENIZER_CONFIG.grid))
    whole = decode_codes(pipeline, codes)
    monkeypatch.setattr("cogvideo_lite.sample.pipeline.DECODE_CHUNK_FRAMES", 4)
    assert np.array_equal(decode_codes(pipeline, codes), whole)


# ------------------------------------------------------------------ bundles
def test_bundle_json_points_at_parts_elsewhere(bundle, tmp_path):
    pointer = tmp_path / "pointer"
    pointer.mkdir()
    (pointer / BUNDLE_MAP_FILE).write_text(json.dumps({name: str(bundle / name) if name != "text" else
                                                       f"../{bundle.name}/text" for name in
                                                       ("tokenizer", "text", "image", "keyframe", "interpolate")}))
    shutil.copytree(bundle / "text", tmp_path / bundle.name / "text")  # the relative path resolves here
    loaded = Pipeline.load(pointer)
    assert loaded.rates == RATES and loaded.num_key_frames == KEY_FRAMES
    (pointer / BUNDLE_MAP_FILE).write_text(json.dumps({"tokenizer": "x"}))
    with pytest.raises(BundleError, match=r"expected an object with the keys .* \(and optionally \[.expert.\]\)"):
        Pipeline.load(pointer)


def test_missing_part_and_missing_directory_are_named(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    shutil.rmtree(copy / "keyframe")
    with pytest.raises(BundleError, match=f"part 'keyframe' is missing: {copy / 'keyframe'}"):
        Pipeline.load(copy)
    with pytest.raises(BundleError, match="does not exist"):
        Pipeline.load(tmp_path / "nowhere")


def test_tampered_image_export_is_refused_naming_both_checksums(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    weights = copy / "image" / FULL_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    recorded, found = sha256_file(bundle / "image" / FULL_WEIGHTS), sha256_file(weights)
    with pytest.raises(CheckpointMismatch, match=f"image export weights sha256 {recorded}, but .* has {found}"):
        Pipeline.load(copy)


def test_other_frame_tokenizer_is_refused_naming_both_checksums(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    torch.manual_seed(99)
    save_tokenizer(VQVAE(TOKENIZER_CONFIG), copy / "tokenizer")
    recorded = json.loads((bundle / "image" / "generator.json").read_text())["frame_tokenizer"]["weights_sha256"]
    found = sha256_file(copy / "tokenizer" / WEIGHTS_FILE)
    with pytest.raises(CheckpointMismatch, match=f"frame tokenizer weights sha256 {recorded}, but .* has {found}"):
        Pipeline.load(copy)


def test_other_text_model_is_refused_naming_both_checksums(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    other = train_text_model(all_captions()[:40], copy / "text" / TEXT_MODEL_FILE, DEFAULT_VOCAB_SIZE, RATES)
    recorded = json.loads((bundle / "image" / "generator.json").read_text())["text"]["model_sha256"]
    with pytest.raises(CheckpointMismatch,
                       match=f"text model sha256 {recorded}, but .* has {other.spec['model_sha256']}"):
        Pipeline.load(copy)


def test_bf16_bundle_is_smaller_loads_and_keeps_its_contracts(bundle, pipeline, tmp_path):
    run = tmp_path / "runs" / "image"
    shutil.copytree(bundle / "image", run / "model")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    keyframe_spec = json.loads((bundle / "keyframe" / "generator.json").read_text())
    sources = {name: bundle / name for name in ("tokenizer", "text", "keyframe", "interpolate")}
    sources["image"] = run / "model"
    arguments = [item for name, path in sources.items() for item in (f"--{name}", str(path))]
    assert keyframe_spec["image_weights_sha256"] == sha256_file(run / "model" / FULL_WEIGHTS)
    out = bundle_main(["--out", str(tmp_path / "small"), "--bf16"] + arguments)
    assert (out / "logs" / "image" / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()
    assert not (out / "logs" / "tokenizer").exists()
    assert not (tmp_path / "small.tmp").exists()
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["weights_dtype"] == "bfloat16"
    assert provenance["parts"]["image"]["source_weights_sha256"] == keyframe_spec["image_weights_sha256"]
    ratio = (out / "image" / FULL_WEIGHTS).stat().st_size / (bundle / "image" / FULL_WEIGHTS).stat().st_size
    assert 0.45 < ratio < 0.6
    for name, file_name in (("image", FULL_WEIGHTS), ("tokenizer", WEIGHTS_FILE), ("keyframe", TEMPORAL_WEIGHTS)):
        stored, source = load_file(out / name / file_name), load_file(bundle / name / file_name)
        for key, tensor in source.items():
            expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
            assert stored[key].dtype == expected.dtype and torch.equal(stored[key], expected), (name, key)
    small = Pipeline.load(out)
    assert all(parameter.dtype == torch.float32 for parameter in small.image.parameters())
    for full, half in ((pipeline.image, small.image), (pipeline.keyframe, small.keyframe)):
        for (name, a), b in zip(full.state_dict().items(), half.state_dict().values()):
            assert torch.equal(a.to(torch.bfloat16).float(), b), name
    assert len(generate(small, rounds=1)) == 2
    with pytest.raises(SystemExit):  # an existing --out is refused
        bundle_main(["--out", str(out)] + arguments)


def test_bundle_refuses_parts_that_do_not_belong_together(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    torch.manual_seed(98)
    save_tokenizer(VQVAE(TOKENIZER_CONFIG), copy / "tokenizer")
    arguments = [item for name in ("tokenizer", "text", "image", "keyframe", "interpolate")
                 for item in (f"--{name}", str(copy / name))]
    with pytest.raises(SystemExit) as raised:
        bundle_main(["--out", str(tmp_path / "out"), "--bf16"] + arguments)
    assert raised.value.code == 2 and not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def _refused_bundle(parts: dict[str, Path], out: Path, capsys, *options: str) -> str:
    """Run the bundle command expecting a one-line refusal (exit 2); return that line."""
    arguments = [item for name, path in parts.items() for item in (f"--{name}", str(path))]
    with pytest.raises(SystemExit) as raised:
        bundle_main(["--out", str(out), *options] + arguments)
    assert raised.value.code == 2
    assert not out.with_name(out.name + ".tmp").exists()  # nothing half-built is left behind
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("bf16", [(), ("--bf16",)])
@pytest.mark.parametrize("part, source, file_name", [("keyframe", "keyframe", TEMPORAL_WEIGHTS),
                                                     ("expert", "image", FULL_WEIGHTS),
                                                     ("tokenizer", "tokenizer", WEIGHTS_FILE)])
def test_bundle_refuses_a_truncated_weights_file_naming_part_and_file(bundle, tmp_path, capsys, part, source,
                                                                       file_name, bf16):
    parts = {name: bundle / name for name in PART_NAMES}
    parts[part] = shutil.copytree(bundle / source, tmp_path / part)
    weights = parts[part] / file_name
    weights.write_bytes(weights.read_bytes()[:1000])  # `head -c 1000`: what an interrupted copy leaves
    out = tmp_path / "out"
    message = _refused_bundle(parts, out, capsys, *bf16)
    assert f"part '{part}': {weights} is not a readable safetensors file" in message
    assert not out.exists()


@pytest.mark.parametrize("part, spec_file, edit, expected", [
    ("expert", SPEC_FILE, lambda text: text[:-10], "is not valid JSON"),
    ("keyframe", SPEC_FILE, lambda text: "[]", "holds a JSON list, expected an object"),
    ("expert", SPEC_FILE, lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "layout"}),
     "lacks the entries ['layout']"),
    ("interpolate", SPEC_FILE, lambda text: json.dumps({**json.loads(text), "layout": {"grid": [4, 4]}}),
     "entry 'layout' is malformed (lacks 'text_length')"),
    ("image", SPEC_FILE, lambda text: json.dumps({**json.loads(text), "text": "sha"}),
     "entry 'text' must be an object with ['model_sha256']"),
    ("text", TEXT_SPEC_FILE, lambda text: text[:-10], "cannot load"),
    ("text", TEXT_SPEC_FILE, lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "model_file"}),
     "lacks the entry 'model_file'"),
])
def test_bundle_refuses_a_malformed_spec_naming_part_and_file(bundle, tmp_path, capsys, part, spec_file, edit,
                                                              expected):
    parts = {name: bundle / name for name in PART_NAMES}
    parts[part] = shutil.copytree(bundle / ("image" if part == "expert" else part), tmp_path / part)
    spec_path = parts[part] / spec_file
    spec_path.write_text(edit(spec_path.read_text()))
    message = _refused_bundle(parts, tmp_path / "out", capsys, "--bf16")
    assert f"part '{part}'" in message and str(spec_path) in message and expected in message, message


def test_bundle_never_touches_an_existing_out(bundle, tmp_path, capsys):
    out = shutil.copytree(bundle, tmp_path / "existing")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    message = _refused_bundle({name: bundle / name for name in PART_NAMES}, out, capsys)
    assert f"--out {out} already exists" in message
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_a_bundle_interrupted_while_building_leaves_nothing_behind(bundle, tmp_path, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt  # e.g. Ctrl-C halfway through the bfloat16 conversion

    monkeypatch.setattr("cogvideo_lite.bundle.make.store_as_bf16", interrupted)
    arguments = [item for name in PART_NAMES for item in (f"--{name}", str(bundle / name))]
    with pytest.raises(KeyboardInterrupt):
        bundle_main(["--out", str(tmp_path / "out"), "--bf16"] + arguments)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_interpolation_knobs_apply_to_the_rounds_alone(pipeline):
    greedy = SamplingKnobs(temperature=1.0, top_k=1)
    plain = generate(pipeline, rounds=2)
    mixed = generate(pipeline, rounds=2, interpolation_knobs=greedy)
    for a, b in zip(plain, mixed):
        assert torch.equal(a.codes[a.key_indices], b.codes[b.key_indices])  # key frames untouched by the knob
    keys = torch.stack([video.codes[video.key_indices] for video in mixed])  # (B, 5, h, w)
    prompts = [video.prompt for video in mixed]
    # greedy in-betweens depend on the key frames alone, not on the seed the rounds draw from
    again = torch.stack([video.codes for video in generate(pipeline, prompts=prompts, rounds=2, seed=12345,
                                                           init_codes=keys, knobs=greedy)])
    assert torch.equal(again, torch.stack([video.codes for video in mixed]))
    assert not torch.equal(torch.stack([v.codes for v in plain]), torch.stack([v.codes for v in mixed]))


def test_a_keyframe_model_that_learnt_frame_0_makes_it_instead_of_the_image_model(bundle, pipeline, tmp_path):
    """A key-frame export marked `learns_first_frame` samples the whole key-frame sequence from the key-frame
    seed; the image model is not asked. Without the mark, frame 0 is the image model's."""
    marked = tmp_path / "bundle"
    shutil.copytree(bundle, marked)
    spec_path = marked / "keyframe" / "generator.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({**spec, "learns_first_frame": True}))
    first_frame_pipeline = Pipeline.load(marked)
    assert first_frame_pipeline.keyframe_makes_first_frame and not pipeline.keyframe_makes_first_frame
    video = generate(first_frame_pipeline, rounds=0, key_rate=2, batch_size=1)[1]
    text = pipeline.text
    ids, pad = text.encode_batch(PROMPTS[1:], TEXT_LENGTH)
    condition = Condition(ids, pad, torch.tensor([text.fps_id(2)]), text.boi_id)
    none = torch.zeros(1, 0, *TOKENIZER_CONFIG.grid, dtype=torch.long)
    keys = generate_keyframes(first_frame_pipeline.keyframe, condition, none, Sampler(KNOBS, derive_seed(3, 1, 1)))
    assert torch.equal(keys[0], video.codes)
    image_first = generate(pipeline, rounds=0, key_rate=2, batch_size=1)[1]
    assert not torch.equal(image_first.codes[0], video.codes[0])
