"""The shard sample as a contract: one typed, versioned model of a sample's `json` and `conversations.json`.

The sink writes a sample's members from these models and every reader (trainer, eval, viewer, export-llava,
audit, verify) reads them back through `sample_io.parse_meta` / `parse_conversations`: no reader navigates the
JSON by hand.

Stable types, so columnar readers (HF `datasets`, Ray Data, pyarrow) infer one schema from any few samples:
no field is ever null (an absent value is its typed default: 0, "", false, an empty struct), a map whose keys
differ from video to video is a list of `{name, value}` records or a fixed struct, and a list that is empty
for one video and not for the next holds plain text joined by commas (`qa.declined`, `would_reject`).

Versions: `format_version` is "MAJOR.MINOR". A minor version only adds fields with defaults (an older reader
ignores them); a major version changes a meaning or the member layout, and a reader refuses a newer major with
`NewerFormat`. Samples without `format_version` are layout 1 (one `NNNN.jpg` member per frame, dict-shaped
metadata with nulls): `sample_io.from_layout1` reads them into the same model.
"""

from __future__ import annotations

import json
from typing import Any

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


class ConversationsMember(Model):
    """The `conversations.json` member: the LLaVA records in an object (Ray Data's `read_webdataset` turns a
    top-level list of one element into that element; an object keeps one record a list)."""

    records: list[Conversation] = []
