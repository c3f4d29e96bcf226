"""Record types shared by every package: what a probe learns, what a decode returns, why a video was dropped,
what writing did.

Plain frozen dataclasses with `to_dict()` so they cross process (Ray) and file
(json, parquet) boundaries unchanged.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from pipeline.core.redact import scrub_urls


def _as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about a file, normalised. Sizes are display sizes (rotation applied)."""

    path: str
    container: str  # ffprobe format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    size_bytes: int
    duration_s: float
    num_frames: int
    num_frames_exact: bool  # False: estimated from duration x average fps
    avg_fps: float
    real_fps: float  # ffprobe r_frame_rate: the base rate; differs from avg_fps on VFR files
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int  # clockwise degrees to turn a decoded frame upright: 0, 90, 180 or 270
    codec: str
    pix_fmt: str
    bit_depth: int
    has_audio: bool
    keyframe_interval_s: float | None  # mean spacing of keyframes near the start; None if unknown
    duration_from_stream: bool = True  # False: only the container's duration is known (it may be the audio's)
    # [st_dev, st_ino, size, mtime_ns] of the file the probe read: a decoder opening the source again must find it
    file_identity: list[int] | None = None

    @property
    def variable_frame_rate(self) -> bool:
        return self.real_fps > 0 and abs(self.real_fps - self.avg_fps) / self.real_fps > 0.01

    def to_dict(self) -> dict[str, Any]:
        return {**_as_dict(self), "variable_frame_rate": self.variable_frame_rate}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VideoInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Rejection:
    """One rejected video, whoever rejected it (a source entry or a stage): the row of the rejects table."""

    source: str
    stage: str
    reason: str
    detail: str = ""
    key: str = ""
    # The input row (record number, from 0) it stands for and how many rows (a LLaVA video: one per record): every
    # input row ends as a sample's, a reject's or a skipped one, so rows add up to the input (`stats --verify`).
    source_row: int = -1
    source_rows: int = 1

    def __post_init__(self) -> None:
        # A URL's password and signature never reach the rejects table (nor a log that prints the reject).
        object.__setattr__(self, "source", scrub_urls(self.source))
        object.__setattr__(self, "detail", scrub_urls(self.detail))

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Rejection":
        text = {k: str(d.get(k) or "") for k in ("source", "stage", "reason", "detail", "key")}
        return cls(**text, source_row=int(d.get("source_row", -1)), source_rows=int(d.get("source_rows", 1)))

    def at_row(self, row: int, rows: int = 1) -> "Rejection":
        return dataclasses.replace(self, source_row=row, source_rows=rows)


@dataclass(frozen=True)
class FrameSet:
    """One named set of frames from a video, JPEG-encoded, in time order.

    `indices` are positions in the decoded frame sequence (display order),
    `timestamps_s` the presentation times of the frames actually returned (from
    the first frame), `target_times_s` the times the sampler aimed for. They
    differ only in keyframe mode, whose error is reported.
    """

    name: str
    mode: str
    seek: str
    indices: list[int]
    timestamps_s: list[float]
    target_times_s: list[float]
    jpegs: list[bytes] = field(repr=False)
    width: int
    height: int
    max_timestamp_error_s: float = 0.0
    mean_timestamp_error_s: float = 0.0
    # A union set (`stage_frames`): for each stage's frame count k, the positions in `indices` of
    # linspace(0, N-1, k) over the whole video; None for a set of one pick.
    stages: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.jpegs)

    def meta(self) -> dict[str, Any]:
        """Everything but the pixels: for json metadata and logs."""
        d = _as_dict(self)
        d.pop("jpegs")
        if d["stages"] is None:
            d.pop("stages")
        d["num_frames"] = len(self.jpegs)
        d["jpeg_bytes"] = sum(len(j) for j in self.jpegs)
        return d


