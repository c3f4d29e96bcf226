"""The shard sample as a contract: one typed, versioned model of a sample's `json` and `conversations.json`.

The sink writes a sample's members from these models and every reader (trainer, eval, viewer, export-llava,
audit, verify) reads them back through `parse_meta` / `parse_conversations`: no reader navigates the JSON by hand.

Stable types, so columnar readers (HF `datasets`, Ray Data, pyarrow) infer one schema from any few samples:
no field is ever null (an absent value is its typed default: 0, "", false, an empty struct), a map whose keys
differ from video to video is a list of `{name, value}` records or a fixed struct, and a list that is empty
for one video and not for the next holds plain text joined by commas (`qa.declined`, `would_reject`).

Versions: `format_version` is "MAJOR.MINOR". A minor version only adds fields with defaults (an older reader
ignores them); a major version changes a meaning or the member layout, and a reader refuses a newer major with
`NewerFormat`. Samples without `format_version` are layout 1 (one `NNNN.jpg` member per frame, dict-shaped
metadata with nulls): `from_layout1` reads them into the same model.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = "2.0"
LAYOUT1_VERSION = "1.0"
FRAMES_MEMBER = "frames.mjpeg"  # the stored frames: their JPEGs back to back (an MJPEG stream), offsets in `frames`
META_MEMBER = "json"
CONVERSATIONS_MEMBER = "conversations.json"


class NewerFormat(ValueError):
    """A sample or shard list written by a newer major format than this code reads."""


def major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise NewerFormat(f"format_version {version!r} is not MAJOR.MINOR") from None


def check_version(version: str, what: str) -> None:
    if major(version) > major(FORMAT_VERSION):
        raise NewerFormat(f"{what} has format_version {version}; this prolongvid reads up to {major(FORMAT_VERSION)}.x: "
                          "upgrade prolongvid to read it")  # fmt: skip


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # a newer minor's fields are ignored


class Named(Model):
    name: str
    value: float


class NamedCount(Model):
    name: str
    count: int


class FileIdentity(Model):
    """The source file the probe read: a re-read (audit) checks size and mtime; zeros when unknown."""

    device: int = 0
    inode: int = 0
    size: int = 0
    mtime_ns: int = 0


class VideoRecord(Model):
    """What the probe learned about the source (display sizes: rotation applied)."""

    path: str
    container: str = ""
    size_bytes: int = 0
    duration_s: float = 0.0
    num_frames: int = 0
    num_frames_exact: bool = False
    avg_fps: float = 0.0
    real_fps: float = 0.0
    width: int = 0
    height: int = 0
    coded_width: int = 0
    coded_height: int = 0
    rotation: int = 0
    codec: str = ""
    pix_fmt: str = ""
    bit_depth: int = 0
    has_audio: bool = False
    keyframe_interval_s: float = Field(0.0, description="mean keyframe spacing near the start; 0: unknown")
    duration_from_stream: bool = True
    variable_frame_rate: bool = False
    declared_duration_s: float = Field(0.0, description="the header's longer duration of a cut file kept; 0: none")
    file_identity: FileIdentity = FileIdentity()


class StagePick(Model):
    """Where a k-frame training stage's frames (the paper's linspace(0, N-1, k) over the video) sit among the
    stored frames."""

    frames: int
    positions: list[int]


class FrameSetRecord(Model):
    """One frame set the decode made: source indices (display order), presentation times, how it was sampled."""

    name: str
    mode: str = ""
    seek: str = ""
    indices: list[int] = []
    timestamps_s: list[float] = []
    target_times_s: list[float] = []
    width: int = 0
    height: int = 0
    max_timestamp_error_s: float = 0.0
    mean_timestamp_error_s: float = 0.0
    num_frames: int = 0
    jpeg_bytes: int = 0
    stages: list[StagePick] = []

    def stage(self, k: int) -> StagePick | None:
        return next((s for s in self.stages if s.frames == k), None)


class DecodeRecord(Model):
    source: str = ""
    decoder: str = ""
    fallback_reason: str = Field("", description="why the default backend was not used; empty: it was")
    num_frames: int = 0
    avg_fps: float = 0.0
    duration_s: float = 0.0
    declared_duration_s: float = 0.0
    frames_decoded: int = 0
    decode_seconds: float = 0.0
    sets: list[FrameSetRecord] = []

    def set(self, name: str) -> FrameSetRecord | None:
        return next((s for s in self.sets if s.name == name), None)


class FramesLayout(Model):
    """Where the stored frames are: frame i is bytes [offsets[i], offsets[i] + sizes[i]) of `member`.
    Layout 1 samples have `member` "" (one `NNNN.jpg` member per frame) and no offsets."""

    member: str = FRAMES_MEMBER
    count: int = 0
    offsets: list[int] = []
    sizes: list[int] = []


class Caption(Model):
    start_s: float = 0.0
    end_s: float = 0.0
    span: str = ""
    text: str = ""
    frames: int = 0  # frames the model saw (clip captions)


class Captions(Model):
    """The dense caption, finest first; empty without the LLM stages."""

    clips: list[Caption] = []
    segments: list[Caption] = []
    video: Caption = Caption()


class QAPair(Model):
    type: str
    format: str  # open | multiple_choice | description
    question: str
    answer: str
    start_s: float = 0.0
    end_s: float = 0.0
    options: list[str] = Field(["", "", "", ""], description="A-D of a multiple-choice pair; four empty strings else")


LLM_DROP_REASONS = ("llm_bad_json", "llm_schema", "llm_empty", "llm_truncated", "llm_invalid", "llm_no_qa",
                    "llm_unavailable", "llm_http_error", "llm_timeout", "near_duplicate_question")  # fmt: skip


class QADropped(Model):
    """QA parts dropped, by reason (a fixed struct: the same fields in every sample)."""

    llm_bad_json: int = 0
    llm_schema: int = 0
    llm_empty: int = 0
    llm_truncated: int = 0
    llm_invalid: int = 0
    llm_no_qa: int = 0
    llm_unavailable: int = 0
    llm_http_error: int = 0
    llm_timeout: int = 0
    near_duplicate_question: int = 0
    other: int = 0


class QARecord(Model):
    pairs: list[QAPair] = []
    declined: str = Field("", description="QA types the LLM declined, comma-separated")
    dropped: QADropped = QADropped()


class LLMUsage(Model):
    """The LLM's work on this video (the run's totals by kind and reason are in run.json)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    retries: int = 0
    failures: int = 0
    parts_asked_again: int = 0
    seconds: float = 0.0


