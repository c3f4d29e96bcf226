"""A run touches only its own marked folder, and inside it only what it made; every input row is accounted for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.run import run_pipeline
from shards import ledger
from shards.layout import RunDir
from shards.reader import open_run, read_rejects
from shards.runfolder import RefusedFolder, claim, is_marked, marker_path
from shards.verify import verify_run
from tests.conftest import pipeline_config

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


def run_cli(inp: Path, out: Path | str, *extra: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return cli("run", ROOT / "configs/demo.yaml", "--set", f"input.path={inp}", "--set", "input.format=auto",
               "--set", "llm.enabled=false", "--set", f"output.dir={out}", *extra, cwd=cwd)


def users_folder(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    """A user's own dataset folder: files a run must never delete or rewrite."""
    folder = tmp_path / "my_dataset"
    (folder / "shards").mkdir(parents=True)
    files = {folder / "shards" / "my_dataset-000.tar": b"the user's own shard",
             folder / "notes.partial": b"half-written notes",
             folder / "run.json": b'{"mine": true}',
             folder / "index.parquet": b"not a parquet"}
    for path, data in files.items():
        path.write_bytes(data)
    return folder, files


@pytest.mark.parametrize("force", [False, True])
def test_a_run_refuses_a_folder_that_is_not_a_run_folder(tmp_path, force):
    folder, files = users_folder(tmp_path)
    done = run_cli(tmp_path, folder, *(["--force"] if force else []))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "not a run folder" in done.stderr and str(folder) in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    for path, data in files.items():
        assert path.read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == ["index.parquet", "notes.partial", "run.json", "shards"]


def test_a_symlinked_output_dir_is_refused(tmp_path):
    folder, files = users_folder(tmp_path)
    link = tmp_path / "out-link"
    link.symlink_to(folder)
    done = run_cli(tmp_path, link, "--force")
    assert done.returncode == 2 and "symlink" in done.stderr, done.stderr[-2000:]
    assert all(path.read_bytes() == data for path, data in files.items())


