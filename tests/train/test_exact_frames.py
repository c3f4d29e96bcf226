"""Each stage trains on exactly the paper's frames, linspace(0, N-1, k) over the whole video, from shards that
store the union of the stages' picks; other k get the nearest stored frames; old shards keep today's pick."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import webdataset as wds

from fixtures.tiny_train_model import build_tokenizer
from fixtures.videos import CLOCK_RATE
from pipeline.run import run_pipeline
from pipeline.video.sampling import uniform_indices
from tests.conftest import pipeline_config
from tests.train.synth import write_run
from train.chat import ChatEncoder
from train.data import DataConfig, LoaderCounts, shard_urls, training_items

SOURCE_FRAMES = {"clock_10s": 300, "h264_2min": 1800}  # 10 s at 30 fps, 120 s at 15 fps (fixtures/videos.py)
TURNS = [{"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "Time passes."}]


@pytest.fixture(scope="module")
def encoder():
    return ChatEncoder(build_tokenizer())


@pytest.fixture(scope="module")
def union_run(tmp_path_factory, video, ray_local):
    root = tmp_path_factory.mktemp("union")
    (root / "v").mkdir()
    for name in SOURCE_FRAMES:
        shutil.copy(video(name), root / "v" / f"{name}.mp4")
    records = [{"id": name, "video": f"v/{name}.mp4", "conversations": TURNS} for name in SOURCE_FRAMES]
    (root / "ann.json").write_text(json.dumps(records))
    out = root / "out"
    run_pipeline(pipeline_config(root / "ann.json", out, "input.format=llava", f"input.video_root={root}",
                                 "sampling.sets.0.num_frames=192", "sampling.sets.0.stage_frames=[32,128,192]",
                                 "sampling.sets.0.resize.size=64", "filters.visual.enabled=false",
                                 "filters.length.min_duration_s=0"))  # fmt: skip
    return out


def items(run, encoder, k, counts=None):
    cfg = DataConfig(shards=str(run), frames=k, image_size=64, shuffle_buffer=0)
    samples = wds.WebDataset(shard_urls(str(run)), shardshuffle=False, empty_check=False)
    return {i["id"]: i for i in training_items(iter(samples), cfg, encoder, counts, tokens_per_frame=1)}


def source_frames(item) -> list[int]:
    stored = item["meta"].stored_set().indices
    return [stored[p] for p in item["frame_indices"]]


@pytest.mark.parametrize("k", [32, 128, 192])
def test_a_stage_trains_on_the_papers_frames(union_run, encoder, k):
    got = items(union_run, encoder, k)
    assert sorted(got) == sorted(SOURCE_FRAMES)
    for name, n in SOURCE_FRAMES.items():
        item = got[name]
        assert item["meta"].decode.num_frames == n  # the source length the pipeline decoded
        assert source_frames(item) == np.linspace(0, n - 1, k, dtype=int).tolist()  # the paper's picks
        assert item["pixel_values"].shape[0] == k and item["frame_offset"] == 0
    # The clock video's grey level is its time: the frames fed are the ones at the paper's times (±3 frames).
    clock = got["clock_10s"]["pixel_values"].mean(dim=(1, 2, 3))
    rgb = CLOCK_RATE * np.linspace(0, 299, k, dtype=int) / 30 * 255 / 219  # limited-range luma 16 + rate x t
    level = (clock.numpy() + 1) / 2 * 255
    assert np.abs(level - rgb).max() < 3 * CLOCK_RATE / 30 * 255 / 219 + 1.0


def test_another_k_gets_the_nearest_stored_frames_and_its_offset(union_run, encoder):
    counts = LoaderCounts()
    item = items(union_run, encoder, 64, counts)["h264_2min"]
    assert item["meta"].frame_set == "shard"
    stored = np.asarray(item["meta"].stored_set().indices)
    want = np.linspace(0, 1799, 64, dtype=int)
    taken = np.asarray(source_frames(item))
    best = np.abs(stored[None, :] - want[:, None]).min(axis=1)
    assert (np.abs(taken - want) == best).all()
    assert item["frame_offset"] == int(best.max()) > 0 and counts.reasons["nearest_frames"] >= 1


def test_stats_report_what_the_union_costs(union_run):
    from shards.reader import open_run, read_index
    from shards.stats import compute_stats

    run = open_run(union_run)
    rows = read_index(run)
    stored = {r["key"]: r["frames_stored"] for r in rows}
    union = {n: len(set().union(*(np.linspace(0, n - 1, k, dtype=int).tolist() for k in (32, 128, 192))))
             for n in SOURCE_FRAMES.values()}
    assert sorted(stored.values()) == sorted(union.values())
    cost = compute_stats(run)["frame_cost"]
    assert cost["stored_over_largest_stage"] == pytest.approx(sum(union.values()) / (2 * 192), abs=1e-4)
    assert cost["bytes_per_sample"] == pytest.approx(sum(r["sample_bytes"] for r in rows) / 2, abs=0.1)


def test_shards_without_the_union_and_the_papers_repetition_rule(tmp_path, encoder):
    def meta_of(s):
        return {"key": f"video{s:03d}", "num_frames": 3} if s == 1 else {"key": f"video{s:03d}"}

    run = write_run(tmp_path / "run", samples=2, per_shard=2, frames=6, meta_of=meta_of)
    fixed = items(run, encoder, 8)
    assert fixed["s000c0"]["frame_indices"] == uniform_indices(6, 8).tolist()  # 8 frames from 6: some repeat
    assert fixed["s000c0"]["pixel_values"].shape[0] == 8
    assert fixed["s001c0"]["pixel_values"].shape[0] == 3  # the sample names its own count
    cfg = DataConfig(shards=str(run), frames=8, image_size=64, shuffle_buffer=0,
                     frame_count="up_to_stored")
    samples = wds.WebDataset(shard_urls(str(run)), shardshuffle=False, empty_check=False)
    capped = {i["id"]: i for i in training_items(iter(samples), cfg, encoder, tokens_per_frame=1)}
    assert capped["s000c0"]["frame_indices"] == list(range(6))


def test_min_distinct_0_keeps_a_short_video_and_repeats_frames_as_the_papers_linspace(tmp_path, encoder, ray_local):
    """The paper repeats frames of a video shorter than the stage (linspace over N < k frames); the default shard
    set rejects such a video (min_distinct 1.0), and `min_distinct: 0` is the one setting that reproduces the paper."""
    from fixtures.videos import SynthVideo, make_video

    make_video(SynthVideo("clock_2s", duration_s=2, audio=False, pattern="clock"), tmp_path / "v")
    (tmp_path / "ann.json").write_text(json.dumps([{"id": "short", "video": "v/clock_2s.mp4", "conversations": TURNS}]))
    out = tmp_path / "out"
    run_pipeline(pipeline_config(tmp_path / "ann.json", out, "input.format=llava", f"input.video_root={tmp_path}",
                                 "sampling.sets.0.num_frames=192", "sampling.sets.0.stage_frames=[32,128,192]",
                                 "sampling.sets.0.min_distinct=0", "sampling.sets.0.resize.size=64",
                                 "filters.visual.enabled=false", "filters.length.min_duration_s=0"))  # fmt: skip
    for k in (32, 128, 192):
        item = items(out, encoder, k)["short"]
        assert item["meta"].decode.num_frames == 60 and len(item["meta"].stored_set().indices) == 60
        picked = source_frames(item)
        assert picked == np.linspace(0, 59, k, dtype=int).tolist()  # repeats included, as the paper's loader
        pixels = item["pixel_values"]
        assert pixels.shape[0] == k
        for n in range(1, k):  # a repeated frame is the same pixels
            assert picked[n] != picked[n - 1] or bool((pixels[n] == pixels[n - 1]).all())


def test_export_for_the_papers_trainer_writes_the_largest_stages_frames(union_run, tmp_path):
    from shards.llava import export_llava
    from shards.layout import Sample
    from shards.reader import iter_tar_samples

    export_llava(union_run, tmp_path / "out.json", frames_dir=tmp_path / "frames")
    for url in shard_urls(str(union_run)):
        for key, members in iter_tar_samples(url):
            sample = Sample(members, key)
            positions = sample.meta.stored_set().stage(192).positions
            written = sorted((tmp_path / "frames" / "shareVideoGPTV" / key).iterdir())
            assert len(written) == 192 and [p.read_bytes() for p in written] == sample.frames(positions)
