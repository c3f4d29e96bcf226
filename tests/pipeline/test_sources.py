"""Sources: folder, manifests (jsonl / csv / parquet), LLaVA JSON; stable safe keys; allowed roots."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config_load import ConfigError

from pipeline.run_config import load_run_config
from pipeline.video.locate import key_for_path, sanitize_key
from pipeline.video.sources import load_sources
from shards.layout import check_key


def cfg_for(path, *sets):
    return load_run_config(None, [f"input.path={path}", "output.dir=/tmp/unused", *sets]).input


@pytest.mark.parametrize("raw", ["../../etc/passwd", "a b/c.d.mp4", "x\x00y\n", "..", "ünï/cödé", "/abs/path", "a.b"])
def test_keys_are_safe_tar_member_names(raw):
    key = key_for_path(raw)
    assert check_key(key) == key
    assert "/" not in key and ".." not in key and "." not in key
    assert sanitize_key(raw) and check_key(sanitize_key(raw))


def test_unsafe_keys_are_refused_by_the_writer():
    for bad in ["a/b", "..", "a.b", "", "x\n"]:
        with pytest.raises(ValueError, match="unsafe sample key"):
            check_key(bad)


def test_folder_keys_are_stable_and_relative_to_the_root(tmp_path):
    for rel in ["a/clip.mp4", "b/clip.mp4", "c.MKV", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    first = load_sources(cfg_for(tmp_path))
    assert first.kind == "folder" and len(first.tasks) == 3  # .txt is not a video extension
    assert len({t.key for t in first.tasks}) == 3  # same file name in two folders: distinct keys
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    os.rename(tmp_path, moved)
    again = load_sources(cfg_for(moved))
    assert [t.key for t in again.tasks] == [t.key for t in first.tasks]  # keys survive moving the root


def test_manifests_in_three_formats_give_the_same_tasks(tmp_path):
    rows = [
        {"path": "v1.mp4", "id": "clip/one", "num_frames": 64, "lang": "en"},
        {"path": "v2.mp4", "id": "two", "num_frames": None, "lang": "de"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    (tmp_path / "m.csv").write_text("path,id,num_frames,lang\nv1.mp4,clip/one,64,en\nv2.mp4,two,,de\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    results = {fmt: load_sources(cfg_for(tmp_path / f"m.{fmt}")) for fmt in ("jsonl", "csv", "parquet")}
    for fmt, src in results.items():
        assert [t.key for t in src.tasks] == ["clip_one", "two"], fmt
        assert src.tasks[0].source == str(tmp_path / "v1.mp4")
        assert src.tasks[0].meta["num_frames"] == 64 and "num_frames" not in src.tasks[1].meta
        assert src.tasks[0].meta["extra"]["lang"] == "en"
    assert [r.reason for r in results["jsonl"].rejects] == ["bad_source"]  # the broken line, not an exception


def test_duplicate_ids_and_bad_rows_become_rejects(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"path": "a.mp4", "id": "x"}) + "\n" + json.dumps({"path": "b.mp4", "id": "x"}) + "\n"
        + json.dumps({"id": "nopath"}) + "\n" + json.dumps({"path": "c.mp4", "num_frames": "many"}) + "\n"
    )
    src = load_sources(cfg_for(tmp_path / "m.jsonl"))
    assert [t.key for t in src.tasks] == ["x"]
    assert sorted(r.reason for r in src.rejects) == ["bad_source", "bad_source", "duplicate_key"]


def test_allowed_roots_stop_dotdot_and_symlink_escapes(tmp_path):
    inside, outside = tmp_path / "data", tmp_path / "secret"
    inside.mkdir(), outside.mkdir()
    (outside / "s.mp4").write_bytes(b"x")
    (inside / "ok.mp4").write_bytes(b"x")
    (inside / "link.mp4").symlink_to(outside / "s.mp4")
    (inside / "m.jsonl").write_text("\n".join(json.dumps({"path": p}) for p in ["ok.mp4", "../secret/s.mp4", "link.mp4"]))
    src = load_sources(cfg_for(inside / "m.jsonl", f"input.allowed_roots=[{inside}]"))
    assert [t.source for t in src.tasks] == [str(inside / "ok.mp4")]
    assert [r.reason for r in src.rejects] == ["outside_allowed_roots"] * 2
    folder = load_sources(cfg_for(inside, f"input.allowed_roots=[{inside}]"))
    assert [t.source for t in folder.tasks] == [str(inside / "ok.mp4")]


def test_llava_records_of_one_video_become_one_task(tmp_path):
    records = [
        {"id": "q1", "video": "vids/a.mp4", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
        {"id": "q2", "video": "vids/a.mp4", "conversations": [{"from": "human", "value": "<image>\nWhy?"}, {"from": "gpt", "value": "B."}], "data_source": "x"},
        {"id": "q3", "video": "vids/b.mp4", "conversations": []},
    ]
    (tmp_path / "ann.json").write_text(json.dumps(records))
    src = load_sources(cfg_for(tmp_path / "ann.json", f"input.video_root={tmp_path / 'root'}"))
    assert src.kind == "llava" and len(src.tasks) == 2
    a = src.tasks[0]
    assert a.source == str(tmp_path / "root/vids/a.mp4") and a.meta["video_rel"] == "vids/a.mp4"
    assert [c["id"] for c in a.meta["conversations"]] == ["q1", "q2"] and a.meta["conversations"][1]["data_source"] == "x"


def test_unusable_input_paths_fail_at_load(tmp_path):
    with pytest.raises(ConfigError, match="input.path"):
        load_sources(cfg_for(tmp_path / "missing.txt"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="must hold a list of LLaVA records"):
        load_sources(cfg_for(tmp_path / "bad.json"))
    (tmp_path / "bad.json").write_text('[{"video": "a.mp4"}, {not json')
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_sources(cfg_for(tmp_path / "bad.json"))
