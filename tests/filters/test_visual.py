"""Cheap visual filters on generated videos made to pass or fail each check."""

from __future__ import annotations

import shutil

import pytest

from filters.visual import VisualFilter
from pipeline.run_config import load_run_config
from pipeline.run_plan import resolve_plan
from pipeline.run import run_pipeline
from pipeline.core.stage import run_stage
from pipeline.video.stages import DecodeStage, ProbeStage
from pipeline.core.task import VideoTask
from shards.reader import open_run, read_index, read_rejects
from shards.stats import compute_stats
from tests.conftest import pipeline_config

EXPECTED = {
    "black_20s": "blank_frames",
    "still_60s": "static",
    "slideshow_40s": "slideshow",
    "blurred_20s": "blurry",
    "testsrc2_20s": None,
}


@pytest.fixture(scope="module")
def decoded(video):
    """Each fixture probed and decoded once (the frames every filter test reuses)."""
    cfg = load_run_config(None, ["input.path=.", "output.dir=.", "decode.isolate=false"])
    decode = DecodeStage(cfg.sampling, cfg.decode)
    out = {}
    for name in EXPECTED:
        task = run_stage(ProbeStage(cfg.probe, cfg.limits), VideoTask(name, str(video(name))))
        out[name] = run_stage(decode, task)
        assert not out[name].rejected, out[name].error
    return out


def _copy(task):
    return VideoTask(task.key, task.source, dict(task.meta), dict(task.frames))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_cheap_filter_catches_its_video_and_passes_the_normal_one(decoded, name):
    cfg = load_run_config(None, ["input.path=.", "output.dir=."]).filters.visual.model_copy(update={"frame_set": "caption"})
    task = run_stage(VisualFilter(cfg), _copy(decoded[name]))
    want = EXPECTED[name]
    if want is None:
        assert not task.rejected, task.error
        scores = task.meta["scores"]
        assert scores["sharpness"] > cfg.min_sharpness and scores["motion"] > cfg.min_motion and scores["blank_ratio"] == 0
    else:
        assert task.error.reason == want and task.error.stage == "visual_filter"
        assert "<" in task.error.detail or ">" in task.error.detail  # the score and its threshold


def test_reject_detail_names_the_score_and_the_threshold(decoded):
    cfg = load_run_config(None, ["input.path=.", "output.dir=."]).filters.visual.model_copy(update={"frame_set": "caption"})
    task = run_stage(VisualFilter(cfg), _copy(decoded["blurred_20s"]))
    score = task.meta["scores"]["sharpness"]
    assert task.error.detail == f"sharpness {score:.1f} < min_sharpness 100"


def test_score_only_keeps_the_video_and_records_what_would_have_happened(decoded):
    cfg = load_run_config(None, ["input.path=.", "output.dir=."]).filters.visual
    cfg = cfg.model_copy(update={"frame_set": "caption", "score_only": True})
    task = run_stage(VisualFilter(cfg), _copy(decoded["black_20s"]))
    assert not task.rejected and task.meta["scores"]["blank_ratio"] == 1.0
    assert task.meta["would_reject"][0].startswith("blank_frames: blank_ratio 1.000 > max_blank_ratio 0.5")


def test_thresholds_come_from_the_config(decoded):
    cfg = load_run_config(None, ["input.path=.", "output.dir=.", "filters.visual.min_sharpness=5"]).filters.visual
    task = run_stage(VisualFilter(cfg.model_copy(update={"frame_set": "caption"})), _copy(decoded["blurred_20s"]))
    assert not task.rejected


def test_cheap_filters_run_before_anything_expensive():
    cfg = load_run_config(None, ["input.path=.", "output.dir=."])
    names = [s.name for s in resolve_plan(cfg).stages]
    assert names == ["probe", "length_filter", "decode", "visual_filter", "token_budget"]
    assert resolve_plan(cfg).stages[3].cfg.frame_set == "caption"
    only_shard = load_run_config(None, ["input.path=.", "output.dir=.", "sampling.sets=[{name: shard, num_frames: 8}]"])
    assert resolve_plan(only_shard).stages[3].cfg.frame_set == "shard"


def test_a_run_rejects_with_filter_reasons_and_indexes_the_scores(video, tmp_path, ray_local):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in EXPECTED:
        shutil.copy(video(name), videos / video(name).name)
    out = tmp_path / "out"
    run_pipeline(pipeline_config(videos, out, "filters.visual.score_only=false", "filters.length.max_duration_s=3600"))
    run = open_run(out)
    rejects = {r["key"].split("-")[0]: r for r in read_rejects(run)}
    assert {k: r["reason"] for k, r in rejects.items()} == {k: v for k, v in EXPECTED.items() if v}
    index = read_index(run)
    assert [r["key"].split("-")[0] for r in index] == ["testsrc2_20s"]
    assert index[0]["score_sharpness"] > 100 and index[0]["visual_scenes"] == 1 and index[0]["visual_frames"] > 0
    assert "score_frames" not in index[0] and "score_scenes" not in index[0]  # counts, not scores
    stats = compute_stats(run)
    assert stats["scores"]["sharpness"]["count"] == 1 and stats["rejects_by_stage"]["visual_filter"] == 4
