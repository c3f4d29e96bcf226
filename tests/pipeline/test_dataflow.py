"""The declared data between stages: names checked when a stage is defined, reads checked when the graph is built,
writes checked (strict mode, on in the test suite) while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config_load import ConfigError

from pipeline.run_config import load_run_config
from pipeline.graph import MAX_BLOCKS, MAX_VIDEOS_PER_BLOCK, videos_per_block
from pipeline.core.meta import SECTIONS, check_data_flow
from pipeline.core.stage import Stage, run_stage
from pipeline.core.task import VideoTask
from pipeline.run_plan import resolve_plan

ROOT = Path(__file__).resolve().parents[2]
BASE = ["input.path=.", "output.dir=out"]


def test_the_suite_runs_in_strict_mode():
    assert os.environ.get("PROLONGVID_STRICT_META") == "1"


def test_a_stage_declaring_an_unknown_section_fails_when_defined():
    with pytest.raises(TypeError, match="meta.captoins"):
        class Typo(Stage):  # noqa: F841
            name = "typo"
            reads = ("meta.captoins",)

            def process(self, task):
                return task


def test_every_stage_of_every_graph_declares_known_sections():
    cfg = load_run_config(None, BASE + ["filters.clip.enabled=true", "llm.enabled=true", "llm.model=m"])
    stages = resolve_plan(cfg).stages
    assert [s.name for s in stages] == ["probe", "length_filter", "decode", "visual_filter", "clip_scores", "caption",
                                        "qa", "caption_agreement", "token_budget"]  # fmt: skip
    for stage in stages:
        for name in (*stage.reads, *stage.may_read, *stage.writes):
            assert name == "frames" or name[5:] in SECTIONS, (stage.name, name)
        assert stage.config_field, stage.name
    assert check_data_flow(stages, ()) == []
    resolve_plan(cfg)


@pytest.mark.parametrize("overrides, field", [
    (["filters.clip.enabled=true", "filters.clip.min_frame_text=0.2"], "filters.clip.min_frame_text"),
    (["filters.clip.enabled=true", "filters.clip.min_frame_text=0.2", "llm.enabled=true", "llm.model=m",
      "llm.captions.enabled=false", "llm.qa.enabled=false"], "filters.clip.min_frame_text"),
])
def test_a_config_asking_for_data_nothing_writes_fails_naming_the_field(overrides, field):
    cfg = load_run_config(None, BASE + overrides)
    with pytest.raises(ConfigError) as e:
        resolve_plan(cfg)
    assert str(e.value).startswith(f"{field}: stage ") and "meta.captions" in str(e.value), str(e.value)


def test_the_cli_refuses_it_before_touching_the_output_dir(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", ROOT / "configs/demo.yaml", "--set", f"output.dir={out}",
         "--set", "llm.enabled=false", "--set", "filters.clip.enabled=true", "--set", "filters.clip.min_frame_text=0.2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "filters.clip.min_frame_text: stage caption_agreement reads meta.captions" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_frame_sets_are_resolved_once_at_load_and_shown_in_the_resolved_config(tmp_path):
    from pipeline.core.config_load import write_resolved_config

    cfg = load_run_config(None, BASE)
    assert cfg.filters.visual.frame_set == "caption" and cfg.filters.clip.frame_set == "shard"
    no_caption = load_run_config(None, BASE + ["sampling.sets=[{name: shard, mode: uniform, num_frames: 8}]"])
    assert no_caption.filters.visual.frame_set == "shard"
    chosen = load_run_config(None, BASE + ["filters.visual.frame_set=shard", "filters.clip.frame_set=caption"])
    assert (chosen.filters.visual.frame_set, chosen.filters.clip.frame_set) == ("shard", "caption")
    write_resolved_config(cfg, tmp_path)
    resolved = load_run_config(tmp_path / "config.resolved.yaml")
    assert resolved.filters.visual.frame_set == "caption" and resolved.filters.clip.frame_set == "shard"
    text = (tmp_path / "config.resolved.yaml").read_text()
    assert "frame_set: caption" in text and "frame_set: null" not in text


class _Writes(Stage):
    """A stage as a product package would define it (strict mode checks product stages only)."""

    __module__ = "filters.example"
    name = "writer"
    writes = ("meta.scores",)

    def __init__(self, key: str, value):
        super().__init__()
        self.key, self.value = key, value

    def process(self, task: VideoTask) -> VideoTask:
        task.meta[self.key] = self.value
        return task


def test_strict_mode_fails_a_stage_that_writes_undeclared_or_mistyped_data():
    ok = run_stage(_Writes("scores", {"sharpness": 12.5}), VideoTask("k", "s"))
    assert not ok.rejected and "writer" in ok.metrics.seconds
    undeclared = run_stage(_Writes("tokens", {"stage1": 10}), VideoTask("k", "s"))
    assert undeclared.error.reason == "internal_error" and "meta.tokens" in undeclared.error.detail
    mistyped = run_stage(_Writes("scores", {"sharpness": "very"}), VideoTask("k", "s"))
    assert mistyped.error.reason == "internal_error" and "does not fit its type" in mistyped.error.detail
    unchanged = VideoTask("k", "s", {"tokens": {"stage1": 1}})
    assert not run_stage(_Writes("scores", {}), unchanged).rejected  # sections it did not touch are not its


def test_the_video_stages_write_what_they_declare_in_the_declared_types(video):
    """Strict mode through the real probe, length, decode, visual and token-budget stages of a default graph."""
    cfg = load_run_config(None, [f"input.path={video('h264_10s').parent}", "output.dir=out", "decode.isolate=false",
                             "filters.visual.min_motion=0", "filters.visual.min_sharpness=0"])  # fmt: skip
    task = VideoTask("k", video("h264_10s"), {"conversations": [{"id": "k", "conversations": [
        {"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "A test pattern moves."}]}]})
    for stage in resolve_plan(cfg).stages:
        task = run_stage(stage, task)
        assert not task.rejected, (stage.name, task.error)
    assert {"video", "decode", "scores", "counts", "tokens"} <= set(task.meta)
    assert {"probe", "decode", "token_budget"} <= set(task.metrics.seconds)  # beside the data, not in it


def test_videos_share_a_block_only_when_every_slot_still_gets_many_blocks():
    assert videos_per_block(1, 2) == 1
    assert videos_per_block(127, 2) == 1  # fewer than 64 blocks per slot if grouped: one video each
    assert videos_per_block(1_000, 2) == 7 and videos_per_block(10_000, 2) == MAX_VIDEOS_PER_BLOCK
    assert videos_per_block(10_000, 1_000) == 1  # a big cluster: the same wave stays one video per block
    for videos, slots in [(1_000, 2), (10_000, 16), (50_000, 100), (3 * MAX_BLOCKS, 10_000)]:
        per_block = videos_per_block(videos, slots)
        blocks = -(-videos // per_block)
        assert blocks <= MAX_BLOCKS and (per_block == 1 or blocks >= 64 * slots or per_block * MAX_BLOCKS >= videos)
