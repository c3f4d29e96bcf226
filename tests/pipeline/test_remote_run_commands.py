"""`view`, `audit` and `export-llava` on a run folder that lives on an object store (a real S3 API server on
loopback), its videos and its LLaVA JSON in a bucket too: each answers as it does for the same run written to a
local folder (the same pages and frames, the same frames re-decoded from the fetched sources, the same records);
`run --repair` re-reads every shard's sha256 there and redoes a changed one; `view` with no local `--out`, and
`dedup` of a run without CLIP embeddings, say why they cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.s3server import make_bucket, s3_env, s3_server, upload_tree
from pipeline.core.storage import Storage
from shards.remote import remote_shard_urls
from tests.contents import assert_remote_clean
from tests.pipeline.test_remote_input import ROOT, run_cli
from tests.pipeline.test_remote_output import members_by_key

pytestmark = pytest.mark.slow
SOURCE = ("input.path=s3://vids/set1/train.json", "input.format=llava")


def cli(tmp: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=tmp,
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, timeout=600)  # fmt: skip


def files(folder: Path, under: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / under).rglob("*")) if p.is_file()}


@pytest.fixture
def bucket_runs(video, tmp_path):
    """One LLaVA JSON naming two bucket videos, run into a bucket prefix and into a local folder; yields the env."""
    raw = tmp_path / "raw"
    raw.mkdir()
    records = []
    for name in ("h264_10s", "vp9_10s"):
        (raw / f"{name}.mp4").write_bytes(video(name).read_bytes())
        records.append({"id": name, "video": f"{name}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat is shown?"}, {"from": "gpt", "value": f"The {name} clip."}]})
    (raw / "train.json").write_text(json.dumps(records))
    with s3_server(tmp_path) as endpoint:
        env = s3_env(endpoint)
        for bucket in ("vids", "runs"):
            make_bucket(endpoint, bucket)
        os.environ.update(env)  # this process uploads; the commands get `env` explicitly
        try:
            upload_tree(raw, "s3://vids/set1")
            for out in ("s3://runs/r1", str(tmp_path / "local")):
                done = run_cli(tmp_path, env, *SOURCE, f"output.dir={out}")
                assert done.returncode == 0, done.stderr[-3000:]
            yield env
        finally:
            for k in env:
                os.environ.pop(k, None)


def test_view_audit_and_export_read_a_bucket_run_as_the_same_local_run(bucket_runs, tmp_path):
    env, local = bucket_runs, str(tmp_path / "local")
    sites = {}
    for name, run in (("remote", "s3://runs/r1"), ("local", local)):
        done = cli(tmp_path, env, "view", run, "--out", str(tmp_path / f"site_{name}"))
        assert done.returncode == 0, done.stderr[-3000:]
        site = tmp_path / f"site_{name}"
        sites[name] = (files(site, "frames"), sorted(files(site, "pages")))  # pages carry timings: named, not read
    assert sites["remote"] == sites["local"] and len(sites["remote"][0]) > 2 and len(sites["remote"][1]) == 2

    audits = {}
    for name, run in (("remote", "s3://runs/r1"), ("local", local)):
        done = cli(tmp_path, env, "audit", run, "--samples", "2", "--frames", "3", "--json")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]  # sources fetched from the bucket
        report = json.loads(done.stdout)
        audits[name] = sorted((s["key"], s["frames_checked"], s["error"]) for s in report["samples"])
    assert audits["remote"] == audits["local"] and [a[1] for a in audits["remote"]] == [3, 3]

    exports = {}
    for name, run in (("remote", "s3://runs/r1"), ("local", local)):
        out = tmp_path / f"export_{name}"
        done = cli(tmp_path, env, "export-llava", run, str(out / "train.json"), "--frames-dir", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        records = sorted(json.loads((out / "train.json").read_text()), key=lambda r: r["id"])  # shard order: timing
        exports[name] = (records, files(out, "shareVideoGPTV"))
    assert exports["remote"] == exports["local"] and len(exports["remote"][0]) == 2

    plain = tmp_path / "plain" / "train.json"
    done = cli(tmp_path, env, "export-llava", "s3://runs/r1", str(plain))
    assert done.returncode == 0, done.stderr[-3000:]
    assert {r["video"] for r in json.loads(plain.read_text())} == {"s3://vids/set1/h264_10s.mp4",
                                                                    "s3://vids/set1/vp9_10s.mp4"}
    summary = json.loads(plain.with_name("train.summary.json").read_text())
    assert {u["error"] for u in summary["unreadable"]} == {"a URL: the trainer opens local files; export with "
                                                           "--frames-dir (frames from the shards) instead"}


def test_commands_that_cannot_work_on_a_bucket_run_say_why(bucket_runs, tmp_path):
    no_out = cli(tmp_path, bucket_runs, "view", "s3://runs/r1")
    assert no_out.returncode == 2 and "give --out" in no_out.stderr
    dedup = cli(tmp_path, bucket_runs, "dedup", "s3://runs/r1")  # a run without CLIP embeddings
    assert dedup.returncode == 2 and "s3://runs/r1/embeddings.parquet is missing" in dedup.stderr


def test_repair_redoes_a_bucket_shard_whose_bytes_changed(bucket_runs, tmp_path):
    store = Storage("s3://runs/r1")
    before = members_by_key(remote_shard_urls(store.root))
    name = remote_shard_urls(store.root)[0].rpartition("/")[2]
    data = bytearray(store.get(f"shards/{name}"))
    data[len(data) // 2] ^= 0xFF  # the recorded size still: only its sha256 tells
    store.put(f"shards/{name}", bytes(data))
    again = run_cli(tmp_path, bucket_runs, *SOURCE, "output.dir=s3://runs/r1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "damaged_shards" not in json.loads(store.get("run.json"))["this_run"]["resume"]["cleaned"]  # sizes only
    verify = cli(tmp_path, bucket_runs, "stats", "s3://runs/r1", "--verify")
    assert verify.returncode == 1 and "sha256" in verify.stderr
    fixed = run_cli(tmp_path, bucket_runs, *SOURCE, "output.dir=s3://runs/r1", "--repair")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    resume = json.loads(store.get("run.json"))["this_run"]["resume"]["cleaned"]
    assert resume["damaged_shards"] == 1 and resume["samples_redone"] >= 1
    assert members_by_key(remote_shard_urls(store.root)) == before
    assert_remote_clean("s3://runs/r1", tmp_path / "check")
