"""The studio's worker: one thread runs the generations one at a time, in the order they were asked for, keeps the
finished videos (codes, frames, mp4 and gif files), and runs the attention inspector between generations.

Every use of the models holds one lock: the inspector sets recorders on the models' layers, and the models are not
meant for two threads at once; so an inspection waits for a running generation to end. A job reports what it does as
a list of events (queued, started, step with the new frames as PNG data URLs, done, failed, cancelled) that any number
of readers poll. A job whose asker went away is cancelled: before it starts, or at its next step (frame 0, the key
frames, each round: a `sample.pipeline.Step`), so a departed client costs at most one step of model time and never
blocks the queue.

Knows the pipeline, the request and the media writers; does not know HTTP or the page.
"""

from __future__ import annotations

import base64
import io
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cogvideo_lite.data.media import write_gif, write_mp4
from cogvideo_lite.model.layout import is_integer
from cogvideo_lite.sample.pipeline import Pipeline, Request, Step, Video, decode_codes, generate_videos
from cogvideo_lite.studio.form import GenerationRequest, RequestError
from cogvideo_lite.studio.inspector import frame_origin, inspect_attention

logger = logging.getLogger(__name__)

KEPT_VIDEOS = 100  # finished videos kept in memory and on disk; the oldest goes first


class Cancelled(Exception):
    """Raised inside a generation whose asker went away."""


@dataclass
class Job:
    id: str
    request: GenerationRequest
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    state: str = "queued"  # queued -> running -> done | failed | cancelled
    events: list[dict] = field(default_factory=list)
    video: dict | None = None  # the finished video's summary (`Studio.summary`)
    error: str | None = None
    cancel_asked: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def report(self, kind: str, **data) -> None:
        self.events.append({"event": kind, **data})  # list.append is atomic: readers poll without a lock

    def finish(self, state: str, kind: str, **data) -> None:
        self.state = state
        self.report(kind, **data)
        self.finished.set()


@dataclass
class StoredVideo:
    video: Video
    summary: dict
    files: dict[str, Path]  # "mp4", "gif" -> path