class SampleMeta(Model):
    """A sample's `json` member: everything known about the video except its conversations."""

    format_version: str = FORMAT_VERSION
    key: str
    source: str
    video_rel: str = Field("", description="the source path as the input names it (relative to its video root)")
    split: str = "train"
    frame_set: str = Field(description="the sampling set whose frames the sample stores")
    frames: FramesLayout = FramesLayout()
    video: VideoRecord
    decode: DecodeRecord = DecodeRecord()
    num_frames: int = Field(0, description="a manifest's per-video frame count; 0: none")
    extra_json: str = Field("{}", description="a manifest row's other columns, as a JSON object")
    scores: list[Named] = []
    counts: list[NamedCount] = []
    tokens: list[NamedCount] = Field([], description="tokens per training stage (frames x tokens a frame + text)")
    captions: Captions = Captions()
    qa: QARecord = QARecord()
    llm: LLMUsage = LLMUsage()
    would_reject: str = Field("", description="score-only filters: the reasons they would have rejected for")

    def stored_set(self) -> FrameSetRecord | None:
        return self.decode.set(self.frame_set)

    def extra(self) -> dict[str, Any]:
        return json.loads(self.extra_json or "{}")

    def score(self, name: str) -> float | None:
        return next((s.value for s in self.scores if s.name == name), None)


class Turn(Model):
    from_: str = Field(alias="from")
    value: str


