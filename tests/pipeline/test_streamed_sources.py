"""Sources streamed in chunks: the same tasks and rejects as reading them whole, duplicates caught across chunks,
resume checked per chunk against compact key sets, and waves of the graph fed chunk by chunk."""

from __future__ import annotations

import json

import numpy as np

import pipeline.video.keyset as keyset
from pipeline.run_config import load_run_config
from pipeline.video.keyset import GrowingKeySet, KeySet
from pipeline.core.records import Rejection
from pipeline.resume import ResumeState
from pipeline.video.sources import load_sources, open_sources
from pipeline.core.task import VideoTask


def cfg_for(path, *extra):
    return load_run_config(None, [f"input.path={path}", "output.dir=unused", *extra]).input


def test_key_sets_are_exact_even_when_every_hash_collides(monkeypatch):
    monkeypatch.setattr(keyset, "_hashes", lambda keys: np.zeros(len(keys), dtype=np.int64))
    s = KeySet.build(["a", "b", "c"], [10, 11, 12])
    assert list(s.contains(["c", "x", "a", ""])) == [True, False, True, False]
    grow = GrowingKeySet()
    for i in range(40):  # past MERGE_EVERY: merged sets keep their values
        grow.add([f"k{i}"], [i])
    assert len(grow.sets) < 40 and list(grow.value_of(["k3", "k39", "nope"])) == [3, 39, -1]


def test_chunks_give_what_a_whole_read_gives_and_duplicates_are_caught_across_chunks(tmp_path):
    rows = [{"path": f"v{i}.mp4", "id": f"id{i % 7}"} for i in range(10)] + [{"id": "nopath"}, {"path": "w.mp4"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stream = open_sources(cfg_for(tmp_path / "m.jsonl"), chunk=2)
    chunks = list(stream.chunks())
    assert len(chunks) == 6 and all(len(c.tasks) <= 2 for c in chunks)
    tasks = [t for c in chunks for t in c.tasks]
    rejects = [r for c in chunks for r in c.rejects]
    whole = load_sources(cfg_for(tmp_path / "m.jsonl"))
    assert [t.key for t in tasks] == [t.key for t in whole.tasks] == [f"id{i}" for i in range(7)] + [tasks[-1].key]
    dupes = sorted((r.key, r.detail) for r in rejects if r.reason == "duplicate_key")
    assert dupes == [(f"id{i}", f"record {i + 7}: key id{i} already taken by record {i}") for i in range(3)]
    assert [r.detail for r in rejects if r.reason == "bad_source"] == ["no path/video/video_path field"]
    assert stream.tasks_seen == 8 and stream.rejects_seen == 4


def test_a_folder_streams_in_name_order_and_counts_what_it_skips(tmp_path):
    for rel in ["b/x.mp4", "a.mp4", "b/notes.txt", "c.mkv", "d.txt", "b/y.mp4"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    stream = open_sources(cfg_for(tmp_path), chunk=1)
    tasks = [t for c in stream.chunks() for t in c.tasks]
    assert [t.meta["video_rel"] for t in tasks] == ["a.mp4", "b/x.mp4", "b/y.mp4", "c.mkv"]
    assert stream.skipped_by_extension == 2 and dict(stream.skipped_suffixes) == {".txt": 2}


def test_resume_state_skips_done_keys_and_rejected_rows():
    from shards.rows import row_identity

    state = ResumeState(KeySet.build(["k1", "k2"]), KeySet.build([row_identity(3, "/v/bad.mp4")]),
                        KeySet.build(["/v/old.mp4"]))  # an older ledger's reject, without a row number
    tasks = [VideoTask("k1", "/v/1.mp4", {}, source_row=0), VideoTask("k3", "/v/bad.mp4", {}, source_row=3),
             VideoTask("k4", "/v/4.mp4", {}, source_row=4), VideoTask("k5", "/v/bad.mp4", {}, source_row=5),
             VideoTask("k6", "/v/old.mp4", {}, source_row=6)]
    assert [t.key for t in state.todo(tasks)] == ["k4", "k5"]  # row 5 names the same file: a row of its own
    rejects = [Rejection("/v/x.mp4", "source", "bad_source", "why", "", 7),
               Rejection("/v/bad.mp4", "source", "bad_source", "", "", 3),
               Rejection("/v/1.mp4", "source", "duplicate_key", "", "k1", 8)]  # its key is done, its row is not
    assert [r.source_row for r in state.fresh(rejects)] == [7, 8]


def test_waves_feed_the_graph_chunk_by_chunk(tmp_path, monkeypatch):
    import pipeline.graph
    import pipeline.waves as waves
    from shards.layout import RunDir
    from shards.target import LocalTarget

    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"path": f"v{i}.mp4"}) + "\n" for i in range(25)))
    monkeypatch.setattr(waves, "CHUNK", 4)
    monkeypatch.setattr(waves, "WAVE_MAX", 10)
    sizes = []
    monkeypatch.setattr(pipeline.graph, "run_graph", lambda cfg, tasks, stamp, gen: sizes.append(len(tasks)) or [])
    run = RunDir(tmp_path / "out")
    run.make()
    done_key = load_sources(cfg_for(tmp_path / "m.jsonl")).tasks[0].key
    state = ResumeState(KeySet.build([done_key]), KeySet.build([]), KeySet.build([]))
    stream = open_sources(cfg_for(tmp_path / "m.jsonl"), chunk=4)
    out = waves.dispatch(None, LocalTarget(run.root), 1, stream.chunks(), state, "stamp", lambda: None)
    assert sizes == [3, 8, 10, 3] and out.skipped == 1 and out.dispatched == 24 and out.waves == 4


