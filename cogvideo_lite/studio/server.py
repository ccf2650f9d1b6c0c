"""The studio's HTTP face: a FastAPI app with one hand-written page and a JSON API (documented in the README).

    GET  /                       the page (static/index.html, studio.js, studio.css; nothing from the internet)
    GET  /api/info               the bundle: rates, rounds, defaults, grid, layers, heads, the stage of frame 0
    POST /api/generate           {prompt, seed, fps, rounds, knobs...} -> the finished video's summary (JSON)
    POST /api/generate/stream    the same, as Server-Sent Events: queued, started, step (new frames), done | failed
    GET  /api/videos/{id}        a finished video's summary and its codes
    GET  /videos/{id}.mp4|.gif   the video files
    POST /api/attention          {video, frame, position: [row, col]} -> the attention maps and gates (JSON)

A refused request gets a 4xx with {"error": message}, the message worded as sample.py words it. A client that goes
away while its generation waits or runs cancels it (`worker.Studio`). Knows HTTP and the worker; does not know the
model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from cogvideo_lite.sample.knobs import KNOB_RULES
from cogvideo_lite.sample.pipeline import max_rounds
from cogvideo_lite.studio.form import (DEFAULT_SEED, KNOB_NAMES, RequestError, check_knobs, check_rate_and_rounds,
                                       parse_generation, read_json)
from cogvideo_lite.studio.worker import Job, Studio
from cogvideo_lite.text import EXAMPLE_PROMPT

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024  # far above any prompt a text model of this size takes
POLL_SECONDS = 0.1  # how often a waiting request looks at its job and at its client
KEEPALIVE_SECONDS = 10.0  # a stream comment this often keeps proxies from closing a long wait
MEDIA_TYPES = {"mp4": "video/mp4", "gif": "image/gif"}


def create_app(studio: Studio) -> FastAPI:
    app = FastAPI(title="cogvideo_lite studio", docs_url=None, redoc_url=None)  # their pages load from a CDN
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    async def info() -> dict:
        return describe(studio)

    @app.post("/api/generate")
    async def generate(request: Request) -> Response:
        job = await submit(studio, request)
        try:
            while not job.finished.is_set():
                if await request.is_disconnected():
                    job.cancel_asked.set()
                    return Response(status_code=499)  # nobody reads it: nginx's "client closed request"
                await asyncio.sleep(POLL_SECONDS)
        except asyncio.CancelledError:
            job.cancel_asked.set()
            raise
        if job.state != "done":
            return JSONResponse({"error": job.error or f"generation {job.state}"}, status_code=500)
        return JSONResponse(job.video)

    @app.post("/api/generate/stream")
    async def generate_stream(request: Request) -> StreamingResponse:
        job = await submit(studio, request)
        return StreamingResponse(events(studio, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/videos/{video_id}")
    async def video(video_id: str) -> dict:
        stored = studio.stored(video_id)
        return {**stored.summary, "codes": stored.video.codes.tolist()}

    @app.get("/videos/{name}")
    async def video_file(name: str) -> FileResponse:
        video_id, _, kind = name.partition(".")
        if kind not in MEDIA_TYPES:
            raise RequestError(f"{name}: no such file; ask for ID.mp4 or ID.gif", status=404)
        stored = studio.stored(video_id)
        return FileResponse(stored.files[kind], media_type=MEDIA_TYPES[kind], filename=f"cogvideo-{name}")

    @app.post("/api/attention")
    async def attention(request: Request) -> dict:
        fields = read_json(await read_body(request))
        unknown = sorted(set(fields) - {"video", "frame", "position"})
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(unknown)}; expected video, frame, position")
        return await asyncio.to_thread(studio.inspect, fields.get("video"), fields.get("frame"),
                                       fields.get("position"))

    return app


def describe(studio: Studio) -> dict:
    """What the page needs to draw its form and its inspector; the defaults are what a request that leaves its
    fields out gets."""
    pipeline = studio.pipeline
    model = pipeline.interpolate.config
    fps, rounds = check_rate_and_rounds(pipeline, None, None)
    return {"bundle": pipeline.directory.resolve().name, "rates": list(pipeline.rates),
            "max_rounds": {str(rate): max_rounds(pipeline.rates, rate) for rate in pipeline.rates},
            "defaults": {"prompt": EXAMPLE_PROMPT, "seed": DEFAULT_SEED, "fps": fps, "rounds": rounds,
                         **check_knobs(pipeline, {})},
            "knobs": list(KNOB_NAMES), "has_expert": pipeline.expert is not None,
            "nullable_knobs": [name for name in KNOB_NAMES if KNOB_RULES[name].nullable],
            "text_length": pipeline.text_length, "grid": list(pipeline.image.layout.grid),
            "frame_size": pipeline.tokenizer.config.image_size, "key_frames": pipeline.num_key_frames,
            "first_frame_by": "keyframe" if pipeline.keyframe_makes_first_frame else "image",
            "layers": model.depth, "heads": model.heads}


async def read_body(request: Request) -> bytes:
    """The request body, refused past MAX_BODY_BYTES without reading it all."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes; send a JSON object like "
                               f"{{\"prompt\": \"{EXAMPLE_PROMPT}\"}}", status=413)
    return bytes(body)


async def submit(studio: Studio, request: Request) -> Job:
    """Check the request (a RequestError answers 4xx) and queue its generation."""
    fields = read_json(await read_body(request))
    return studio.submit(parse_generation(studio.pipeline, fields))


async def events(studio: Studio, job: Job) -> AsyncIterator[str]:
    """The job's events as Server-Sent Events, with its place in the queue while it waits; ends when the job ends.
    If the client goes away first, Starlette cancels this generator and the job is cancelled."""
    sent, ahead, quiet = 0, None, 0.0
    try:
        while True:
            while sent < len(job.events):
                event = job.events[sent]
                sent += 1
                yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"
                quiet = 0.0
            if job.finished.is_set() and sent == len(job.events):
                return
            if job.state == "queued" and (now := studio.ahead_of(job)) != ahead:
                if ahead is not None:
                    yield f"event: queued\ndata: {json.dumps({'event': 'queued', 'ahead': now})}\n\n"
                ahead = now
            if quiet >= KEEPALIVE_SECONDS:
                yield ": still working\n\n"
                quiet = 0.0
            await asyncio.sleep(POLL_SECONDS)
            quiet += POLL_SECONDS
    finally:
        if not job.finished.is_set():
            job.cancel_asked.set()