class Conversation(Model):
    """One LLaVA training record of `conversations.json` (the sample is its video)."""

    id: str
    conversations: list[Turn]
    qa_type: str = ""
    num_frames: int = Field(0, description="the record's own frame count; 0: the stage's")
    extra_json: str = Field("{}", description="other fields of an imported record, as a JSON object")

    def turns(self) -> list[dict[str, str]]:
        return [{"from": t.from_, "value": t.value} for t in self.conversations]

    def llava(self, video: str) -> dict[str, Any]:
        """The record as LLaVA annotations hold it: `{id, video, conversations}` plus its other fields."""
        extra = json.loads(self.extra_json or "{}")
        own = {"qa_type": self.qa_type} if self.qa_type else {}
        if self.num_frames:
            own["num_frames"] = self.num_frames
        return {**extra, **own, "id": self.id, "video": video, "conversations": self.turns()}


# ---- writing -------------------------------------------------------------------------------------------------


def _named(values: dict[str, Any] | None) -> list[Named]:
    return [Named(name=k, value=float(v)) for k, v in sorted((values or {}).items()) if v is not None]


def _counts(values: dict[str, Any] | None) -> list[NamedCount]:
    return [NamedCount(name=k, count=int(v)) for k, v in sorted((values or {}).items()) if v is not None]


def _no_nulls(d: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if v is not None}


def _frame_set(name: str, d: dict[str, Any]) -> FrameSetRecord:
    stages = d.get("stages") or {}
    picks = [StagePick(frames=int(k), positions=list(v)) for k, v in sorted(stages.items(), key=lambda kv: int(kv[0]))]
    return FrameSetRecord(**{**_no_nulls(d), "name": d.get("name") or name, "stages": picks})


def _video(d: dict[str, Any]) -> VideoRecord:
    ident = d.get("file_identity") or []
    fields = {k: v for k, v in _no_nulls(d).items() if k != "file_identity"}
    identity = FileIdentity(**dict(zip(("device", "inode", "size", "mtime_ns"), ident))) if len(ident) == 4 else FileIdentity()
    return VideoRecord(**{"path": "", **fields, "file_identity": identity})


def _dropped(d: dict[str, Any] | None) -> QADropped:
    known = {k: int(v) for k, v in (d or {}).items() if k in LLM_DROP_REASONS}
    return QADropped(**known, other=sum(int(v) for k, v in (d or {}).items() if k not in LLM_DROP_REASONS))


def _joined(values: Iterable[Any] | str | None) -> str:
    return values if isinstance(values, str) else ",".join(str(v) for v in (values or []))


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value or "{}"
    return json.dumps(value or {}, sort_keys=True, default=str)


def meta_from_sections(key: str, source: str, frame_set: str, split: str, meta: dict[str, Any],
                       frame_sizes: list[int], member: str = FRAMES_MEMBER, version: str = FORMAT_VERSION) -> SampleMeta:  # fmt: skip
    """The sample's metadata from a task's `meta` sections (`pipeline/meta.py`) and its stored frames' sizes."""
    decode = dict(meta.get("decode") or {})
    sets = decode.pop("sets", None) or {}
    set_list = [_frame_set(n, s) for n, s in sets.items()] if isinstance(sets, dict) else [_frame_set("", s) for s in sets]
    offsets, at = [], 0
    for size in frame_sizes:
        offsets.append(at)
        at += size
    captions = meta.get("captions") or {}
    qa = meta.get("qa") or {}
    return SampleMeta(
        format_version=version,
        key=key,
        source=source,
        video_rel=meta.get("video_rel") or "",
        split=split,
        frame_set=frame_set,
        frames=FramesLayout(member=member, count=len(frame_sizes), offsets=offsets if member else [],
                            sizes=list(frame_sizes) if member else []),  # fmt: skip
        video=_video(meta.get("video") or {"path": source}),
        decode=DecodeRecord(**{**_no_nulls(decode), "sets": set_list}),
        num_frames=int(meta.get("num_frames") or 0),
        extra_json=_json_text(meta.get("extra")),
        scores=_named(meta.get("scores")),
        counts=_counts(meta.get("counts")),
        tokens=_counts(meta.get("tokens")),
        captions=Captions(clips=[Caption(**_no_nulls(c)) for c in captions.get("clips") or []],
                          segments=[Caption(**_no_nulls(c)) for c in captions.get("segments") or []],
                          video=Caption(**_no_nulls(captions.get("video")))),  # fmt: skip
        qa=QARecord(pairs=[_pair(p) for p in qa.get("pairs") or []], declined=_joined(qa.get("declined")),
                    dropped=_dropped(qa.get("dropped"))),  # fmt: skip
        llm=LLMUsage(**{k: v for k, v in _no_nulls(meta.get("llm")).items() if k in LLMUsage.model_fields}),
        would_reject=_joined(meta.get("would_reject")),
    )