@dataclass(frozen=True)
class DecodeResult:
    """All frame sets of one video from one decode pass, and how they were made."""

    source: str
    decoder: str  # the path that produced the frames: "pyav", "pyav-sequential" or "decord"
    fallback_reason: str | None  # why the default backend was not used, if it was not
    num_frames: int  # frames in the decoder's index (what sampling was planned over)
    avg_fps: float
    duration_s: float  # the decodable span: first frame's start to last frame's end
    declared_duration_s: float | None  # the header's longer duration, when a cut file was kept (decode.truncated: keep)
    frames_decoded: int  # distinct frames turned into pixels
    decode_seconds: float
    sets: dict[str, FrameSet]
    keyframe_interval_s: float | None = None  # mean keyframe spacing in the decoder's index, over the whole video

    def meta(self) -> dict[str, Any]:
        d = {k: v for k, v in _as_dict(self).items() if k not in ("sets", "keyframe_interval_s")}  # the latter: in `video`
        d["sets"] = {name: s.meta() for name, s in self.sets.items()}
        return d


def merge_llm_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    """Add one LLM usage record (`dense_caption.client.Usage.to_dict`) into `total`: counts summed (by_reason and
    by_kind key by key), the earliest start and the latest finish of the working window, the highest peak.
    The one merge: a video's caption and QA usage, and every video's into the run's."""
    for name, value in usage.items():
        if name == "first_at":
            earlier = total.get(name) or value
            total[name] = min(earlier, value) if value else earlier
        elif name in ("last_at", "peak_in_flight"):
            total[name] = max(total.get(name, 0), value)
        elif isinstance(value, (int, float)):
            total[name] = total.get(name, 0) + value
        elif isinstance(value, dict):  # by_reason, by_kind: summed key by key
            merged = dict(total.get(name) or {})
            for key, part in value.items():
                if isinstance(part, dict):
                    inner = dict(merged.get(key) or {})
                    for k, v in part.items():
                        inner[k] = inner.get(k, 0) + v
                    merged[key] = inner
                else:
                    merged[key] = merged.get(key, 0) + part
            total[name] = merged


@dataclass
class VideoMetrics:
    """What the stage harness measured on one video: beside its data, summed by the writer, never in a sample."""

    seconds: dict[str, float] = field(default_factory=dict)  # stage -> the video's own seconds in it
    setup_s: dict[str, float] = field(default_factory=dict)  # stage -> its worker's setup, paid on this video
    started_at: float = 0.0  # epoch seconds when the video's first stage started (0: none ran)

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def add_setup_time(self, stage: str, seconds: float) -> None:
        """A stage's setup in this worker (loading a model, starting a decode child): paid once, not per video."""
        self.setup_s[stage] = self.setup_s.get(stage, 0.0) + seconds

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VideoMetrics":
        return cls(dict(d.get("seconds") or {}), dict(d.get("setup_s") or {}), float(d.get("started_at") or 0.0))


@dataclass
class StageTime:
    """Worker seconds a stage spent on videos, the videos it saw, and its workers' one-off setup seconds."""

    seconds: float = 0.0
    videos: int = 0
    setup_s: float = 0.0
    setups: int = 0  # workers that set the stage up


