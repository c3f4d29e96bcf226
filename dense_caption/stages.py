"""The caption and QA pipeline stages: the stage contract on top of an async LLM client.

An LLM worker (one Ray actor) runs `llm.videos_in_flight` videos at once on
Ray threads; each thread hands its video's coroutine to the one event loop of
the process, where the shared backend keeps up to `llm.http.max_concurrency`
requests open. A failure after the retries becomes a `VideoError` with its
`llm_*` reason, so the video lands in the rejects and the rest of the run goes
on; the tokens it spent are still counted.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, ClassVar, TypeVar

from dense_caption.captions import CaptionJob, dense_caption_text
from dense_caption.client import ChatBackend, LLMFailure, Usage
from dense_caption.config import LLMConfig
from dense_caption.qa import QAJob, conversation
from dense_caption.templates import Prompts
from pipeline.core.config_run import StageResources
from pipeline.core.errors import Reason, VideoError
from pipeline.core.meta import frame_times
from pipeline.core.records import merge_llm_usage
from pipeline.core.stage import Stage
from pipeline.core.task import VideoTask

T = TypeVar("T")


class EventLoopThread:
    """One asyncio loop per process on a daemon thread; blocking callers submit coroutines to it."""

    _instance: ClassVar["EventLoopThread | None"] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llm-event-loop", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> "EventLoopThread":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]


_backends: dict[tuple[Any, ...], ChatBackend] = {}
_backends_lock = threading.Lock()


def _key(cfg: LLMConfig) -> tuple[Any, ...]:
    return (cfg.backend, cfg.model, cfg.http.url, tuple(cfg.engine.urls), cfg.http.max_concurrency)


def make_backend(cfg: LLMConfig) -> ChatBackend:
    """The process's backend for this config (caption and QA stages share it, and so share its request slots)."""
    key = _key(cfg)
    with _backends_lock:
        if key not in _backends:
            if cfg.backend == "http":
                from dense_caption.http_backend import HttpChatBackend

                _backends[key] = HttpChatBackend(cfg.http.url, cfg.model, cfg.http)
            else:
                from dense_caption.ray_engine import EngineChatBackend

                _backends[key] = EngineChatBackend(cfg)
        return _backends[key]


def add_usage(task: VideoTask, usage: Usage) -> None:
    """A stage's LLM usage into the video's (`meta.llm`, summed over its caption and QA) and its counts."""
    total = dict(task.meta.get("llm") or {})
    merge_llm_usage(total, usage.to_dict())
    total["seconds"] = round(total["seconds"], 3)
    task.meta["llm"] = total
    counts = task.meta.setdefault("counts", {})
    for name in ("requests", "prompt_tokens", "completion_tokens"):
        counts[f"llm_{name}"] = total[name]


class _LLMStage(Stage):
    thread_safe: ClassVar[bool] = True  # many videos at once per worker: that is how the server stays busy

    def __init__(self, cfg: LLMConfig, resources: StageResources | None = None):
        super().__init__(resources)
        self.cfg = cfg

    def setup(self) -> None:
        self._prompts = Prompts(self.cfg.prompts_dir)
        self._backend = make_backend(self.cfg)
        self._loop = EventLoopThread.get()

    def teardown(self) -> None:
        """Close the shared HTTP session once (both LLM stages hold the same backend)."""
        backend = _backends.pop(_key(self.cfg), None)
        if backend is not None:
            self._loop.run(backend.close())

    def _run(self, task: VideoTask, job: Awaitable[T], usage: Usage) -> T:
        try:
            return self._loop.run(job)
        except LLMFailure as e:
            raise VideoError(e.reason, e.detail) from None
        finally:
            usage.peak_in_flight = max(usage.peak_in_flight, getattr(self._backend, "peak_in_flight", 0))
            add_usage(task, usage)


class CaptionStage(_LLMStage):
    """Clip captions, segment summaries and a video caption into `meta['captions']`."""

    name = "caption"
    reads = ("frames", "meta.video", "meta.decode")
    writes = ("meta.captions", "meta.counts", "meta.llm")

    def process(self, task: VideoTask) -> VideoTask:
        c = self.cfg.captions
        duration = float((task.meta.get("video") or {}).get("duration_s") or 0)
        frames = task.frames.get(c.frame_set, [])
        times = frame_times(task.meta, c.frame_set)
        if duration <= 0 or not frames or len(times) != len(frames):
            raise VideoError(Reason.NO_FRAMES, f"no frames with times in set {c.frame_set!r} to caption")
        fps = len(frames) / duration
        usage = Usage()
        job = CaptionJob(self.cfg, self._prompts, self._backend, usage)
        captions = self._run(task, job.run(duration, frames, times, fps), usage)
        task.meta["captions"] = captions
        counts = task.meta.setdefault("counts", {})
        counts["caption_clips"] = len(captions["clips"])
        counts["caption_segments"] = len(captions["segments"])
        counts["caption_video_chars"] = len(captions["video"]["text"])
        return task


class QAStage(_LLMStage):
    """QA pairs from the dense caption into `meta['qa']` and LLaVA conversations."""

    name = "qa"
    reads = ("meta.captions", "meta.video")
    may_read = ("meta.conversations",)
    writes = ("meta.qa", "meta.conversations", "meta.counts", "meta.llm")

    def process(self, task: VideoTask) -> VideoTask:
        captions = task.meta.get("captions")
        if not captions:
            raise VideoError(Reason.LLM_NO_QA, "no dense caption to generate QA from")
        duration = float((task.meta.get("video") or {}).get("duration_s") or 0)
        usage = Usage()
        job = QAJob(self.cfg, self._prompts, self._backend, usage)
        qa = self._run(task, job.run(dense_caption_text(captions), duration), usage)
        task.meta["qa"] = qa
        conversations = task.meta.setdefault("conversations", [])
        conversations.extend(conversation(task.key, n, pair) for n, pair in enumerate(qa["pairs"]))
        counts = task.meta.setdefault("counts", {})
        counts["num_qa"] = len(qa["pairs"])
        counts["num_qa_declined"] = len(qa["declined"])
        counts["num_qa_dropped"] = sum(qa["dropped"].values())
        for pair in qa["pairs"]:
            counts[f"qa_{pair['type']}"] = counts.get(f"qa_{pair['type']}", 0) + 1
        return task
