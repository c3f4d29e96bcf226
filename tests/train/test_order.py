"""Data orders `permutation` ((video, conversation) items, the paper's sampler) and `video_permutation`: each epoch
every item once, in a fresh order across shards, split over ranks and loader workers; a resumed run trains on
exactly the items an uninterrupted one does, step by step."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config_load import load_config
from tests.train.synth import write_run
from train.config import TrainConfig
from train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
SAMPLES, CONVS = 10, 2  # 20 items, every id different: s<sample>c<conversation>
ALL = sorted(f"s{s:03d}c{c}" for s in range(SAMPLES) for c in range(CONVS))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("perm"), samples=SAMPLES, per_shard=3, conversations=CONVS)


def config(run, out, *extra) -> TrainConfig:
    sets = [f"data.shards={run}", f"output.dir={out}", "model.tiny=true", "model.video_pool_size=4",
            "data.frames=2", "data.image_size=64", "data.num_workers=0", "data.order=permutation",
            "optim.max_steps=20", "optim.precision=fp32", "optim.lr.projector=0.002", "optim.lr.language_model=0.002",
            "output.log_every=1", "output.save_every=7", "output.keep=5", *extra]
    return load_config(None, sets, model=TrainConfig)


def steps_items(history) -> list[list[str]]:
    return [h["items"] for h in history]


def test_each_epoch_is_a_new_permutation_of_every_item(run, tmp_path):
    history = train(config(run, tmp_path / "a", "optim.max_steps=40", "output.save_every=40"))["history"]
    items = [i for h in history for i in h["items"]]
    first, second = items[:20], items[20:]
    assert sorted(first) == ALL and sorted(second) == ALL  # every item once an epoch
    assert first != second  # a new order each epoch
    shard_of = {f"s{s:03d}": s // 3 for s in range(SAMPLES)}
    runs = sum(1 for a, b in zip(first, first[1:]) if shard_of[a[:4]] != shard_of[b[:4]])
    assert runs > 4  # samples of different shards interleave (a shard shuffle would read shard by shard)
    again = train(config(run, tmp_path / "b", "optim.max_steps=20", "output.save_every=40"))["history"]
    assert [i for h in again for i in h["items"]] == first  # the order is the seed's, not chance


def test_permutation_orders_conversations_as_the_papers_sampler(run, tmp_path):
    """Every epoch the sorted (video, conversation) items in the order numpy's generator seeded with (seed, epoch)
    permutes them: conversations of one video are drawn apart, not back to back."""
    history = train(config(run, tmp_path / "a", "optim.max_steps=40", "output.save_every=40"))["history"]
    items = [i for h in history for i in h["items"]]
    for epoch, got in enumerate((items[:20], items[20:])):
        assert got == [ALL[i] for i in np.random.default_rng([0, epoch]).permutation(len(ALL))]
    together = sum(a[:4] == b[:4] for a, b in zip(items[:20], items[1:20]))
    assert together < SAMPLES // 2  # back to back would be 10 of 19 pairs


def test_video_permutation_keeps_a_videos_conversations_together(run, tmp_path):
    history = train(config(run, tmp_path / "v", "data.order=video_permutation", "output.save_every=40"))["history"]
    items = [i for h in history for i in h["items"]]
    assert sorted(items) == ALL
    videos = [i[:4] for i in items]
    keys = sorted({f"s{s:03d}" for s in range(SAMPLES)})
    assert videos[::2] == videos[1::2]  # each video's two conversations in a row
    assert videos[::2] == [keys[i] for i in np.random.default_rng([0, 0]).permutation(SAMPLES)]


@pytest.mark.parametrize("order,workers,batch", [("permutation", 0, 1), ("permutation", 2, 2),
                                                 ("video_permutation", 2, 1), ("shard_shuffle", 2, 1)])
def test_resume_trains_on_the_same_items_step_by_step(run, tmp_path, order, workers, batch):
    extra = (f"data.order={order}", f"data.num_workers={workers}", f"data.batch_size={batch}", "data.shuffle_buffer=4")
    full = train(config(run, tmp_path / "full", *extra))["history"]
    cut = tmp_path / "cut"
    train(config(run, cut, *extra))
    for later in sorted((cut / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(later)  # as if killed after step 7's checkpoint
    resumed = train(config(run, cut, *extra))["history"]
    assert [h["step"] for h in resumed] == list(range(8, 21))
    assert steps_items(resumed) == steps_items(full[7:])
    assert len({i for h in full for i in h["items"]}) > 1 and all(len(h["items"]) == batch for h in full)


def test_two_ranks_split_one_permutation(run, tmp_path):
    out = tmp_path / "ddp"
    sets = [f"data.shards={run}", f"output.dir={out}", "nproc_per_node=2", "optim.max_steps=5", "output.save_every=5",
            "data.order=permutation", "data.frames=2", "output.log_every=1", "data.batch_size=2"]
    done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(ROOT / "configs/train/tiny_debug.yaml"),
                           *[x for s in sets for x in ("--set", s)]], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(len(r["items"]) == 4 for r in logged)  # 2 ranks x batch 2, every step
    assert sorted(i for r in logged for i in r["items"]) == ALL  # one epoch: every item once over both ranks


def test_refused_conversations_are_passed_over_and_counted_in_the_log(tmp_path):
    """A conversation the paper's rules cannot reproduce (`train/chat.py`) is never trained on: the log counts it."""
    bad = {(1, 0): [{"from": "human", "value": "<image> a <image> b"}, {"from": "gpt", "value": "x"}],
           (2, 1): [{"from": "human", "value": "no video here"}, {"from": "gpt", "value": "y"}]}
    odd = write_run(tmp_path / "odd", samples=4, per_shard=2, conversations=2, turns_of=lambda s, c: bad.get((s, c)))
    history = train(config(odd, tmp_path / "out", "data.num_workers=2", "optim.max_steps=6", "output.save_every=40"))[
        "history"]
    items = [i for h in history for i in h["items"]]
    assert sorted(items) == sorted(f"s{s:03d}c{c}" for s in range(4) for c in range(2) if (s, c) not in bad)
    assert history[-1]["passed_over"] == {"no_placeholder": 1, "several_placeholders": 1}
    logged = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert logged[-1]["passed_over"] == history[-1]["passed_over"]