@dataclass
class WriteTotals:
    """What writing did: one per write task (the sink's summary), and a run's totals: every write task's `add`ed,
    with the rejects of its sources and of dedup."""

    samples: int = 0  # committed to shards
    frames: int = 0  # frames those samples store
    already_committed: int = 0  # a retried task's second copy, dropped
    rejects: Counter = field(default_factory=Counter)  # reason -> videos: the run's one count (`count_rejects`)
    timings: dict[str, StageTime] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)  # the committed shards' records
    llm: dict[str, Any] = field(default_factory=dict)  # LLM usage of every video written or rejected
    first_started_at: float = 0.0  # epoch s: the earliest first stage of a video written here (0: none)
    last_written_at: float = 0.0  # epoch s: when the last write finished

    def add_video(self, metrics: VideoMetrics, llm_usage: dict[str, Any], duration_s: float = 0.0) -> None:
        """One video's stage times (and setups it paid for) and LLM use; `video_s` sums the length of the videos
        the LLM saw."""
        for stage, seconds in metrics.seconds.items():
            self.add_time(stage, seconds, 1)
        for stage, seconds in metrics.setup_s.items():
            self.add_time(stage, 0.0, 0, setup_s=seconds, setups=1)
        if metrics.started_at:
            self.first_started_at = min(self.first_started_at or metrics.started_at, metrics.started_at)
        if llm_usage:
            merge_llm_usage(self.llm, {**llm_usage, "video_s": float(duration_s or 0.0)})

    def count_rejects(self, reasons: Iterable[str]) -> None:
        """Rejects by reason, whoever made them: a stage (through the writer), a source entry, dedup."""
        self.rejects.update(reasons)

    def add_time(self, stage: str, seconds: float, videos: int, setup_s: float = 0.0, setups: int = 0) -> None:
        spent = self.timings.setdefault(stage, StageTime())
        spent.seconds += seconds
        spent.videos += videos
        spent.setup_s += setup_s
        spent.setups += setups

    def add(self, other: "WriteTotals") -> None:
        self.samples += other.samples
        self.frames += other.frames
        self.already_committed += other.already_committed
        self.count_rejects(other.rejects.elements())
        for stage, spent in other.timings.items():
            self.add_time(stage, spent.seconds, spent.videos, spent.setup_s, spent.setups)
        self.shards.extend(other.shards)
        if other.first_started_at:
            self.first_started_at = min(self.first_started_at or other.first_started_at, other.first_started_at)
        self.last_written_at = max(self.last_written_at, other.last_written_at)
        merge_llm_usage(self.llm, other.llm)

    def llm_summary(self, wall_s: float) -> dict[str, Any]:
        """run.json's `llm`: requests, tokens, retries, failures; tokens/s over `active_s` (first request sent to
        last answer received); the prefix cache's share of prompt tokens; tokens per minute of video captioned."""
        total = Counter(self.llm)  # a missing count reads 0
        if not total:
            return {}
        first, last, video_s = total.pop("first_at", 0), total.pop("last_at", 0), total.pop("video_s", 0.0)
        out: dict[str, Any] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in total.items()}
        active = max(0.0, last - first) if first else wall_s
        prompt, completion, cached = total["prompt_tokens"], total["completion_tokens"], total["cached_prompt_tokens"]
        out["active_s"] = round(active, 3)
        out["tokens_per_s"] = round((prompt + completion) / active, 1) if active > 0 else 0.0
        out["completion_tokens_per_s"] = round(completion / active, 1) if active > 0 else 0.0
        out["prefilled_prompt_tokens"] = prompt - cached  # what the server computed: cached tokens cost ~nothing
        out["prefix_cache_hit_rate"] = round(cached / prompt, 4) if prompt else 0.0
        minutes = video_s / 60.0
        out["video_minutes"] = round(minutes, 3)
        for name, value in (("prompt", prompt), ("prefilled", prompt - cached), ("completion", completion)):
            out[f"{name}_tokens_per_video_minute"] = round(value / minutes, 1) if minutes > 0 else 0.0
        by_kind = {kind: dict(counts) for kind, counts in (out.get("by_kind") or {}).items()}
        for counts in by_kind.values():  # which prompts cost what
            prefilled = counts.get("prompt_tokens", 0) - counts.get("cached_prompt_tokens", 0)
            counts["prefilled_tokens_per_video_minute"] = round(prefilled / minutes, 1) if minutes > 0 else 0.0
        if by_kind:
            out["by_kind"] = by_kind
        return out

    def window_s(self) -> float:
        """The processing window: the first video's first stage to the last write (0 when nothing was written)."""
        if not (self.first_started_at and self.last_written_at):
            return 0.0
        return max(0.0, self.last_written_at - self.first_started_at)

    def stage_rates(self) -> dict[str, dict[str, float]]:
        """Per stage: worker seconds on videos, videos, videos per worker-second, and the workers' setup seconds
        (run.json's `stages`)."""
        return {stage: {"seconds": round(t.seconds, 3), "videos": int(t.videos),
                        "videos_per_worker_s": round(t.videos / t.seconds, 3) if t.seconds > 0 else 0.0,
                        "setup_s": round(t.setup_s, 3), "setups": t.setups}
                for stage, t in self.timings.items()}  # fmt: skip
