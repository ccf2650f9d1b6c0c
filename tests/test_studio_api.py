"""The studio over real HTTP: a server started as a user starts it (`python -m cogvideo_lite.studio`, a free port) on
the tiny untrained bundle. The round trip to a 33-frame mp4 and gif; refused inputs with sample.py's wording while the
server keeps serving; two clients at once; clients that leave mid-generation; the attention maps against
softmax(QK^T/sqrt(d)) under the stage mask and text padding, computed by hand from the bundle's weights; start-up
failures as one line."""

from __future__ import annotations

import http.client
import json
import math
import re
import shutil
import threading
import time

import av
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cogvideo_lite.model.masks import stage_masks
from cogvideo_lite.model.stages import IMAGE, INTERPOLATE, KEYFRAME, Stage
from cogvideo_lite.studio.inspector import stage_model
from tests.helpers import run_script
from tests.studio_server import StudioServer

PROMPT = "a red circle moves left slowly"
LONG_PROMPT = "a red circle moves left slowly and a green square moves up quickly"  # 15 tokens; the text length is 8


@pytest.fixture(scope="module")
def studio(bundle, tmp_path_factory):
    server = StudioServer(bundle, tmp_path_factory.mktemp("studio") / "studio.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def video(studio):
    """One 33-frame video (1 fps key frames, 3 rounds), made through the API."""
    status, summary = studio.json("/api/generate", {"prompt": PROMPT, "seed": 3, "fps": 1, "rounds": 3})
    assert status == 200, summary
    return summary


# ------------------------------------------------------------------------------------------------ round trip
def test_generate_returns_a_33_frame_mp4_and_gif(studio, video, tmp_path):
    assert (video["num_frames"], video["fps"], video["key_rate"], video["rounds"]) == (33, 8, 1, 3)
    assert video["key_indices"] == [0, 8, 16, 24, 32] and video["seed"] == 3 and video["prompt"] == PROMPT
    assert video["knobs"] == {"temperature": 1.0, "top_k": None, "interp_top_k": None, "top_p": 1.0, "cfg": 1.0,
                              "expert_weight": 0.0, "interp_expert_weight": None, "decode": "exact"}  # built-ins
    assert video["made_by"][:5] == ["image", "round 3", "round 2", "round 3", "round 1"]
    status, content, headers = studio.request(video["mp4"])
    assert status == 200 and headers["content-type"] == "video/mp4"
    (tmp_path / "video.mp4").write_bytes(content)
    with av.open(str(tmp_path / "video.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 33 and frames[0].shape == (32, 32, 3)
    status, content, headers = studio.request(video["gif"])
    assert status == 200 and headers["content-type"] == "image/gif"
    (tmp_path / "video.gif").write_bytes(content)
    assert Image.open(tmp_path / "video.gif").n_frames == 33
    status, stored = studio.json(f"/api/videos/{video['id']}")
    assert status == 200 and torch.tensor(stored["codes"]).shape == (33, 4, 4)


def test_the_stream_shows_key_frames_first_then_each_round(studio):
    status, content, headers = studio.request("/api/generate/stream", {"prompt": PROMPT, "rounds": 2, "seed": 1})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in content.decode().splitlines() if line.startswith("data: ")]
    assert [event["event"] for event in events] == ["queued", "started", "step", "step", "step", "step", "done"]
    steps = [event for event in events if event["event"] == "step"]
    assert [(step["name"], [frame["index"] for frame in step["frames"]]) for step in steps] == [
        ("frame 0", [0]), ("key frames", [4, 8, 12, 16]), ("round 1", [2, 6, 10, 14]),
        ("round 2", [1, 3, 5, 7, 9, 11, 13, 15])]
    assert all(frame["png"].startswith("data:image/png;base64,") for step in steps for frame in step["frames"])
    assert events[-1]["video"]["num_frames"] == 17


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("body, status, message", [
    ({"prompt": ""}, 400, f"prompt is empty; give a caption like '{PROMPT}'"),
    ({"prompt": " \u200b\ufeff"}, 400, f"prompt is empty; give a caption like '{PROMPT}'"),
    ({"prompt": "\u2581"}, 400,
     f"prompt is empty to the text model ('\u2581' gives no text tokens); give a caption like '{PROMPT}'"),
    ({"prompt": LONG_PROMPT}, 400,
     f"prompt: caption needs 15 text tokens but the text length is 8: '{LONG_PROMPT}'; shorten it"),
    ({"prompt": "a <boi> circle"}, 400, "prompt: caption 'a <boi> circle' contains the text of special tokens "
                                        "['<boi>']; remove that text from the caption"),
    (b'{"prompt": "caf\\ud800"}', 400,
     "prompt: not UTF-8 text (a lone surrogate U+D800 at character 3); send it as UTF-8"),
    ('{"prompt": "café"}'.encode("latin-1"), 400,
     "request body: not UTF-8 text (byte 0xe9 at offset 15); send it as UTF-8"),
    (b'{"prompt": ', 400, 'request body: not JSON (Expecting value at line 1 column 12); send a JSON object like '
                          f'{{"prompt": "{PROMPT}"}}'),
    ({}, 400, f'no prompt given; add "prompt": "{PROMPT}"'),
    ({"prompt": PROMPT, "temperature": 0}, 400, "temperature 0: must be a number > 0; try --temperature 1.0"),
    ({"prompt": PROMPT, "top_k": 0}, 400, "top_k 0: must be an integer >= 1; leave it out to keep every code"),
    ({"prompt": PROMPT, "top_p": "0.9"}, 400,
     'top_p "0.9": must be a number in (0, 1]; try --top-p 0.9, or 1 to turn it off'),
    ({"prompt": PROMPT, "expert_weight": 0.5}, 400, "--expert-weight / --interp-expert-weight 0.5: this bundle has no "
     "image expert (an expert/ part; `python -m cogvideo_lite.bundle --expert DIR` adds one); leave them out or at 0"),
    ({"prompt": PROMPT, "fps": 3}, 400, "fps 3: not a configured key-frame rate; choose one of 1, 2, 4, 8"),
    ({"prompt": PROMPT, "fps": 4, "rounds": 2}, 400, "rounds 2: from 4 fps the rates (1, 2, 4, 8) allow 0..1 "
                                                     "interpolation rounds; pass rounds 1 or fewer, or a lower fps"),
    ({"prompt": PROMPT, "seed": -1}, 400, f"seed -1: must be an integer >= 0 (at most {2 ** 63 - 1})"),
    ({"prompt": PROMPT, "steps": 9}, 400, "unknown field(s) steps; expected some of prompt, seed, fps, rounds, "
     "temperature, top_k, interp_top_k, top_p, cfg, expert_weight, interp_expert_weight, decode"),
    (b"x" * (64 * 1024 + 1), 413, f'request body over 65536 bytes; send a JSON object like {{"prompt": "{PROMPT}"}}'),
])
def test_bad_requests_are_refused_with_sample_py_wording(studio, body, status, message):
    for path in ("/api/generate", "/api/generate/stream"):
        assert studio.json(path, body) == (status, {"error": message})


def test_bad_attention_requests_are_refused_and_the_server_keeps_serving(studio, video):
    frame_error = "frame 33: the video has 33 frames; choose 0..32"
    position_error = "position [4, 0]: expected [row, col] on the 4x4 code grid: row 0..3, col 0..3"
    assert studio.json("/api/attention", {"video": "nope", "frame": 0, "position": [0, 0]}) == (404, {
        "error": "video 'nope': no such video here (the studio keeps the last 100); generate one with "
                 "POST /api/generate"})
    assert studio.json("/api/attention", {"video": video["id"], "frame": 33, "position": [0, 0]}) == (
        400, {"error": frame_error})
    assert studio.json("/api/attention", {"video": video["id"], "frame": 1, "position": [4, 0]}) == (
        400, {"error": position_error})
    assert studio.request("/videos/nope.mp4")[0] == 404
    assert studio.json("/api/info")[0] == 200


# ------------------------------------------------------------------------------------------------ load
def test_two_clients_at_once_are_both_answered_one_after_the_other(studio):
    answers = {}
    barrier = threading.Barrier(2)

    def ask(seed: int) -> None:
        barrier.wait()
        answers[seed] = studio.json("/api/generate", {"prompt": PROMPT, "seed": seed, "rounds": 2})

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (10, 11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[seed][0] for seed in (10, 11)] == [200, 200]
    first, second = sorted((answers[seed][1] for seed in (10, 11)), key=lambda video: video["finished_at"])
    assert first["id"] != second["id"] and first["num_frames"] == second["num_frames"] == 17
    # one at a time: the second started once the first had finished (give or take writing the files)
    second_started = second["finished_at"] - second["seconds"]["generating"]
    assert second_started >= first["finished_at"] - 0.5 * first["seconds"]["generating"]
    assert second["seconds"]["queued"] > 0


def _post(studio: StudioServer, path: str, body: dict) -> http.client.HTTPConnection:
    host, port = studio.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return connection


def test_clients_that_leave_mid_generation_are_cancelled_and_the_next_is_served(studio):
    long_job = {"prompt": PROMPT, "rounds": 3, "cfg": 3.0}  # guidance doubles the work: time to notice the leaving
    _post(studio, "/api/generate", long_job).close()  # hangs up as soon as it has asked
    stream = _post(studio, "/api/generate/stream", long_job)
    response = stream.getresponse()
    while b"event: step" not in response.readline():  # hangs up once the first frames are there
        pass
    stream.close()
    status, video = studio.json("/api/generate", {"prompt": PROMPT, "rounds": 1}, timeout=120)
    assert status == 200 and video["num_frames"] == 9
    cancelled = r"job \w+ cancelled: its client went away"
    deadline = time.monotonic() + 60
    while len(re.findall(cancelled, studio.log.read_text())) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(re.findall(cancelled, studio.log.read_text())) == 2, studio.log.read_text()


# ------------------------------------------------------------------------------------------------ attention
def hand_attention(model, tokens: torch.Tensor, text_pad: torch.Tensor, stage: Stage, position: int) -> dict:
    """(layer, channel) -> (heads, S) weights of query `position`, by hand from the model's weights: embeddings, then
    per layer LayerNorm, each channel's softmax(QK^T/sqrt(d)) under the stage mask with text padding (no pad key; a pad
    query sees itself), the gate sigma(a) on frame rows, the feed-forward block."""
    layout = model.layout.with_frames(model.layout.frames_for_length(tokens.shape[1]))
    length, dim, heads = tokens.shape[1], model.config.dim, model.config.heads
    head_dim, prefix, text_length = dim // heads, layout.prefix_length, layout.text_length
    key_allowed = torch.ones(length, dtype=torch.bool)
    key_allowed[:text_length] = ~text_pad[0]

    def padded(mask):
        mask = mask & key_allowed[None]
        for query in range(text_length):
            if text_pad[0, query]:
                mask[query] = False
                mask[query, query] = True
        return mask

    masks = stage_masks(layout, stage)
    channels = {"spatial": padded(masks.spatial)}
    if masks.temporal is not None:
        channels["temporal"] = padded(masks.temporal)
    height, width = layout.grid
    slot = torch.cat([model.boi_embedding[None],
                      (model.row_embedding[:, None] + model.column_embedding[None]).reshape(height * width, dim)])
    frames = slot.repeat(layout.num_frames, 1)  # (T * slot_length, D)
    if stage.is_video:
        true_frames = torch.tensor(stage.plan(layout).frame_positions)
        frames = frames + model.frame_embedding[true_frames].repeat_interleave(layout.slot_length, 0)
    x = model.token_embedding.weight[tokens[0]] + torch.cat([model.prefix_position, frames])  # (S, D)
    found = {}
    for layer, block in enumerate(model.blocks):
        attention = block.attention
        normed = F.layer_norm(x, (dim,), block.attention_norm.weight, block.attention_norm.bias)
        outputs = {}
        for channel, mask in channels.items():
            qkv = getattr(attention, f"{channel}_qkv")
            q, k, v = (part.reshape(length, heads, head_dim).transpose(0, 1)
                       for part in (normed @ qkv.weight.T + qkv.bias).split(dim, dim=-1))  # each (heads, S, d)
            weights = (q @ k.transpose(1, 2) / math.sqrt(head_dim)).masked_fill(~mask, float("-inf")).softmax(-1)
            found[(layer, channel)] = weights[:, position]
            projection = getattr(attention, f"{channel}_proj")
            attended = (weights @ v).transpose(0, 1).reshape(length, dim)  # (S, D)
            outputs[channel] = attended @ projection.weight.T + projection.bias
        mixed = outputs["spatial"].clone()
        if "temporal" in outputs:
            gate = torch.sigmoid(attention.mixing)
            mixed[prefix:] = gate * outputs["spatial"][prefix:] + (1 - gate) * outputs["temporal"][prefix:]
        x = x + mixed
        norm = block.feed_forward_norm
        x = x + block.feed_forward(F.layer_norm(x, (dim,), norm.weight, norm.bias))
    return found


# frame -> (stage, fps token rate, the video frames of the stage's slots in slot order, the frame's slot); written out
# from the hierarchy of a 33-frame video (key frames at 1 fps, 3 rounds of groups of 5 slots: true frames 0, 2, 4, 1, 3)
ORIGINS = {
    0: (IMAGE, 1, [0], 0),
    16: (KEYFRAME, 1, [0, 8, 16, 24, 32], 2),
    12: (INTERPOLATE, 2, [0, 8, 16, 4, 12], 4),    # round 1: frames 0..32 by 4
    26: (INTERPOLATE, 4, [24, 28, 32, 26, 30], 3),  # round 2: by 2, the group of frames 24..32
    21: (INTERPOLATE, 8, [20, 22, 24, 21, 23], 3),  # round 3: by 1, the group of frames 20..24
}


@pytest.mark.parametrize("frame, row, col", [(0, 1, 2), (16, 0, 0), (12, 3, 3), (26, 2, 1), (21, 1, 3)])
def test_attention_maps_are_the_softmax_of_the_stage_that_made_the_frame(studio, video, pipeline, frame, row, col):
    stage, rate, slot_frames, slot = ORIGINS[frame]
    model = stage_model(pipeline, stage)
    codes = torch.tensor(studio.json(f"/api/videos/{video['id']}")[1]["codes"])  # (33, 4, 4)
    text = pipeline.text.encode_padded(PROMPT, pipeline.text_length)
    offset, boi = model.layout.image_offset, pipeline.text.boi_id
    slot_ids = [[boi] + (codes[index] + offset).flatten().tolist() for index in slot_frames]  # in slot order
    tokens = torch.tensor([text + [pipeline.text.fps_id(rate)] + [token for ids in slot_ids for token in ids]])
    text_pad = torch.tensor([[token == pipeline.text.pad_id for token in text]])
    slot_length, prefix = 1 + 16, pipeline.text_length + 1
    position = prefix + slot * slot_length + row * 4 + col  # the BOI or the code before (row, col) predicts it

    status, maps = studio.json("/api/attention", {"video": video["id"], "frame": frame, "position": [row, col]})
    assert status == 200, maps
    assert (maps["stage"], maps["rate"], maps["query_position"]) == (stage.name, rate, position)
    assert maps["tokens"] == tokens[0].tolist()
    assert [entry["frame"] for entry in maps["slots"]] == slot_frames
    with torch.no_grad():
        expected = hand_attention(model, tokens, text_pad, stage, position)
    text_positions = [index for index, token in enumerate(text) if token != pipeline.text.pad_id]
    assert maps["text"] == [pipeline.text.decode([text[index]]) for index in text_positions]
    for channel in ("spatial", "temporal"):
        if channel not in stage.channels:
            assert maps["temporal"] is None and maps["gate"] is None
            continue
        reported = maps[channel]
        for layer in range(model.config.depth):
            weights = expected[(layer, channel)]  # (heads, S)
            rebuilt = torch.zeros_like(weights)  # every weight the API reports, put back at its position
            rebuilt[:, text_positions] = torch.tensor(reported["text"][layer])
            rebuilt[:, prefix - 1] = torch.tensor(reported["fps"][layer])
            for shown in reported["frames"]:
                start = prefix + shown["slot"] * slot_length
                rebuilt[:, start] = torch.tensor(shown["boi"][layer])
                rebuilt[:, start + 1:start + slot_length] = torch.tensor(shown["codes"][layer])
            torch.testing.assert_close(rebuilt, weights, atol=1e-5, rtol=1e-4)  # and nothing left out
        seen = {shown["slot"] for shown in reported["frames"]}
        assert seen == ({slot} if channel == "spatial" else
                        {s for s in range(len(slot_frames)) if expected[(0, channel)][0, prefix + s * slot_length] > 0})
    if stage.is_video:
        assert torch.allclose(torch.tensor(maps["gate"]),
                              torch.stack([torch.sigmoid(block.attention.mixing) for block in model.blocks]))


# ------------------------------------------------------------------------------------------------ start-up
def test_a_bundle_that_fails_to_load_stops_start_up_with_one_line(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "keyframe" / "temporal.safetensors").write_bytes(b"not safetensors")
    for directory in (tmp_path / "missing", broken):
        result = run_script(["-m", "cogvideo_lite.studio", "--ckpt", str(directory), "--port", "0"], timeout=120,
                            check=False)
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"python -m cogvideo_lite.studio: error: --ckpt {directory}: ")
        assert lines[0].endswith("; pass a bundle made by python -m cogvideo_lite.bundle")


def test_help_warns_that_0_0_0_0_exposes_the_studio():
    result = run_script(["-m", "cogvideo_lite.studio", "--help"], timeout=120)
    assert "default 127.0.0.1" in result.stdout
    assert "WARNING: --host 0.0.0.0 exposes the studio to the network" in " ".join(result.stdout.split())
