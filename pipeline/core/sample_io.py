"""Conversions of the sample model (`pipeline/core/sample.py`): a task's meta sections and LLaVA records into the
model (the writer), and a sample's members back into it from any format version (every reader).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from pydantic import BaseModel

from pipeline.core.sample import (FORMAT_VERSION, LAYOUT1_VERSION, LLM_DROP_REASONS, Caption, Captions, Conversation,
                             ConversationsMember, DecodeRecord, FileIdentity, FrameSetRecord, FramesLayout, LLMUsage,
                             Named, NamedCount, QADropped, QAPair, QARecord, SampleMeta, StagePick, Turn, VideoRecord,
                             FRAMES_MEMBER, check_version)  # fmt: skip


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


def _video(d: dict[str, Any], source: str) -> VideoRecord:
    """The probe's record; for a remote source the URL and the size, not the node-local copy's path, inode and
    mtime (gone with the copy, and different at every fetch: the same video would store different bytes)."""
    ident = d.get("file_identity") or []
    fields = {k: v for k, v in _no_nulls(d).items() if k != "file_identity"}
    identity = FileIdentity(**dict(zip(("device", "inode", "size", "mtime_ns"), ident))) if len(ident) == 4 else FileIdentity()
    if "://" in source:
        fields["path"], identity = source, FileIdentity(size=identity.size)
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
    """The sample's metadata from a task's `meta` sections (`pipeline/core/meta.py`) and its stored frames' sizes."""
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
        video=_video(meta.get("video") or {"path": source}, source),
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
    return dump(ConversationsMember(records=conversations))


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
    count = int(stored.get("num_frames") or len(stored.get("indices") or []))
    return meta_from_sections(str(doc.get("key") or ""), str(doc.get("source") or ""), set_name, "train", doc,
                              [0] * count, member="", version=LAYOUT1_VERSION)  # fmt: skip


def parse_conversations(raw: bytes | str | list[Any] | dict[str, Any] | None, key: str = "") -> list[Conversation]:
    """A sample's `conversations.json` as the model: format 2's `{"records": [...]}` or layout 1's bare list of
    LLaVA records (int ids and extra fields included)."""
    doc = json.loads(raw or b"[]") if isinstance(raw, (bytes, str)) or raw is None else raw
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        return ConversationsMember.model_validate(doc).records
    if not isinstance(doc, list):
        raise ValueError("a sample's conversations.json is neither {\"records\": [...]} nor a list of LLaVA records")
    return [Conversation.model_validate(r) if _is_current(r) else conversation_from_record(r, f"{key}-{n}")
            for n, r in enumerate(doc)]  # fmt: skip


def _is_current(record: Any) -> bool:
    return isinstance(record, dict) and isinstance(record.get("id"), str) and "extra_json" in record