class Studio:
    def __init__(self, pipeline: Pipeline, directory: Path, kept_videos: int = KEPT_VIDEOS) -> None:
        self.pipeline = pipeline
        self.directory = directory
        self.kept_videos = kept_videos
        self.videos: OrderedDict[str, StoredVideo] = OrderedDict()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []  # queued jobs in order, for their place in the queue
        self._running: Job | None = None
        self._bookkeeping = threading.Lock()  # guards _waiting, _running and videos
        self._model_lock = threading.Lock()  # one use of the models at a time
        self._thread = threading.Thread(target=self._work, name="studio-worker", daemon=True)

    # ---------------------------------------------------------------- queue
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Let the running job finish its step, drop the queued ones, and end the worker."""
        with self._bookkeeping:
            for job in self._waiting:
                job.cancel_asked.set()
            if self._running is not None:
                self._running.cancel_asked.set()
        self._queue.put(None)
        self._thread.join()

    def submit(self, request: GenerationRequest) -> Job:
        job = Job(id=secrets.token_hex(6), request=request)
        with self._bookkeeping:
            self._waiting.append(job)
            job.report("queued", ahead=len(self._waiting) - 1 + (self._running is not None))
        self._queue.put(job)
        return job

    def ahead_of(self, job: Job) -> int:
        """How many jobs run before `job` starts (the running one included); 0 once it runs."""
        with self._bookkeeping:
            if job not in self._waiting:
                return 0
            return self._waiting.index(job) + (self._running is not None)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._bookkeeping:
                self._waiting.remove(job)
                self._running = None if job.cancel_asked.is_set() else job
            if job.cancel_asked.is_set():
                self._cancelled(job, "before it started")
                continue
            try:
                self._run(job)
            finally:
                with self._bookkeeping:
                    self._running = None

    # ---------------------------------------------------------------- generation
    def _run(self, job: Job) -> None:
        request = job.request
        job.started, job.state = time.monotonic(), "running"
        job.report("started", steps=self.step_count(request))
        knobs, rounds_knobs = request.sampling_knobs()
        sent: set[int] = set()  # video frames already shown
        try:
            with self._model_lock:
                video = generate_videos(self.pipeline, Request([request.prompt], request.fps, request.rounds,
                                                               request.seed), knobs, rounds_knobs, batch_size=1,
                                        progress=False, on_step=lambda step: self._report_step(job, step, sent))[0]
            stored = self._store(job, video)
        except Cancelled:
            self._cancelled(job, "while it ran")
            return
        except Exception as error:  # noqa: BLE001 -- a failed generation must not end the worker
            logger.exception("job %s failed", job.id)
            job.error = f"generation failed: {type(error).__name__}: {error}"
            job.finish("failed", "failed", error=job.error)
            return
        job.video = stored.summary
        job.finish("done", "done", video=stored.summary)

    @staticmethod
    def _cancelled(job: Job, when: str) -> None:
        logger.info("job %s cancelled: its client went away (%s)", job.id, when)
        job.finish("cancelled", "cancelled")

    def step_count(self, request: GenerationRequest) -> int:
        """Generation steps of one video: frame 0 (unless the key-frame model makes it), key frames, each round."""
        return (not self.pipeline.keyframe_makes_first_frame) + 1 + request.rounds

    def _report_step(self, job: Job, step: Step, sent: set[int]) -> None:
        """Show the frames this step made (in video frame numbers), or stop the generation if its asker left."""
        if job.cancel_asked.is_set():
            raise Cancelled
        spacing = 2 ** (job.request.rounds - step.round)  # video frames between the frames made so far
        new = [index for index in range(step.codes.shape[1]) if index * spacing not in sent]
        frames = decode_codes(self.pipeline, step.codes[:, new])[0]  # (n, H, W, 3) uint8
        sent.update(index * spacing for index in new)
        done = 1 + sum(event["event"] == "step" for event in job.events)
        job.report("step", name=step.name, round=step.round, done=done,
                   frames=[{"index": index * spacing, "png": png_data_url(frame)} for index, frame in zip(new, frames)])

    def _store(self, job: Job, video: Video) -> StoredVideo:
        files = {"mp4": self.directory / f"{job.id}.mp4", "gif": self.directory / f"{job.id}.gif"}
        write_mp4(files["mp4"], video.frames, video.fps)
        write_gif(files["gif"], video.frames, video.fps)
        stored = StoredVideo(video, self.summary(job, video), files)
        with self._bookkeeping:
            self.videos[job.id] = stored
            while len(self.videos) > self.kept_videos:
                _, old = self.videos.popitem(last=False)
                for path in old.files.values():
                    path.unlink(missing_ok=True)
        return stored

    def summary(self, job: Job, video: Video) -> dict:
        """What the API answers about a finished video."""
        request = job.request
        made_by = [frame_origin(self.pipeline, video, frame) for frame in range(len(video.frames))]
        return {"id": job.id, "prompt": request.prompt, "seed": request.seed, "fps": video.fps,
                "key_rate": video.key_rate, "rounds": request.rounds, "num_frames": len(video.frames),
                "key_indices": video.key_indices, "knobs": request.knobs,
                "made_by": [origin.stage.name if origin.round == 0 else f"round {origin.round}" for origin in made_by],
                "mp4": f"/videos/{job.id}.mp4", "gif": f"/videos/{job.id}.gif",
                "seconds": {"queued": round(job.started - job.created, 3),
                            "generating": round(time.monotonic() - job.started, 3)},
                "finished_at": round(time.time(), 3)}  # Unix time

    # ---------------------------------------------------------------- inspection
    def stored(self, video_id: object) -> StoredVideo:
        with self._bookkeeping:
            stored = self.videos.get(video_id) if isinstance(video_id, str) else None
        if stored is None:
            raise RequestError(f"video {video_id!r}: no such video here (the studio keeps the last {self.kept_videos}"
                               "); generate one with POST /api/generate", status=404)
        return stored

    def inspect(self, video_id: object, frame: object, position: object) -> dict:
        """The attention maps of code `position` = [row, col] of frame `frame` of a finished video."""
        stored = self.stored(video_id)
        count, (height, width) = len(stored.video.frames), self.pipeline.image.layout.grid
        if not is_integer(frame) or not 0 <= frame < count:
            raise RequestError(f"frame {frame!r}: the video has {count} frames; choose 0..{count - 1}")
        if not (isinstance(position, list) and len(position) == 2 and all(map(is_integer, position))
                and 0 <= position[0] < height and 0 <= position[1] < width):
            raise RequestError(f"position {position!r}: expected [row, col] on the {height}x{width} code grid: "
                               f"row 0..{height - 1}, col 0..{width - 1}")
        with self._model_lock:
            maps = inspect_attention(self.pipeline, stored.video, frame, *position)
        return {"video": video_id, **maps}


def png_data_url(frame: np.ndarray) -> str:
    """One frame (H, W, 3) uint8 as a data:image/png URL."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
