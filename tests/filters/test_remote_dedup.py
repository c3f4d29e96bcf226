"""Near-duplicate removal on a run folder in a bucket (a real S3 API server on loopback), as on disk: `dedup`
(and `--dry-run`) removes a copy and records why, a rerun does not bring it back, a dedup killed after its
decision is finished by the next run, and `filters.dedup.enabled` deduplicates at the end of a run."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow.parquet as pq
import pytest

from fixtures.s3server import make_bucket, s3_env, s3_server
from pipeline.core.storage import Storage
from shards.remote import remote_index
from tests.contents import assert_remote_clean
from tests.filters.test_clip import tiny_clip  # noqa: F401  (the fixture)
from tests.pipeline.test_remote_run_commands import cli
from tests.pipeline.test_remote_input import run_cli

pytestmark = pytest.mark.slow


def sources(url: str) -> list[str]:
    return sorted(s.rpartition("/")[2] for s in remote_index(url).column("source").to_pylist())


def rejects(url: str) -> list[dict]:
    return pq.read_table(io.BytesIO(Storage(url).get("rejects.parquet"))).to_pylist()


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    with s3_server(tmp_path) as endpoint:
        make_bucket(endpoint, "runs")
        env = s3_env(endpoint)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        yield env


def test_dedup_on_a_bucket_run_removes_a_copy_and_a_killed_one_is_finished(tiny_clip, video, tmp_path, bucket):  # noqa: F811
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(video("testsrc2_20s"), videos / "a.mp4")
    shutil.copy(video("testsrc2_20s"), videos / "b.mp4")  # a byte-identical copy under another name
    shutil.copy(video("mandelbrot_10s"), videos / "other.mp4")
    sets = [f"filters.clip.{k}={v}" for k, v in tiny_clip.items()] + [
        "filters.clip.enabled=true", "filters.visual.score_only=true", f"input.path={videos}"]
    url = "s3://runs/dd"
    done = run_cli(tmp_path, bucket, *sets, f"output.dir={url}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sources(url) == ["a.mp4", "b.mp4", "other.mp4"]
    dry = cli(tmp_path, bucket, "dedup", url, "--dry-run", "--set", "filters.dedup.threshold=0.999")
    assert dry.returncode == 0 and "would remove 1" in dry.stdout, dry.stderr[-3000:]
    assert sources(url) == ["a.mp4", "b.mp4", "other.mp4"]
    done = cli(tmp_path, bucket, "dedup", url, "--set", "filters.dedup.threshold=0.999")
    assert done.returncode == 0 and "removed 1" in done.stdout, done.stderr[-3000:]
    assert sources(url) == ["a.mp4", "other.mp4"]  # the same picture: the smaller key is kept
    (reject,) = [r for r in rejects(url) if r["reason"] == "near_duplicate"]
    assert reject["source"].endswith("b.mp4") and reject["stage"] == "dedup" and ">= threshold 0.999" in reject["detail"]
    assert_remote_clean(url, tmp_path / "check1")
    again = run_cli(tmp_path, bucket, *sets, f"output.dir={url}")  # the removed copy is not brought back
    assert again.returncode == 0, again.stderr[-3000:]
    assert sources(url) == ["a.mp4", "other.mp4"]

    store = Storage(url)
    victim = next(r for r in remote_index(url).to_pylist() if r["source"].endswith("other.mp4"))
    journal = {"threshold": 0.9, "removed": {victim["key"]: {"kept": "a", "cosine": 0.93, "source": victim["source"]}}}
    store.put(".ledger/dedup-journal.json", json.dumps(journal).encode())  # a dedup killed after its decision
    finished = run_cli(tmp_path, bucket, *sets, f"output.dir={url}")  # the next run finishes it first
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert sources(url) == ["a.mp4"] and not store.exists(".ledger/dedup-journal.json")
    assert any(r["key"] == victim["key"] and r["reason"] == "near_duplicate" for r in rejects(url))
    assert_remote_clean(url, tmp_path / "check2")

    at_end = "s3://runs/at-end"
    done = run_cli(tmp_path, bucket, *sets, f"output.dir={at_end}", "filters.dedup.enabled=true",
                   "filters.dedup.threshold=0.999")
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(Storage(at_end).get("run.json"))
    assert run["this_run"]["rejected"] == {"near_duplicate": 1} and sources(at_end) == ["a.mp4", "other.mp4"]
    assert_remote_clean(at_end, tmp_path / "check3")