def _pair(p: dict[str, Any]) -> QAPair:
    options = [str(o) for o in (p.get("options") or [])]
    return QAPair(**{**_no_nulls(p), "options": (options + [""] * 4)[: max(4, len(options))]})


CONVERSATION_FIELDS = ("id", "conversations", "qa_type", "num_frames")


def conversation_from_record(record: dict[str, Any], fallback_id: str) -> Conversation:
    """A LLaVA record (imported, or made from a QA pair) as the model: other fields go to `extra_json`."""
    turns = [Turn(**{"from": str(t.get("from", "")), "value": str(t.get("value", ""))})
             for t in record.get("conversations") or []]  # fmt: skip
    extra = {k: v for k, v in record.items() if k not in CONVERSATION_FIELDS and k != "video"}
    rid = record.get("id")
    return Conversation(id=str(rid) if rid not in (None, "") else fallback_id, conversations=turns,
                        qa_type=str(record.get("qa_type") or ""), num_frames=int(record.get("num_frames") or 0),
                        extra_json=_json_text(extra))  # fmt: skip


def dump(model: BaseModel) -> bytes:
    return json.dumps(model.model_dump(mode="json", by_alias=True), sort_keys=True).encode()


def dump_conversations(conversations: list[Conversation]) -> bytes:
    return json.dumps([c.model_dump(mode="json", by_alias=True) for c in conversations], sort_keys=True).encode()


# ---- reading -------------------------------------------------------------------------------------------------


def parse_meta(raw: bytes | str | dict[str, Any]) -> SampleMeta:
    """A sample's `json` member as the model, whichever format wrote it (a newer major raises `NewerFormat`)."""
    doc = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    if not isinstance(doc, dict):
        raise ValueError("a sample's json member is not a JSON object")
    version = doc.get("format_version")
    if version is None:
        return from_layout1(doc)
    check_version(str(version), f"sample {doc.get('key', '?')}")
    return SampleMeta.model_validate(doc)


def from_layout1(doc: dict[str, Any]) -> SampleMeta:
    """A layout-1 sample's metadata (one `NNNN.jpg` member per frame) in the current model."""
    set_name = doc.get("frame_set") or ""
    stored = ((doc.get("decode") or {}).get("sets") or {}).get(set_name) or {}
    count = int(stored.get("num_frames") or 0)
    return meta_from_sections(str(doc.get("key") or ""), str(doc.get("source") or ""), set_name, "train", doc,
                              [0] * count, member="", version=LAYOUT1_VERSION)  # fmt: skip


def parse_conversations(raw: bytes | str | list[Any] | None, key: str = "") -> list[Conversation]:
    """A sample's `conversations.json` as the model (layout-1 records with int ids or extra fields included)."""
    doc = json.loads(raw or b"[]") if isinstance(raw, (bytes, str)) or raw is None else raw
    if not isinstance(doc, list):
        raise ValueError("a sample's conversations.json is not a JSON list")
    return [Conversation.model_validate(r) if _is_current(r) else conversation_from_record(r, f"{key}-{n}")
            for n, r in enumerate(doc)]  # fmt: skip


def _is_current(record: Any) -> bool:
    return isinstance(record, dict) and isinstance(record.get("id"), str) and "extra_json" in record
