"""The held-out eval split: chosen by key, written to its own shards, never trained on, counted by stats."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.core.config_load import ConfigError
from pipeline.run import run_pipeline
from shards.layout import RunDir
from shards.reader import open_run, read_index, read_shard_list
from shards.split import EVAL, TRAIN, split_of
from shards.stats import compute_stats, stats_table
from tests.conftest import pipeline_config
from train.data import shard_urls
from train.order import run_samples


def test_the_split_depends_on_the_key_alone_and_holds_about_the_fraction():
    keys = [f"video{i:05d}" for i in range(4000)]
    held = {k for k in keys if split_of(k, 0.25) == EVAL}
    assert 0.22 < len(held) / len(keys) < 0.28
    assert held == {k for k in keys if split_of(k, 0.25) == EVAL}  # the same on every run
    assert {k for k in keys if split_of(k, 0.1) == EVAL} <= held  # a larger fraction only adds videos
    assert all(split_of(k, 0.0) == TRAIN for k in keys)


def test_eval_fraction_is_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match="shards.eval_fraction"):
        pipeline_config(tmp_path, tmp_path / "out", "shards.eval_fraction=1.0")


@pytest.mark.timeout(900)
def test_a_run_writes_its_eval_split_to_its_own_shards_and_training_skips_them(tmp_path, video, ray_local):
    folder = tmp_path / "videos"
    folder.mkdir()
    names = ("h264_10s", "h264_10s_noaudio", "clock_10s", "halves_10s", "mandelbrot_10s")
    for name in names:
        shutil.copy(video(name), folder / f"{name}.mp4")
    manifest = folder / "manifest.jsonl"  # ids as keys: two of these five fall below 0.5, three above
    manifest.write_text("".join(json.dumps({"path": f"{n}.mp4", "id": n}) + "\n" for n in names))
    out = tmp_path / "run"
    run_pipeline(pipeline_config(manifest, out, "shards.eval_fraction=0.5", "sampling.sets.0.num_frames=8",
                                 "sampling.sets.0.stage_frames=[4]", "sampling.sets.0.resize.size=64",
                                 "filters.visual.enabled=false"))  # fmt: skip
    run = open_run(out)
    rows = read_index(run)
    assert len(rows) == 5 and all(r["split"] == split_of(r["key"], 0.5) for r in rows)
    held = {r["key"] for r in rows if r["split"] == EVAL}
    assert held == {"h264_10s_noaudio", "clock_10s"}
    listed = read_shard_list(run)
    for shard in listed:  # a shard holds one split, and says which
        assert {r["split"] for r in rows if r["shard"] == shard["name"]} == {shard["split"]}
        assert ("-eval-" in shard["name"]) == (shard["split"] == EVAL)
    eval_shards = {str(RunDir(out).shards / s["name"]) for s in listed if s["split"] == EVAL}
    assert eval_shards and not eval_shards & set(shard_urls(str(out)))
    assert {key for key, _ in run_samples(str(out))} == {r["key"] for r in rows} - held
    stats = compute_stats(run)
    assert stats["splits"][EVAL]["samples"] == len(held) and stats["splits"][TRAIN]["samples"] == 5 - len(held)
    assert "split eval" in stats_table(stats)
    assert json.loads(json.dumps(stats))["splits"]  # the --json output carries both splits
