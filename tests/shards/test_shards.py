"""Shard files, the ledger, stats and plots, LLaVA import -> shards -> export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.run import run_pipeline
from shards import ledger
from shards.layout import RunDir, Sample, sample_from_sections
from shards.reader import iter_tar_samples, open_run, read_index
from shards.stats import compute_stats
from shards.tarformat import member_header
from shards.runfolder import writer_shard_name
from shards.tarwriter import ShardFile, sha256_file
from shards.verify import verify_run
from tests.conftest import pipeline_config

ROOT = Path(__file__).resolve().parents[2]


def _frames(n):
    return [b"\xff\xd8" + bytes([i]) * 100 + b"\xff\xd9" for i in range(n)]


def _sample(key, n=3):
    return sample_from_sections(key, _frames(n), {"key": key}, [])


def test_a_shard_is_invisible_until_closed_and_its_hash_is_of_the_final_bytes(tmp_path):
    shard = ShardFile(tmp_path, "s-000.tar")
    shard.write(_sample("a"))
    shard.write(_sample("b"))
    assert [p.name for p in tmp_path.iterdir()] == ["s-000.tar.partial"]
    info = shard.close()
    assert [p.name for p in tmp_path.iterdir()] == ["s-000.tar"]
    assert info.sha256 == sha256_file(tmp_path / "s-000.tar") and info.bytes == (tmp_path / "s-000.tar").stat().st_size
    samples = list(iter_tar_samples(tmp_path / "s-000.tar"))
    assert [k for k, _ in samples] == ["a", "b"] and sorted(samples[0][1]) == ["conversations.json", "frames.mjpeg", "json"]
    back = Sample(samples[0][1], "a")
    assert back.meta.frames.count == back.num_frames == 3 and back.frames() == _frames(3)
    with tarfile.open(tmp_path / "s-000.tar") as tar:  # the stdlib reads our USTAR framing member by member
        members = tar.getmembers()
        assert [m.name for m in members][:4] == ["a.conversations.json", "a.frames.mjpeg", "a.json", "b.conversations.json"]
        assert all(m.isfile() and m.mode == 0o444 for m in members)
        assert tar.extractfile(members[1]).read() == _sample("a")["frames.mjpeg"] == b"".join(_frames(3))
    gnu = subprocess.run(["tar", "tf", str(tmp_path / "s-000.tar")], capture_output=True, text=True)
    assert gnu.returncode == 0 and gnu.stdout.split() == [m.name for m in members] and not gnu.stderr
    assert (tmp_path / "s-000.tar").stat().st_size % 10240 == 0
    aborted = ShardFile(tmp_path, "s-001.tar")
    aborted.write(_sample("c"))
    aborted.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["s-000.tar"]


@pytest.mark.parametrize("name", ["", "x" * 101, "é.jpg"])
def test_tar_member_names_outside_ustar_are_refused(name):
    with pytest.raises(ValueError, match="member name"):
        member_header(name, 1)


def test_ledger_cleanup_removes_what_a_killed_run_left(tmp_path):
    run = RunDir(tmp_path).make()
    name = lambda seq: writer_shard_name("shard", "20261207000000", 0, "0123abcd", False, seq)  # noqa: E731
    done = ShardFile(run.shards, name(0))
    done.write(_sample("a"))
    info = done.close()
    ledger.write_shard_record(run, info.__dict__, [{"key": "a", "shard": name(0), "frames_stored": 3}])
    orphan = ShardFile(run.shards, name(1))  # renamed, but the run died before its record
    orphan.write(_sample("b"))
    orphan.close()
    ShardFile(run.shards, name(2)).write(_sample("c"))  # still .partial
    cut = ShardFile(run.shards, name(3))  # its record and a rejects part were left empty by a power loss
    cut.write(_sample("d"))
    cut.close()
    (run.ledger_shards / (name(3) + ".json")).write_bytes(b"")
    (run.ledger_rejects / "cut.parquet").write_bytes(b"PAR1\x00")
    (run.shards / "users-own.tar").write_bytes(b"not ours")  # names the writer never makes: left alone
    (run.shards / "notes.partial").write_bytes(b"not ours either")
    removed = ledger.clean(run)
    assert removed == {"partial_files": 1, "unrecorded_shards": 2, "records_without_shard": 0, "unreadable_ledger_parts": 2}
    assert sorted(p.name for p in run.shards.iterdir()) == sorted([name(0), "notes.partial", "users-own.tar"])
    assert (run.shards / "users-own.tar").read_bytes() == b"not ours"
    ledger.write_tables(run)
    assert [r["key"] for r in read_index(run)] == ["a"]


def test_stats_json_plots_and_html_report(tmp_path, mixed_dir, ray_local):
    out = tmp_path / "run"
    run_pipeline(pipeline_config(mixed_dir, out))
    stats = compute_stats(open_run(out))
    assert stats["samples"] >= 4 and stats["hours_of_video"] == pytest.approx(stats["samples"] * 10 / 3600, rel=0.05)
    assert stats["duration_histogram"]["<1m"] == stats["samples"]
    assert stats["tokens"]["stage2"]["mean"] == 128 * 156 and stats["rejects_by_reason"]["truncated"] == 2
    assert stats["shards"]["count"] >= 2 and stats["frames_stored"]["min"] == 192
    plots = tmp_path / "plots"
    done = subprocess.run([sys.executable, "-m", "pipeline", "stats", str(out), "--plots", str(plots), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == stats["samples"]
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["durations.png", "rejects.png", "tokens.png"]  # the LLM was off: no QA, and no empty QA chart
    assert all((plots / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    html = (plots / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "rejects_by_reason" in html
    table = subprocess.run([sys.executable, "-m", "pipeline", "stats", str(out)], capture_output=True, text=True, cwd=ROOT).stdout
    assert "score frames" not in table and "visual filter frames per sample" in table  # counts apart from scores


def test_llava_import_then_export_gives_the_conversations_back(tmp_path, video, ray_local):
    root = tmp_path / "videos"
    (root / "yt").mkdir(parents=True)
    for name in ("h264_10s", "vfr_10s"):
        shutil.copy(video(name), root / "yt" / f"{name}.mp4")
    turn = lambda q, a: [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]  # noqa: E731
    records = [
        {"id": "v1-0", "video": "yt/h264_10s.mp4", "conversations": turn("What moves?", "A pattern."), "data_source": "demo"},
        {"id": "v1-1", "video": "yt/h264_10s.mp4", "conversations": turn("What colour?", "Many.")},
        {"id": "v2-0", "video": "yt/vfr_10s.mp4", "conversations": turn("How long?", "Ten seconds.")},
        {"id": "gone", "video": "yt/missing.mp4", "conversations": turn("?", "!")},
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    out = tmp_path / "imported"
    cli = [sys.executable, "-m", "pipeline"]
    done = subprocess.run(cli + ["import-llava", str(ann), str(root), str(out), "--set", "ray.progress=false",
                                 "--set", "sampling.sets.0.num_frames=32", "--set", "filters.token_budget.enabled=false",
                                 "--set", "sampling.sets.0.stage_frames=[]"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    run = open_run(out)
    index = {Path(r["source"]).name: r for r in read_index(run)}
    assert index["h264_10s.mp4"]["num_conversations"] == 2 and index["vfr_10s.mp4"]["num_conversations"] == 1
    assert index["h264_10s.mp4"]["frames_stored"] == 32
    assert compute_stats(run)["rejects_by_reason"] == {"missing": 1}

    exported = tmp_path / "export.json"
    done = subprocess.run(cli + ["export-llava", str(out), str(exported), "--frames-dir", str(tmp_path / "frames")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    back = sorted(json.loads(exported.read_text()), key=lambda r: r["id"])
    assert [r["id"] for r in back] == ["v1-0", "v1-1", "v2-0"]
    original = {r["id"]: r for r in records}
    for rec in back:
        assert rec["conversations"] == original[rec["id"]]["conversations"]
        assert len(list((tmp_path / "frames" / rec["video"]).glob("*.jpg"))) == 32
    assert back[0]["data_source"] == "demo"
    plain = tmp_path / "plain.json"
    from shards.llava import export_llava

    export_llava(out, plain)
    assert sorted(r["video"] for r in json.loads(plain.read_text())) == ["yt/h264_10s.mp4"] * 2 + ["yt/vfr_10s.mp4"]
