"""The sample as a contract: the schema in docs/ is the model's, versions are checked, layout 1 still reads, and
no product module reads a sample's members by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.core.sample import FORMAT_VERSION, LAYOUT1_VERSION, NewerFormat, SampleMeta
from pipeline.core.sample_io import conversation_from_record, meta_from_sections, parse_conversations, parse_meta
from pipeline.core.sample_schema import render, schemas
from shards.layout import Sample, sample_from_sections

ROOT = Path(__file__).resolve().parents[2]

SECTIONS = {  # a task's meta sections as the stages write them, nulls and per-video keys included
    "video_rel": "a/b.mp4",
    "extra": {"lang": "en", "n": 3, "tags": ["x"], "none": None},
    "num_frames": 64,
    "video": {"path": "/v/b.mp4", "duration_s": 10, "avg_fps": 30.0, "keyframe_interval_s": None, "width": 320,
              "height": 180, "file_identity": [1, 2, 3, 4], "variable_frame_rate": True},
    "decode": {"decoder": "pyav", "fallback_reason": None, "declared_duration_s": None, "num_frames": 300,
               "sets": {"shard": {"name": "shard", "indices": [0, 150, 299], "timestamps_s": [0.0, 5.0, 9.97],
                                  "stages": {"2": [0, 2], "3": [0, 1, 2]}},
                        "caption": {"name": "caption", "indices": [0], "timestamps_s": [0.0]}}},
    "scores": {"sharpness": 12, "motion": 1.5},
    "counts": {"num_qa": 2, "qa_binary": 1},
    "tokens": {"stage1": 100},
    "captions": {"clips": [{"start_s": 0, "end_s": 10, "span": "[00:00-00:10]", "text": "t", "frames": 4}],
                 "segments": [], "video": {"start_s": 0, "end_s": 10, "span": "s", "text": "v"}},
    "qa": {"pairs": [{"type": "count", "format": "open", "question": "q", "answer": "a", "start_s": 1, "end_s": 2},
                     {"type": "binary", "format": "multiple_choice", "question": "q", "answer": "A",
                      "options": ["1", "2", "3", "4"]}],
           "declined": ["plot", "speed"], "dropped": {"llm_bad_json": 2, "surprise": 1}},
    "llm": {"requests": 3, "by_kind": {"qa": {"requests": 1}}, "first_at": 1.0},
    "would_reject": ["blurry"],
    "timings": {"decode": 1.0},
}


def nulls(value, path="") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nulls(v, f"{path}[{i}]")]
    return []


def test_the_schema_files_in_docs_are_generated_from_the_model():
    for name, schema in schemas().items():
        path = ROOT / "docs" / name
        assert path.read_text() == render(schema), f"{path} is stale: run `python -m pipeline.core.sample_schema docs/`"
    assert FORMAT_VERSION in (ROOT / "docs" / "sample.schema.json").read_text()


def test_a_sample_from_sections_has_typed_defaults_and_no_null():
    members = sample_from_sections("k1", [b"\xff\xd8a\xff\xd9", b"\xff\xd8bb\xff\xd9", b"\xff\xd8c\xff\xd9"], SECTIONS,
                                   [{"id": 7, "video": "x.mp4", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                                  {"from": "gpt", "value": "a"}],
                                     "data_source": "mine"}])  # fmt: skip
    assert sorted(members) == ["__key__", "conversations.json", "frames.mjpeg", "json"]
    doc = json.loads(members["json"])
    assert nulls(doc) == [] and doc["format_version"] == FORMAT_VERSION
    meta = SampleMeta.model_validate(doc)
    assert meta.video.keyframe_interval_s == 0.0 and meta.decode.fallback_reason == "" and meta.decode.declared_duration_s == 0.0
    assert meta.stored_set().stage(2).positions == [0, 2] and [s.name for s in meta.decode.sets] == ["shard", "caption"]
    assert meta.extra() == {"lang": "en", "n": 3, "tags": ["x"], "none": None}
    assert meta.qa.declined == "plot,speed" and meta.qa.dropped.llm_bad_json == 2 and meta.qa.dropped.other == 1
    assert meta.qa.pairs[0].options == ["", "", "", ""] and meta.qa.pairs[1].options == ["1", "2", "3", "4"]
    assert meta.would_reject == "blurry" and meta.llm.requests == 3 and meta.video.file_identity.mtime_ns == 4
    assert [s.value for s in meta.scores] == [1.5, 12.0]  # one type: floats, even from an int
    sample = Sample(members)
    assert sample.frames([2, 0]) == [b"\xff\xd8c\xff\xd9", b"\xff\xd8a\xff\xd9"] and sample.num_frames == 3
    record = sample.conversations[0]
    assert record.id == "7" and record.llava("x.mp4") == {"id": "7", "video": "x.mp4", "data_source": "mine",
                                                         "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                           {"from": "gpt", "value": "a"}]}  # fmt: skip


def test_a_newer_major_format_is_refused_with_a_message(tmp_path):
    meta = meta_from_sections("k", "/v.mp4", "shard", "train", SECTIONS, [3])
    doc = meta.model_dump(mode="json")
    parse_meta({**doc, "format_version": f"{FORMAT_VERSION.split('.')[0]}.9", "new_field": 1})  # a newer minor reads
    with pytest.raises(NewerFormat, match=r"format_version 3\.0.*upgrade prolongvid"):
        parse_meta({**doc, "format_version": "3.0"})
    from shards.layout import RunDir
    from shards.reader import read_shard_list

    run = RunDir(tmp_path)
    run.shards_json.write_text(json.dumps([{"name": "a.tar", "format_version": "3.1"}]))
    with pytest.raises(NewerFormat, match="shard a.tar"):
        read_shard_list(run)


def test_layout1_metadata_reads_into_the_model():
    old = {"key": "k", "source": "/v.mp4", "frame_set": "shard", **SECTIONS}
    meta = parse_meta(json.dumps(old))
    assert meta.format_version == LAYOUT1_VERSION and meta.frames.member == "" and meta.frames.count == 3
    assert meta.stored_set().stage(3).positions == [0, 1, 2]
    convs = parse_conversations(json.dumps([{"id": 3, "conversations": [{"from": "human", "value": "q"}]}]), "k")
    assert convs[0].id == "3" and convs[0].turns() == [{"from": "human", "value": "q"}]
    assert conversation_from_record({"conversations": []}, "k-0").id == "k-0"


# Product modules that may name a sample's members: the model, the layout, the writer, and the checker of
# member sets (verify). Every other reader goes through `shards.layout.Sample`.
MEMBER_OWNERS = {"pipeline/core/sample.py", "pipeline/core/sample_io.py", "pipeline/core/sample_schema.py", "shards/layout.py", "shards/sink.py",
                 "shards/verify.py"}  # fmt: skip
HAND_READS = re.compile(r"META_MEMBER|CONVERSATIONS_MEMBER|FRAME_MEMBER|FRAMES_MEMBER|frame_member\(|"
                        r"\.get\(\"decode\"\)|\[\"decode\"\]\[\"sets\"\]|\.get\(\"sets\"\)")  # fmt: skip


def test_no_product_module_reads_a_sample_by_hand():
    found = []
    for pkg in ("pipeline", "shards", "train", "evaluation", "filters", "dense_caption"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in MEMBER_OWNERS or rel == "pipeline/core/meta.py":  # meta.py: the stages' own sections, not a sample
                continue
            found += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                      if HAND_READS.search(line)]  # fmt: skip
    assert found == [], "\n".join(found)
