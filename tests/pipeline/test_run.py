"""End-to-end pipeline runs on a folder of good and broken videos: shards, tables, resume, retry, force."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipeline.run import RunLocked, run_lock, run_pipeline
from shards.layout import RunDir, Sample
from shards.reader import open_run, read_index, read_rejects
from shards.verify import verify_run
from tests.conftest import BAD_REASONS, GOOD_MIX, pipeline_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clean_run(mixed_dir, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    summary = run_pipeline(pipeline_config(mixed_dir, out))
    return out, summary


def keys(out) -> list[str]:
    return sorted(r["key"] for r in read_index(open_run(out)))


def test_every_bad_video_is_rejected_with_its_reason_and_every_good_one_is_sharded(clean_run, mixed_dir):
    out, summary = clean_run
    run = open_run(out)
    rejects = {Path(r["source"]).name: r for r in read_rejects(run)}
    for kind, reason in BAD_REASONS.items():
        name = next(p.name for p in mixed_dir.iterdir() if p.stem == f"bad_{kind}")
        assert rejects[name]["reason"] == reason, (kind, rejects[name])
        assert rejects[name]["stage"] in ("probe", "decode") and rejects[name]["key"]
    index = read_index(run)
    good = sorted(p.name for p in mixed_dir.iterdir() if not p.name.startswith("bad_"))
    assert sorted(Path(r["source"]).name for r in index) == good and len(good) >= len(GOOD_MIX) - 1
    assert summary.accepted == len(good) and sum(summary.rejected.values()) == len(BAD_REASONS)
    for row in index:
        assert row["frames_stored"] == 192
        assert row["tokens_stage1"] == 32 * 156 and row["tokens_stage3"] == 192 * 156
        assert row["duration_s"] == pytest.approx(10.0, abs=0.2) and row["width"] > 0 and row["shard"].endswith(".tar")
    assert verify_run(run) == []
    assert not list(Path(out).rglob("*.partial"))


def test_plain_webdataset_reads_the_shards(clean_run):
    out, _ = clean_run
    urls = sorted(str(p) for p in (Path(out) / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == len(keys(out))
    for s in samples:
        assert sorted(k for k in s if not k.startswith("__")) == ["conversations.json", "frames.mjpeg", "json"]
        sample = Sample(s)  # webdataset decoded the json members; the frames stay one byte string
        assert sample.meta.frames.count == sample.num_frames == 192
        frames = sample.frames()
        assert len(frames) == 192 and b"".join(frames) == s["frames.mjpeg"]
        assert all(f[:2] == b"\xff\xd8" and f[-2:] == b"\xff\xd9" for f in frames)  # each a whole JPEG
        assert Image.open(io.BytesIO(frames[0])).size == (384, 384)
        meta = sample.meta
        assert meta.key == s["__key__"] == sample.key and meta.source and meta.format_version == "2.0"
        ts = meta.stored_set().timestamps_s
        assert meta.frame_set == "shard" and len(ts) == 192 and ts == sorted(ts)  # frames in time order
        assert s["conversations.json"] == {"records": []} and sample.conversations == []


def test_run_json_and_tables(clean_run):
    out, summary = clean_run
    doc = json.loads((Path(out) / "run.json").read_text())
    assert doc["config"]["output"]["dir"] == str(out)
    assert doc["versions"]["ray"] and doc["versions"]["webdataset"]
    this = doc["this_run"]
    assert this["accepted"] == summary.accepted and this["rejected"] == summary.rejected
    assert {"probe", "decode", "write"} <= set(this["stages"]) and this["videos_per_hour"] > 0
    shards = json.loads((Path(out) / "shards.json").read_text())
    assert all(len(s["sha256"]) == 64 and s["samples"] <= 2 for s in shards)  # shards.max_samples=2
    assert sum(s["samples"] for s in shards) == summary.accepted
    names = [s["name"] for s in shards]
    assert len(set(names)) == len(names)


def test_run_json_times_setup_apart_and_records_the_window(clean_run):
    this = json.loads((Path(clean_run[0]) / "run.json").read_text())["this_run"]
    decode = this["stages"]["decode"]
    assert decode["setups"] >= 1 and decode["setup_s"] > 0  # the watched child's start, once per worker
    assert 0 < this["window_s"] <= this["wall_s"]


def test_videos_sharing_blocks_each_land_exactly_once(clean_run, mixed_dir, ray_local, tmp_path, monkeypatch):
    """A large wave puts several videos in a Ray block; good and bad videos mixed in blocks of 4 must end as
    the one-per-block run did: every good video sharded once, every bad one rejected once with its reason."""
    import pipeline.graph

    calls = []

    def four(videos: int, slots: int) -> int:
        calls.append(videos)
        return 4

    monkeypatch.setattr(pipeline.graph, "videos_per_block", four)
    out = tmp_path / "grouped"
    summary = run_pipeline(pipeline_config(mixed_dir, out))
    assert calls and calls[0] == len(list(mixed_dir.iterdir()))  # 3 blocks of 4 videos
    clean = open_run(clean_run[0])
    run = open_run(out)
    assert keys(out) == keys(clean_run[0]) and len(set(keys(out))) == len(keys(out)) == summary.accepted
    rejects = sorted((r["key"], r["reason"]) for r in read_rejects(run))
    assert rejects == sorted((r["key"], r["reason"]) for r in read_rejects(clean))
    assert len({k for k, _ in rejects}) == len(BAD_REASONS)
    assert verify_run(run) == [] and not list(out.rglob("*.partial"))


def test_rerun_resumes_with_nothing_to_do(clean_run, mixed_dir):
    out, first = clean_run
    before = keys(out)
    again = run_pipeline(pipeline_config(mixed_dir, out))
    assert again.accepted == 0 and again.rejected == {} and again.skipped == first.accepted + len(BAD_REASONS)
    assert keys(out) == before


def test_retry_rejects_redoes_only_those_reasons_and_force_redoes_all(mixed_dir, ray_local, tmp_path):
    out = tmp_path / "out"
    cfg = pipeline_config(mixed_dir, out)
    first = run_pipeline(cfg)
    retried = run_pipeline(cfg, retry_reasons=["truncated", "not_media"])
    assert retried.accepted == 0 and retried.rejected == {"truncated": 2, "not_media": 1}
    assert len(read_rejects(open_run(out))) == len(BAD_REASONS)
    forced = run_pipeline(cfg, force=True)
    assert forced.accepted == first.accepted and forced.skipped == 0
    assert verify_run(open_run(out)) == []


def test_sigkill_mid_run_then_rerun_gives_the_clean_sample_set(clean_run, mixed_dir, ray_local, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline", "run", str(ROOT / "configs/demo.yaml"), "--set", f"input.path={mixed_dir}", "--set", "input.format=auto",
           "--set", f"output.dir={out}", "--set", "shards.max_samples=1", "--set", "ray.progress=false",
           "--set", "ray.num_cpus=1", "--set", "llm.enabled=false"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = out / ".ledger" / "shards"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.is_dir() and any(ledger.glob("*.json")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "run.json").exists()  # it really died before finishing
    done_before = len(list(ledger.glob("*.json")))
    assert 1 <= done_before < len(keys(clean_run[0]))

    resumed = run_pipeline(pipeline_config(mixed_dir, out))
    assert resumed.skipped >= done_before
    assert keys(out) == keys(clean_run[0])
    run = open_run(out)
    assert verify_run(run) == []
    assert sorted(r["key"] for r in read_rejects(run)) == sorted(r["key"] for r in read_rejects(open_run(clean_run[0])))
    assert not list(out.rglob("*.partial"))


def test_a_second_run_into_a_locked_directory_is_refused(tmp_path):
    run = RunDir(tmp_path)
    with run_lock(run):
        with pytest.raises(RunLocked, match="another run"):
            with run_lock(RunDir(tmp_path)):
                pass


def test_cli_run_stats_and_verify_exit_codes(clean_run, tmp_path):
    out, _ = clean_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cli = [sys.executable, "-m", "pipeline"]
    ok = subprocess.run(cli + ["stats", str(copy), "--verify"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "verify: OK" in ok.stderr and "samples" in ok.stdout
    tar = sorted((copy / "shards").glob("*.tar"))[0]
    with tarfile.open(tar) as t:
        first = next(m for m in t.getmembers() if m.name.endswith(".frames.mjpeg"))
    data = bytearray(tar.read_bytes())
    data[first.offset_data + 100] ^= 0xFF  # one flipped byte inside the first frame
    tar.write_bytes(bytes(data))
    bad = subprocess.run(cli + ["stats", str(copy), "--verify"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and f"shards/{tar.name}: sha256" in bad.stderr
    tar.write_bytes(bytes(data[: len(data) // 2]))
    cut = subprocess.run(cli + ["stats", str(copy), "--verify", "--json"], capture_output=True, text=True, cwd=ROOT)
    assert cut.returncode == 1 and "truncated or altered" in cut.stderr
    report = json.loads(cut.stdout)
    assert report["verify"]["ok"] is False and report["samples"] == len(keys(out))
    index = pq.read_table(copy / "index.parquet")
    assert index.num_rows == len(keys(out))
