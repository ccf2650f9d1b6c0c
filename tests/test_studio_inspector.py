"""The studio's two hooks into the model, in process on the tiny untrained bundle: generate_videos' step observer,
and the attention recorder with the inspector's replay of the stage that made a frame; both also as in a bundle whose
key-frame model draws frame 0 (the shipped one)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from cogvideo_lite.model.stages import KEYFRAME
from cogvideo_lite.sample.knobs import SamplingKnobs
from cogvideo_lite.sample.pipeline import Request, generate_videos
from cogvideo_lite.studio.inspector import QueryRecorder, frame_origin, recording, stage_sequence
from cogvideo_lite.studio.server import describe
from cogvideo_lite.studio.worker import Studio

PROMPT = "a red circle moves left slowly"
GREEDY = SamplingKnobs(top_k=1)  # every code is the argmax of its logits: a replay must find the same


def test_steps_report_the_frames_made_so_far_and_can_stop_the_run(pipeline):
    steps = []
    video = generate_videos(pipeline, Request([PROMPT], key_rate=1, rounds=2, seed=4), SamplingKnobs(),
                            progress=False, on_step=steps.append)[0]
    assert [(step.name, step.round, step.codes.shape[1]) for step in steps] == [
        ("frame 0", 0, 1), ("key frames", 0, 5), ("round 1", 1, 9), ("round 2", 2, 17)]
    for step in steps:  # what a step showed is what the video keeps
        spacing = 2 ** (2 - step.round)  # video frames between the frames made so far
        assert torch.equal(step.codes[0].cpu(), video.codes[::spacing][:step.codes.shape[1]])

    class Stop(Exception):
        pass

    def stop_after_key_frames(step):
        if step.name == "key frames":
            raise Stop

    with pytest.raises(Stop):
        generate_videos(pipeline, Request([PROMPT], key_rate=1, rounds=2, seed=4), SamplingKnobs(), progress=False,
                        on_step=stop_after_key_frames)


def test_where_the_key_frame_model_draws_frame_0_the_steps_and_the_page_say_so(pipeline, tmp_path):
    learnt = replace(pipeline, keyframe_makes_first_frame=True)  # the same models; frame 0 from the key-frame model
    steps = []
    generate_videos(learnt, Request([PROMPT], key_rate=1, rounds=1, seed=4), SamplingKnobs(), progress=False,
                    on_step=steps.append)
    assert [(step.name, step.round, step.codes.shape[1]) for step in steps] == [("key frames", 0, 5), ("round 1", 1, 9)]
    assert describe(Studio(learnt, tmp_path))["first_frame_by"] == "keyframe"
    assert describe(Studio(pipeline, tmp_path))["first_frame_by"] == "image"


def test_the_recorder_gives_the_weights_attention_used_and_changes_nothing(pipeline):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, 6, 4, generator=generator) for _ in range(3))
    mask = torch.rand(1, 1, 6, 6, generator=generator) > 0.4
    mask[..., 0] = True  # no empty row
    recorder = QueryRecorder(position=4)
    recorder(0, "temporal", query, key, mask, 0)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)  # (1, heads, C, d)
    torch.testing.assert_close(torch.einsum("hk,hkd->hd", recorder.weights[(0, "temporal")], value[0]), out[0, :, 4])
    assert torch.equal(recorder.allowed[(0, "temporal")], mask[0, 0, 4])

    model = pipeline.keyframe
    tokens = torch.tensor([pipeline.text.encode_padded(PROMPT, pipeline.text_length) + [pipeline.text.fps_id(1)]
                           + [pipeline.text.boi_id, *[model.layout.image_offset] * 16] * 5])
    text_pad = tokens[:, :pipeline.text_length] == pipeline.text.pad_id
    with torch.no_grad():
        plain = model(tokens, text_pad, KEYFRAME)
        with recording(model, QueryRecorder(position=40)):
            recorded = model(tokens, text_pad, KEYFRAME)
    torch.testing.assert_close(plain, recorded)  # recording runs the dense path: the per-slot one's result, rounded
    assert all(block.attention.recorder is None for block in model.blocks) and model.attention == "auto"


@pytest.mark.parametrize("key_rate, rounds, learnt_first_frame", [(1, 3, False), (2, 1, False), (2, 1, True)])
def test_replaying_the_stage_of_each_frame_finds_every_greedy_code(pipeline, key_rate, rounds, learnt_first_frame):
    """Where each code is the argmax of the logits that drew it, the inspector's replay (the stage, its sequence, slot
    order and fps token, from frame_origin) must predict every code of every frame: it is the forward that drew it."""
    pipeline = replace(pipeline, keyframe_makes_first_frame=learnt_first_frame)
    video = generate_videos(pipeline, Request([PROMPT], key_rate, rounds, seed=5), GREEDY, progress=False)[0]
    stages = []
    for frame in range(len(video.codes)):
        origin = frame_origin(pipeline, video, frame)
        assert origin.slot_frames[origin.slot] == frame
        model, tokens, text_pad = stage_sequence(pipeline, video, origin)
        layout = model.layout.with_frames(len(origin.slot_frames))
        with torch.no_grad():
            logits = model(tokens, text_pad, origin.stage)[0, layout.prediction_slice(origin.slot)]  # (h*w, V)
        assert torch.equal(logits.argmax(-1).cpu(), video.codes[frame].flatten()), f"frame {frame}"
        stages.append(origin.stage.name if origin.round == 0 else origin.round)
    expected = (["keyframe" if learnt_first_frame else "image"] + ["keyframe"] * 4
                + [k for k in range(1, rounds + 1) for _ in range(4 * 2 ** (k - 1))])
    assert sorted(stages, key=str) == sorted(expected, key=str)
