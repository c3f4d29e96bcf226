"""The declared data between stages: every section of a task's `meta`, typed, and who may provide it.

A stage names what it `reads` (must be there), `may_read` (used when there)
and `writes`, as `frames` or `meta.<section>`; the names are checked against
`SECTIONS` when the stage class is defined, and `check_data_flow` checks at
build time that every read of a stage is written by a source or an earlier
stage. With PROLONGVID_STRICT_META=1 (the test suite sets it) every section a
product stage writes is validated against its type, and a section it did not
declare fails the video.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from typing_extensions import NotRequired, TypedDict  # pydantic validates these on Python 3.11


class VideoSection(TypedDict):
    """`meta.video`: what the probe learned (`records.VideoInfo.to_dict`)."""

    path: str
    container: str
    size_bytes: int
    duration_s: float
    num_frames: int
    num_frames_exact: bool
    avg_fps: float
    real_fps: float
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    codec: str
    pix_fmt: str
    bit_depth: int
    has_audio: bool
    keyframe_interval_s: float | None
    duration_from_stream: bool
    variable_frame_rate: bool
    declared_duration_s: NotRequired[float]  # the header's longer duration of a cut file kept (decode.truncated: keep)
    file_identity: NotRequired[list[int] | None]  # [st_dev, st_ino, size, mtime_ns] the probe read (pipeline/video/opened.py)


class FrameSetSection(TypedDict):
    """One frame set of `meta.decode.sets` (`records.FrameSet.meta`)."""

    name: str
    mode: str
    seek: str
    indices: list[int]
    timestamps_s: list[float]
    target_times_s: list[float]
    width: int
    height: int
    max_timestamp_error_s: float
    mean_timestamp_error_s: float
    num_frames: int
    jpeg_bytes: int
    stages: NotRequired[dict[str, list[int]]]


class DecodeSection(TypedDict):
    """`meta.decode`: how the frames were made (`records.DecodeResult.meta`)."""

    source: str
    decoder: str
    fallback_reason: str | None
    num_frames: int
    avg_fps: float
    duration_s: float
    declared_duration_s: float | None
    frames_decoded: int
    decode_seconds: float
    sets: dict[str, FrameSetSection]


class CaptionSpan(TypedDict):
    start_s: float
    end_s: float
    span: str
    text: str


class CaptionsSection(TypedDict):
    """`meta.captions`: the dense caption, finest first."""

    clips: list[CaptionSpan]
    segments: list[CaptionSpan]
    video: CaptionSpan


class QASection(TypedDict):
    """`meta.qa`: the QA pairs kept, and what the LLM declined or was dropped (by reason)."""

    pairs: list[dict[str, Any]]
    declined: Any
    dropped: dict[str, int]


class ConversationRecord(TypedDict):
    """One LLaVA training record of `meta.conversations`."""

    id: Any
    conversations: list[dict[str, Any]]


# Every section of `meta`, by name.
class ListingSection(TypedDict):
    """`meta.listing`: a remote video as its listing saw it; a fetch that finds another size or ETag is a changed
    source."""

    size: int
    etag: str


class FetchedSection(TypedDict):
    """`meta.fetched`: the node-local copy of a remote video the probe and decode read (removed when the video's
    pool is done with it)."""

    path: str
    bytes: int


SECTIONS: dict[str, Any] = {
    "video_rel": str,  # the source path as the input names it
    "listing": ListingSection,
    "fetched": FetchedSection,
    "extra": dict[str, Any],  # a manifest row's other columns
    "num_frames": int,  # a per-sample frame count from the manifest
    "video": VideoSection,
    "decode": DecodeSection,
    "scores": dict[str, float],
    "counts": dict[str, int],
    "embedding": list[float],
    "captions": CaptionsSection,
    "qa": QASection,
    "conversations": list[ConversationRecord],
    "llm": dict[str, Any],  # request and token accounting (`dense_caption.client.Usage.to_dict`)
    "tokens": dict[str, int],
    "would_reject": list[str],  # score-only filters: what would have been rejected
}
FRAMES = "frames"
# Written for any stage by the harness (`run_stage`, for a score-only filter's `Verdict`), whatever the stage declares;
# what the harness measures (stage seconds, setups) travels beside the data (`VideoTask.metrics`), never in `meta`.
HARNESS_WRITES = ("meta.would_reject",)
# What sources put on a task before the first stage, by input format.
SOURCE_WRITES = {
    "folder": (),
    "manifest": ("meta.video_rel", "meta.extra", "meta.num_frames", "meta.conversations"),
    "llava": ("meta.video_rel", "meta.conversations"),
}


def check_names(owner: str, names: Iterable[str]) -> None:
    """Every declared name is `frames` or `meta.<a section of SECTIONS>`."""
    for name in names:
        if name != FRAMES and not (name.startswith("meta.") and name[5:] in SECTIONS):
            raise TypeError(f"{owner} declares {name!r}: not `frames` nor `meta.<section>` of {sorted(SECTIONS)}")


def check_data_flow(stages: Iterable[Any], provided: Iterable[str]) -> list[str]:
    """Problems, in order: each stage read that neither the sources nor an earlier stage writes.

    A stage may carry `config_field`, the config path that put it in the graph; the problem names it.
    """
    written = set(provided) | set(HARNESS_WRITES)
    problems = []
    for stage in stages:
        missing = [r for r in stage.reads if r not in written]
        if missing:
            field = getattr(stage, "config_field", "") or stage.name
            problems.append(f"{field}: stage {stage.name} reads {', '.join(missing)}, which no source or earlier "
                            "stage writes")  # fmt: skip
        written |= set(stage.writes)
    return problems


def frame_times(meta: dict[str, Any], set_name: str) -> list[float]:
    """The presentation times of a frame set the decode made (`meta.decode.sets[name].timestamps_s`), [] if none."""
    sets = (meta.get("decode") or {}).get("sets") or {}
    return list((sets.get(set_name) or {}).get("timestamps_s") or [])


PRODUCT_PACKAGES = ("pipeline", "filters", "dense_caption", "shards", "train")


def strict(stage: Any) -> bool:
    """Check this stage's writes? Product stages, when PROLONGVID_STRICT_META is set (a test's ad-hoc stage is free)."""
    on = os.environ.get("PROLONGVID_STRICT_META", "") not in ("", "0")
    return on and type(stage).__module__.partition(".")[0] in PRODUCT_PACKAGES


_ADAPTERS: dict[str, Any] = {}


def check_written(stage: Any, before: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """Strict mode: a section the stage changed without declaring it, or one that does not fit its type."""
    from pydantic import TypeAdapter, ValidationError

    allowed = set(stage.writes) | set(HARNESS_WRITES)
    for key, value in meta.items():
        if key in before and before[key] == value:
            continue
        if f"meta.{key}" not in allowed:
            return f"stage {stage.name} wrote meta.{key}, which it does not declare in `writes`"
        if key not in SECTIONS:
            return f"stage {stage.name} wrote meta.{key}, a section not declared in pipeline/core/meta.py"
        adapter = _ADAPTERS.get(key) or _ADAPTERS.setdefault(key, TypeAdapter(SECTIONS[key]))
        try:
            adapter.validate_python(value, strict=False)
        except ValidationError as e:
            return f"stage {stage.name} wrote meta.{key} that does not fit its type: {str(e)[:500]}"
    return None
