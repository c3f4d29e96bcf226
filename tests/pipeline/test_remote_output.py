"""A run whose output folder is on an object store (a real S3 API server on loopback): the same samples, byte for
byte, as the same run into a local folder; a rerun has nothing to do; a second driver is refused while the first
holds the lease; a prefix with someone else's objects is refused untouched; readers (training's shard list, the
index) see the settled shards only."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from fixtures.s3server import make_bucket, s3_env, s3_server
from pipeline.core.storage import Storage
from shards.reader import iter_tar_samples
from shards.remote import open_stream, remote_index, remote_shard_urls
from tests.pipeline.test_remote_input import run_cli

pytestmark = pytest.mark.slow


def run_stats(tmp, env, *args):
    import os
    import subprocess
    import sys

    from tests.pipeline.test_remote_input import ROOT

    return subprocess.run([sys.executable, "-m", "pipeline", "stats", *args], capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, cwd=tmp, timeout=300)


def remote_rejects(store: Storage) -> list[dict]:
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(store.get("rejects.parquet"))).to_pylist()


def members_by_key(urls: list[str]) -> dict[str, dict[str, str]]:
    """sha256 of every member, by key (paths, inodes and timings left out of the json: they differ by place)."""
    out = {}
    for url in urls:
        source = open_stream(url) if "://" in url else url
        for key, members in iter_tar_samples(source):
            meta = json.loads(members["json"])
            for field in ("decode_seconds",):
                meta.get("decode", {}).pop(field, None)
            meta.get("video", {}).pop("file", None)
            members = {**members, "json": json.dumps(meta, sort_keys=True).encode()}
            assert key not in out, f"{key} twice"
            out[key] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    return out


@pytest.fixture
def videos(video, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("h264_10s", "vp9_10s", "clock_10s"):
        shutil.copy(video(name), folder / f"{name}.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video")
    return folder


def test_a_run_into_a_bucket_equals_a_run_into_a_folder(videos, tmp_path, monkeypatch):
    local = run_cli(tmp_path, {}, f"input.path={videos}", f"output.dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr[-3000:]
    with s3_server(tmp_path) as endpoint:
        make_bucket(endpoint, "runs")
        env = s3_env(endpoint)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        first = run_cli(tmp_path, env, f"input.path={videos}", "output.dir=s3://runs/run1")
        assert first.returncode == 0, first.stderr[-3000:]
        store = Storage("s3://runs/run1")
        urls = remote_shard_urls(store.root)
        want = members_by_key(sorted(str(p) for p in (tmp_path / "local" / "shards").glob("*.tar")))
        assert members_by_key(urls) == want and len(want) == 3
        index = remote_index(store.root)
        assert sorted(index.column("key").to_pylist()) == sorted(want)
        run = json.loads(store.get("run.json"))
        assert run["this_run"]["accepted"] == 3 and run["totals"]["samples"] == 3 and run["totals"]["rejects"] == 1
        assert run["totals"]["sample_rows"] + run["totals"]["reject_rows"] == run["totals"]["input_rows"] == 4
        again = run_cli(tmp_path, env, f"input.path={videos}", "output.dir=s3://runs/run1")
        assert again.returncode == 0, again.stderr[-3000:]
        run = json.loads(store.get("run.json"))
        assert run["this_run"]["skipped_already_done"] == 4 and run["this_run"]["accepted"] == 0
        assert remote_shard_urls(store.root) == urls
        (reason,) = {r["reason"] for r in remote_rejects(store)}
        retried = run_cli(tmp_path, env, f"input.path={videos}", "output.dir=s3://runs/run1", f"--retry-rejects={reason}")
        assert retried.returncode == 0, retried.stderr[-3000:]
        run = json.loads(store.get("run.json"))
        assert run["this_run"]["resume"]["retried_rejects"] == 1 and run["this_run"]["rejected"] == {reason: 1}
        assert len(remote_rejects(store)) == 1
        forced = run_cli(tmp_path, env, f"input.path={videos}", "output.dir=s3://runs/run1", "--force")
        assert forced.returncode == 0, forced.stderr[-3000:]
        assert members_by_key(remote_shard_urls(store.root)) == want
        assert json.loads(store.get("run.json"))["this_run"]["accepted"] == 3
        tars = sorted(i.path for p in store.list_pages("shards/") for i in p)
        assert tars == sorted(u[len(store.root) + 1:] for u in remote_shard_urls(store.root))  # nothing else left
        stats = run_stats(tmp_path, env, "s3://runs/run1", "--verify", "--json")
        assert stats.returncode == 0, stats.stderr[-3000:]
        assert json.loads(stats.stdout)["verify"] == {"ok": True, "problems": []}
        store.put(remote_shard_urls(store.root)[0][len(store.root) + 1:], b"cut")  # a damaged shard: --verify says so
        bad = run_stats(tmp_path, env, "s3://runs/run1", "--verify")
        assert bad.returncode == 1 and "3 bytes" in bad.stderr
        held = json.loads(store.get(".ledger/lease.json"))
        assert held["released"] and held["generation"] >= 2

        import os
        import socket

        live = f"{socket.gethostname()}:{os.getpid()}:test"  # a driver alive on this machine (this process)
        store.put(".ledger/lease.json", json.dumps({**held, "owner": live, "released": False,
                                                    "renewed_at": 9e12}).encode())
        locked = run_cli(tmp_path, env, f"input.path={videos}", "output.dir=s3://runs/run1")
        assert locked.returncode == 4 and "being written by" in locked.stderr
        Storage("s3://runs/photos").put("cat.jpg", b"meow")
        refused = run_cli(tmp_path, env, f"input.path={videos}", "output.dir=s3://runs/photos")
        assert refused.returncode == 2 and "not a run folder" in refused.stderr
        assert [i.path for p in Storage("s3://runs/photos").list_pages() for i in p] == ["cat.jpg"]
