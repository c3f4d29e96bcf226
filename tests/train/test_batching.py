"""Batches bucketed by frame count and length; resuming mid-epoch (items waiting in buckets) gives the same batches."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from train import batching
from train.position import WorkerEnd, WorkerItem

FRAMES = [4, 2, 4, 2, 4, 4, 2, 4, 2, 2, 4]  # an overlong sample got 2 frames instead of 4
LENGTHS = [10, 12, 30, 11, 12, 31, 13, 10, 33, 12, 14]


def items(skip):
    """One worker's stream as build_dataset gives it: items tagged with worker and index, then an end marker."""
    made = [WorkerItem(0, i, {"pixel_values": torch.zeros(f, 3, 2, 2), "input_ids": torch.full((n,), i),
                              "labels": torch.full((n,), i)}) for i, (f, n) in enumerate(zip(FRAMES, LENGTHS))]  # fmt: skip
    return made[skip[0]:] + [WorkerEnd(0)]


@pytest.fixture(autouse=True)
def fake_items(monkeypatch):
    monkeypatch.setattr(batching, "build_dataset", lambda data, encoder, epoch=0, skip=(0,), **run: items(skip))


def stream(batch_size, bucket_tokens=0, state=None):
    data = SimpleNamespace(batch_size=batch_size, length_bucket_tokens=bucket_tokens, num_workers=0, shards="x")
    made = batching.DataStream(SimpleNamespace(data=data, seed=0), encoder=None, pad_id=-1, tokens_per_frame=1)
    if state is not None:
        made.load_state_dict(state)
    return made


def ids(batch) -> list[int]:
    return [int(row[0]) for row in batch["input_ids"]]


def test_batches_never_mix_frame_counts_and_flush_at_epoch_end():
    got = list(itertools.islice(stream(2).batches(), 7))
    # frames 4: items 0 2 4 5 7 10; frames 2: 1 3 6 8 9 (9 waits alone until the epoch ends); then epoch 2
    assert [ids(b) for b in got] == [[0, 2], [1, 3], [4, 5], [6, 8], [7, 10], [9], [0, 2]]
    assert all(len({FRAMES[i] for i in ids(b)}) == 1 for b in got)
    assert got[0]["pixel_values_videos"].shape == (2, 4, 3, 2, 2) and (got[0]["labels"][0, 10:] == -100).all()


def test_length_buckets_keep_padding_small():
    got = list(itertools.islice(stream(2, bucket_tokens=16).batches(), 6))
    widths = [b["input_ids"].shape[1] - min(LENGTHS[i] for i in ids(b)) for b in got]
    assert max(widths) <= 15  # no 10-token item padded to 30
    assert sorted(i for b in got for i in ids(b)) == list(range(len(FRAMES)))


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
def test_resume_from_any_batch_gives_the_same_batches(cut):
    whole = stream(2)
    reference = [ids(b) for b in itertools.islice(whole.batches(), 14)]  # two epochs
    first = stream(2)
    batches = first.batches()
    done = [ids(next(batches)) for _ in range(cut)]
    state = first.state_dict()
    if cut == 1:
        assert state["pending"] == [[0, 1]]  # worker 0's item 1 (2 frames) waits for a partner in its bucket
    resumed = [ids(b) for b in itertools.islice(stream(2, state=state).batches(), 14 - cut)]
    assert done + resumed == reference
