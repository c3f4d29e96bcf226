"""Exactly once on an object store under faults (a real S3 API server on loopback): a writer killed right after
its commit, and a driver SIGKILLed at different points and started again at once (its lease is free at once: its
holder died on this machine). Each ends with the same members, byte for byte, as a run into a local folder: no
key twice, `--verify` clean, no unlisted shard or record left in the bucket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.core.storage import Storage
from shards import remote_ledger
from shards.target import FAULT_HOOKS_VAR, FAULT_KILL_AFTER_COMMIT
from tests.contents import assert_remote_clean, content, remote_content
from tests.pipeline.test_exactly_once import kill_and_restart, small_videos  # noqa: F401 (fixture)
from tests.remote_helpers import bucket_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    with bucket_env(tmp_path_factory.mktemp("s3")) as env:
        yield env


def _cli_run(videos: Path, out: str, ray_temp: str, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline", "run", str(ROOT / "configs" / "demo.yaml"),
           "--set", f"input.path={videos}", "--set", "input.format=auto", "--set", f"output.dir={out}",
           "--set", "llm.enabled=false", "--set", "shards.max_samples=2", "--set", "ray.num_cpus=2",
           "--set", "ray.progress=false", "--set", "shards.eval_fraction=0", "--set", f"ray.temp_dir={ray_temp}"]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT), FAULT_HOOKS_VAR: "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def reference(small_videos, bucket, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ref") / "run"
    temp = tempfile.mkdtemp(prefix="rayf", dir="/tmp")
    try:
        done = _cli_run(small_videos, str(out), temp, bucket)
        log = done.communicate(timeout=600)[0].decode(errors="replace")
        assert done.returncode == 0, log[-3000:]
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    found = content(out)
    assert len({key for key, _ in found}) == 6
    return found


def test_a_writer_killed_after_its_commit_stores_nothing_twice(small_videos, bucket, reference, tmp_path):  # noqa: F811
    url = "s3://runs/writer-killed"
    store = Storage(url)
    remote_ledger.claim_folder(store)  # a run folder, as a run makes it
    store.put(f".ledger/{FAULT_KILL_AFTER_COMMIT}", b"armed")
    temp = tempfile.mkdtemp(prefix="rayf", dir="/tmp")
    try:
        done = _cli_run(small_videos, url, temp, bucket)
        log = done.communicate(timeout=600)[0].decode(errors="replace")
        assert done.returncode == 0, log[-3000:]
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert store.get(f".ledger/{FAULT_KILL_AFTER_COMMIT}") == b"taken"  # a writer did die, after its commit
    assert remote_content(url) == reference
    assert_remote_clean(url, tmp_path / "tables")


def test_a_driver_killed_and_restarted_stores_every_video_once(small_videos, bucket, reference, tmp_path):  # noqa: F811
    url = "s3://runs/driver-killed"
    store = Storage(url)
    temp = tempfile.mkdtemp(prefix="rayf", dir="/tmp")
    try:  # killed while shards are being committed (after the first record), or at a later time
        kill_and_restart(lambda: _cli_run(small_videos, url, temp, bucket), attempts=3,
                         started=lambda: any(True for page in store.list_pages(".ledger/shards/") for _ in page),
                         later=lambda attempt: 6 + 3 * attempt, poll=0.1)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert remote_content(url) == reference
    assert_remote_clean(url, tmp_path / "tables")


def test_a_throttling_and_reply_dropping_store_ends_like_a_clean_run(small_videos, bucket, reference, tmp_path):  # noqa: F811
    """Every request through a proxy that answers 503 SlowDown to a window of them (14 in a row: more than the library retries by default) and, throughout, passes every
    11th on but cuts its reply: the store's client retries, and a create-only write whose retry finds its own first
    write counts as done (lease, upload, commit)."""
    from fixtures.s3server import faulty_proxy

    url = "s3://runs/throttled"
    temp = tempfile.mkdtemp(prefix="rayf", dir="/tmp")
    try:
        with faulty_proxy(bucket["AWS_ENDPOINT_URL"]) as (proxy, faults):
            faults.slowdown, faults.drop_reply_every = 14, 11
            done = _cli_run(small_videos, url, temp, {**bucket, "AWS_ENDPOINT_URL": proxy})
            log = done.communicate(timeout=600)[0].decode(errors="replace")
            assert done.returncode == 0, log[-3000:]
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert faults.injected["slowdown"] == 14 and faults.injected["dropped"] >= 5
    assert remote_content(url) == reference
    assert_remote_clean(url, tmp_path / "tables")