def test_claim_takes_new_empty_and_marked_folders_and_keeps_old_runs(tmp_path):
    assert claim(RunDir(tmp_path / "new")) and is_marked(RunDir(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    assert claim(RunDir(tmp_path / "empty"))
    assert not claim(RunDir(tmp_path / "new"))  # marked: a resume
    doc = json.loads(marker_path(RunDir(tmp_path / "new")).read_text())
    assert doc["tool"] == "prolongvid" and doc["format"] == 1
    old = RunDir(tmp_path / "old").make()  # a run folder of a version before the marker: a valid ledger
    (old.ledger / "generation").write_text("3")
    (old.shards / "a-tar-of-that-run.tar").write_bytes(b"x")
    assert not claim(old) and marker_path(old).exists()
    bad = RunDir(tmp_path / "bad").make()  # a ledger folder without a readable generation is not enough
    with pytest.raises(RefusedFolder, match="not a run folder"):
        claim(bad)
    killed = RunDir(tmp_path / "killed")  # a run killed while writing its marker: its rerun takes the folder
    killed.ledger.mkdir(parents=True)
    (killed.ledger / "run.marker.json.partial").write_text("{")
    assert claim(killed) and is_marked(killed)
    linked = RunDir(tmp_path / "linked")  # a run folder whose ledger folder leads elsewhere
    claim(linked)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.parquet").write_bytes(b"mine")
    linked.ledger_rejects.symlink_to(elsewhere)
    with pytest.raises(RefusedFolder, match="symlink"):
        claim(linked)
    with pytest.raises(RefusedFolder, match="symlink"):
        ledger.clean(linked)
    assert (elsewhere / "keep.parquet").read_bytes() == b"mine"


def test_force_on_a_run_folder_removes_only_what_its_ledger_names(tmp_path, video, ray_local):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copyfile(video("h264_10s"), inp / "a.mp4")
    out = tmp_path / "run"
    run_pipeline(pipeline_config(inp, out))
    run = RunDir(out)
    ours = [run.shards / r["name"] for r in ledger.shard_records(run)]
    assert ours and all(p.exists() for p in ours)
    mine = {run.shards / "my_dataset-000.tar": b"user shard", run.root / "notes.partial": b"notes",
            run.shards / "notes.partial": b"notes too", run.root / "README.txt": b"what this run is"}
    for path, data in mine.items():
        path.write_bytes(data)
    summary = run_pipeline(pipeline_config(inp, out), force=True)
    assert summary.accepted == 1
    for path, data in mine.items():
        assert path.read_bytes() == data
    assert not any(p.exists() for p in ours)  # the old run's shards went, the new run wrote its own


def test_a_ledger_record_naming_a_path_outside_is_refused_before_anything_changes(tmp_path, video, ray_local):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copyfile(video("h264_10s"), inp / "a.mp4")
    out = tmp_path / "deep" / "run"
    run_pipeline(pipeline_config(inp, out))
    victim = tmp_path / "deep" / "victim.txt"  # what shards/../../victim.txt names
    victim.write_bytes(b"precious")
    run = RunDir(out)
    record = ledger.shard_records(run)[0]
    (run.ledger_shards / "x.tar.json").write_text(json.dumps({**record, "name": "../../victim.txt"}))
    partial = run.shards / (record["name"] + ".partial")
    partial.write_bytes(b"left by a killed writer")
    done = run_cli(inp, out)
    assert done.returncode == 2 and "ledger was altered" in done.stderr, done.stderr[-2000:]
    assert victim.read_bytes() == b"precious" and partial.exists()  # refused before the sweep
    for bad in ("../x.tar", "a/b.tar", ".hidden.tar", "x.txt"):
        (run.ledger_shards / "x.tar.json").write_text(json.dumps({**record, "name": bad}))
        with pytest.raises(RefusedFolder):
            ledger.clean(run)
    (run.ledger_shards / "x.tar.json").write_text(json.dumps({**record, "name": "x.tar",
                                                              "rows": [{"key": "../k", "shard": "x.tar"}]}))
    with pytest.raises(RefusedFolder, match="key"):
        ledger.clean(run)
    assert victim.read_bytes() == b"precious"


def test_every_manifest_row_is_a_row_of_its_own(tmp_path, video, ray_local):
    good = video("h264_10s")
    inside = tmp_path / "inside"
    inside.mkdir()
    shutil.copyfile(good, inside / "v.mp4")
    manifest = inside / "m.jsonl"
    rows = [{"path": "v.mp4"}] * 40 + [{"path": "../outside.mp4"}] * 2 + [{"path": "missing.mp4"}] * 2
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    out = tmp_path / "run"
    summary = run_pipeline(pipeline_config(manifest, out, f"input.allowed_roots=[{inside}]"))
    run = open_run(out)
    rejects = read_rejects(run)
    assert summary.accepted == 1 and summary.rejected["duplicate_key"] == 39 + 1  # and the second missing.mp4
    assert len(rejects) == sum(summary.rejected.values()) == len(rows)  # 39 + 2 + 2 + the bad line: a row each
    assert sorted(r["source_row"] for r in rejects) == list(range(1, len(rows) + 1))
    assert sorted(r["reason"] for r in rejects).count("outside_allowed_roots") == 2
    totals = json.loads(run.run_json.read_text())["totals"]
    assert totals["input_rows"] == len(rows) + 1 == totals["sample_rows"] + totals["reject_rows"]
    assert verify_run(run) == []
    again = run_pipeline(pipeline_config(manifest, out, f"input.allowed_roots=[{inside}]"))  # a resume adds nothing
    assert again.accepted == 0 and len(read_rejects(run)) == len(rows) and verify_run(run) == []
    # retried, the duplicate rows are rejected again, each once: their key is the committed video's, their rows not
    run_pipeline(pipeline_config(manifest, out, f"input.allowed_roots=[{inside}]"), retry_reasons=["duplicate_key"])
    assert len(read_rejects(run)) == len(rows) and verify_run(run) == []
    table = pq.read_table(run.rejects)  # a row lost from the table is found
    pq.write_table(table.slice(1), run.rejects)
    assert any("rows were lost" in p for p in verify_run(run))


def test_every_llava_record_and_folder_entry_is_counted(tmp_path, video, ray_local):
    good, other = video("h264_10s"), video("hevc_10s")
    records = [{"id": f"r{i}", "video": str(good if i % 2 else other),
                "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
               for i in range(5)] + [{"id": "nov", "conversations": []}]
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps(records))
    out = tmp_path / "run"
    run_pipeline(pipeline_config(annotations, out, "input.format=llava"))
    run = open_run(out)
    totals = json.loads(run.run_json.read_text())["totals"]
    assert (totals["input_rows"], totals["sample_rows"], totals["reject_rows"]) == (6, 5, 1)
    assert verify_run(run) == []
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copyfile(good, folder / "a.mp4")
    (folder / "b.mp4").write_bytes(b"")  # an empty file: a reject
    (folder / "notes.txt").write_text("not a video")  # skipped by its name
    out2 = tmp_path / "run2"
    run_pipeline(pipeline_config(folder, out2))
    totals = json.loads(RunDir(out2).run_json.read_text())["totals"]
    assert (totals["input_rows"], totals["sample_rows"], totals["reject_rows"], totals["skipped_rows"]) == (3, 1, 1, 1)


def test_import_llava_reads_no_config_from_the_current_folder(tmp_path, video):
    work = tmp_path / "work"
    (work / "configs").mkdir(parents=True)
    canary = tmp_path / "canary"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {canary}\n")
    evil.chmod(0o755)
    (work / "configs" / "import_llava.yaml").write_text(  # a config that would start `evil.sh` as the LLM server
        f"llm:\n  enabled: true\n  model: m\n  http:\n    mode: managed\n    managed:\n      python: {evil}\n"
        f"      model: {work}\n      startup_timeout_s: 5\n")
    (work / "a.json").write_text("[]")
    done = cli("import-llava", work / "a.json", work, work / "out", cwd=work)
    assert not canary.exists(), done.stderr[-2000:]
    assert str(ROOT / "pipeline" / "import_llava.yaml") in done.stderr


def test_a_killed_llava_reader_leaves_nothing_the_next_one_does_not_remove(tmp_path, video):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps([{"id": "r", "video": str(video("h264_10s")), "conversations": []}]))
    reader = ("import sys, time\nfrom pipeline.run_config import load_run_config\nfrom pipeline.video.sources import open_sources\n"
              f"cfg = load_run_config(None, ['input.path={annotations}', 'output.dir=unused'])\n"
              "for chunk in open_sources(cfg.input).chunks():\n    print('reading', flush=True); time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "reading"
        left = list(tmp.glob("prolongvid-llava-*"))
        assert len(left) == 1 and (left[0] / "records.db").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert left[0].exists()  # SIGKILL: nothing ran to remove it
    stranger = tmp / "prolongvid-llava-notapid"  # not a name the reader makes: left alone
    stranger.mkdir()
    done = subprocess.run([sys.executable, "-c", reader.replace("time.sleep(600)", "pass")], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not left[0].exists() and stranger.exists()
