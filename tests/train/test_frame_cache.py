"""A loader worker decodes a video's frames once for the items that follow each other on it, and its cache of
decoded frames stays within its bound (the newest entry always kept)."""

from __future__ import annotations

import pytest
import torch

import train.data as data
from fixtures.tiny_train_model import build_tokenizer
from tests.train.synth import write_run
from train.chat import ChatEncoder
from train.data import DataConfig, training_items
from train.frame_cache import FrameCache
from train.order import permuted_samples

SAMPLES, CONVS = 4, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("cache"), samples=SAMPLES, per_shard=2, conversations=CONVS)


def items_and_decodes(run, monkeypatch, by: str, cache_mb: int = 64) -> tuple[list[dict], int]:
    calls = []
    real = data.decode_frames
    monkeypatch.setattr(data, "decode_frames", lambda jpegs, cfg: calls.append(1) or real(jpegs, cfg))
    cfg = DataConfig(shards=str(run), frames=2, image_size=64, frame_cache_mb=cache_mb)
    items = list(training_items(permuted_samples(str(run), 0, None, 0, by), cfg, ChatEncoder(build_tokenizer()),
                                tokens_per_frame=4))
    return items, len(calls)


def test_video_order_decodes_each_video_once(run, monkeypatch):
    items, decodes = items_and_decodes(run, monkeypatch, "video")
    assert len(items) == SAMPLES * CONVS and decodes == SAMPLES


def test_conversation_order_reuses_frames_it_still_holds(run, monkeypatch):
    items, decodes = items_and_decodes(run, monkeypatch, "conversation")
    assert len(items) == SAMPLES * CONVS and decodes == SAMPLES  # 4 videos' frames fit the cache: one decode each
    _, bounded = items_and_decodes(run, monkeypatch, "conversation", cache_mb=0)  # only the newest entry kept
    runs = 1 + sum(a["key"] != b["key"] for a, b in zip(items, items[1:]))
    assert bounded == runs > SAMPLES
    again = {i["id"]: i["pixel_values"] for i in items}
    for item in items_and_decodes(run, monkeypatch, "video")[0]:
        assert torch.equal(item["pixel_values"], again[item["id"]])  # the same pixels whatever the order


def test_the_cache_evicts_least_recently_used_past_its_bound():
    mb = torch.zeros(1 << 18)  # 1 MiB of float32
    cache = FrameCache(max_bytes=2 << 20)
    for name in "abc":
        cache.put((name, (0,)), mb.clone())
    assert cache.get(("a", (0,))) == (False, None) and cache.get(("c", (0,)))[0]
    cache.get(("b", (0,)))
    cache.put(("d", (0,)), mb.clone())  # c was used before b: c goes
    assert not cache.get(("c", (0,)))[0] and cache.get(("b", (0,)))[0]
    huge = FrameCache(max_bytes=0)
    huge.put(("x", (0,)), mb.clone())
    assert huge.get(("x", (0,)))[0]  # the newest entry stays even past the bound


def test_a_worker_keeps_a_bounded_number_of_tars_open(run):
    """A permutation reads every shard in turn; only the most recently read stay open, the reads stay the same."""
    from train.order import LazySample, TarMembers, epoch_keys, run_samples

    where = dict(run_samples(str(run)))
    bounded, free = TarMembers(max_open=1), TarMembers()
    try:
        for key in epoch_keys(list(where), 0, 0) * 2:
            a, b = LazySample(key, where[key], bounded), LazySample(key, where[key], free)
            assert a["json"] == b["json"] and a["frames.mjpeg"] == b["frames.mjpeg"]
            assert len(bounded._files) == 1
        assert len(free._files) == len(set(where.values())) > 1
    finally:
        bounded.close()
        free.close()
