"""Training reads a run from an object store (a real S3 API server on loopback) as it reads it from disk: the
same items step by step, in both data orders, and the same preflight line; eval shards are left out there too."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config_load import load_config
from fixtures.s3server import upload_tree
from tests.remote_helpers import bucket_env
from tests.train.synth import write_run
from train.config import TrainConfig
from train.data import shard_urls
from train.preflight import check_training_data
from train.trainer import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run on disk and in a bucket (uploaded file by file, as `aws s3 sync` would)."""
    local = write_run(tmp_path_factory.mktemp("run"), samples=7, per_shard=3, conversations=2)
    with bucket_env(tmp_path_factory.mktemp("s3")):
        upload_tree(local, "s3://runs/run1")
        yield local, "s3://runs/run1"


def config(shards, out, *extra) -> TrainConfig:
    sets = [f"data.shards={shards}", f"output.dir={out}", "model.tiny=true", "model.video_pool_size=4",
            "data.frames=2", "data.image_size=64", "data.num_workers=0", "optim.max_steps=8", "optim.precision=fp32",
            "optim.lr.projector=0.002", "optim.lr.language_model=0.002", "output.log_every=1", "output.save_every=8",
            *extra]
    return load_config(None, sets, model=TrainConfig)


def test_the_shard_list_and_preflight_read_the_bucket(runs):
    local, remote = runs
    assert [u.rpartition("/")[2] for u in shard_urls(remote)] == [u.rpartition("/")[2] for u in shard_urls(str(local))]
    assert all(u.startswith("s3://runs/run1/shards/") for u in shard_urls(remote))
    assert check_training_data(remote, 1) == check_training_data(str(local), 1)


@pytest.mark.parametrize("order", ["shard_shuffle", "permutation"])
def test_training_from_the_bucket_matches_training_from_disk(runs, tmp_path, order):
    local, remote = runs
    want = train(config(local, tmp_path / "local", f"data.order={order}"))["history"]
    got = train(config(remote, tmp_path / "remote", f"data.order={order}"))["history"]
    keys = ("step", "loss", "tokens", "items")
    assert [{k: h[k] for k in keys} for h in got] == [{k: h[k] for k in keys} for h in want]
    assert len(got) == 8


def test_loader_workers_read_the_bucket(runs, tmp_path):
    """`prolongvid train` with loader worker processes: the trainer lists the bucket in a spawned process, so the
    workers it forks start the store's client themselves (a forked client would hang)."""
    import json
    import os
    import subprocess
    import sys

    local, remote = runs
    root = Path(__file__).resolve().parents[2]

    def history(shards, out):
        sets = [f"data.shards={shards}", f"output.dir={out}", "model.video_pool_size=4", "data.frames=2",
                "data.num_workers=2", "data.order=permutation", "optim.max_steps=6", "output.log_every=1",
                "output.save_every=6"]
        args = [sys.executable, "-m", "pipeline", "train", str(root / "configs/train/tiny_debug.yaml")]
        for item in sets:
            args += ["--set", item]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(root)})
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    want, got = history(local, tmp_path / "local"), history(remote, tmp_path / "remote")
    assert [(h["items"], h["loss"]) for h in got] == [(h["items"], h["loss"]) for h in want] and len(got) == 6


def test_a_stages_frames_come_in_one_ranged_request(runs):
    """Permutation order reads a sample's frames for a stage from the bucket as one range (frames close together),
    the same bytes as from disk: one request per sample, not one per frame."""
    from pipeline.core.sample_io import parse_meta
    from shards.layout import stored_frames
    from train.order import LazySample, TarMembers

    local, remote = runs
    url = shard_urls(remote)[0]
    path = str(local / "shards" / url.rpartition("/")[2])
    here, there = TarMembers(), TarMembers()
    key = _first_key(path)
    near, far = LazySample(key, path, here), LazySample(key, url, there)
    meta = parse_meta(near["json"])
    assert parse_meta(far["json"]) == meta
    before = there._files[url].requests
    positions = [0, 2, 4, 5]
    assert stored_frames(far, meta, positions) == stored_frames(near, meta, positions)
    assert there._files[url].requests - before == 1


def _first_key(path: str) -> str:
    from shards.reader import iter_tar_samples

    return next(iter_tar_samples(path))[0]