def test_a_run_in_several_waves_writes_every_video_once_and_resumes(tmp_path, video, bad_file, ray_local, monkeypatch):
    import shutil

    import pipeline.graph
    import pipeline.video.sources
    import pipeline.waves as waves
    from pipeline.run import run_pipeline
    from shards.reader import open_run, read_index, read_rejects
    from tests.conftest import pipeline_config

    src = tmp_path / "videos"
    src.mkdir()
    for i in range(4):
        shutil.copy(video("h264_10s"), src / f"v{i}.mp4")
    shutil.copy(bad_file("truncated"), src / "z_bad.mp4")
    (src / "notes.txt").write_text("x")
    monkeypatch.setattr(pipeline.video.sources, "CHUNK", 2)
    monkeypatch.setattr(waves, "CHUNK", 2)
    graphs = []
    real = pipeline.graph.run_graph
    monkeypatch.setattr(pipeline.graph, "run_graph", lambda cfg, tasks, *a: graphs.append(len(tasks)) or real(cfg, tasks, *a))
    out = tmp_path / "out"
    first = run_pipeline(pipeline_config(src, out))
    assert graphs == [2, 3] and first.sources == 5 and first.accepted == 4 and sum(first.rejected.values()) == 1
    assert first.skipped_by_extension == 1 and first.skipped_suffixes == {".txt": 1}
    assert sorted(r["source"].rsplit("/", 1)[1] for r in read_index(open_run(out))) == [f"v{i}.mp4" for i in range(4)]
    again = run_pipeline(pipeline_config(src, out))
    assert graphs == [2, 3] and again.skipped == 5 and again.accepted == 0 and again.sources == 5  # 4 done, 1 rejected
    assert len(read_index(open_run(out))) == 4 and len(read_rejects(open_run(out))) == 1


def test_llava_records_are_grouped_per_video_through_disk_not_driver_memory(tmp_path):
    """A video's records scattered through the file end in one task, in file order, tasks in order of first
    appearance; rejects come first; ijson's Decimals become JSON numbers; and the Python heap while reading
    stays a fraction of the file (the records wait in a temporary SQLite table, not in the driver)."""
    import tracemalloc

    text = "x" * 1000
    records = [{"id": f"q{i}", "video": f"v{i % 500}.mp4", "score": 0.5, "count": 3,
                "conversations": [{"from": "gpt", "value": text}]} for i in range(20_000)]
    records[7] = {"id": "no-video"}
    (tmp_path / "ann.json").write_text(json.dumps(records))
    size = (tmp_path / "ann.json").stat().st_size
    tracemalloc.start()
    try:
        stream = open_sources(cfg_for(tmp_path / "ann.json"), chunk=50)
        chunks, tasks_seen, first, held = 0, [], None, []
        for chunk in stream.chunks():
            if first is None:  # the whole file parsed and spilled: what that pass held at most
                first, parse_peak = chunk, tracemalloc.get_traced_memory()[1]
            assert len(chunk.tasks) <= 50
            chunks += 1
            held.append(tracemalloc.get_traced_memory()[0])  # after the second chunk: imports done
            for t in chunk.tasks:
                tasks_seen.append((t.meta["video_rel"], [c["id"] for c in t.meta["conversations"]]))
                assert json.loads(json.dumps(t.meta))["conversations"][0]["score"] == 0.5
    finally:
        tracemalloc.stop()
    assert first.tasks == [] and [r.reason for r in first.rejects] == ["bad_source"] and "record 7" in first.rejects[0].source
    order = [i for i in range(500) if i != 7] + [7]  # v7's first record (7) was refused: its first is record 507
    assert [rel for rel, _ in tasks_seen] == [f"v{i}.mp4" for i in order] and chunks == 11
    assert tasks_seen[-1][1] == [f"q{i}" for i in range(507, 20_000, 500)]
    assert tasks_seen[3][1] == [f"q{i}" for i in range(3, 20_000, 500)]
    assert parse_peak < size / 4, f"parsing held {parse_peak} bytes of a {size}-byte file"
    assert held[-1] - held[2] < size / 10, f"the heap grew {held[-1] - held[2]} bytes over the chunks"


def test_llava_rejects_come_first_a_chunk_at_a_time(tmp_path):
    records = [{"id": f"bad{i}"} for i in range(5)] + [{"id": "ok", "video": "a.mp4"}]
    (tmp_path / "ann.json").write_text(json.dumps(records))
    chunks = list(open_sources(cfg_for(tmp_path / "ann.json"), chunk=2).chunks())
    assert [(len(c.tasks), len(c.rejects)) for c in chunks] == [(0, 2), (0, 2), (0, 1), (1, 0)]
    assert [r.source for c in chunks for r in c.rejects] == [f"record {i}" for i in range(5)]
