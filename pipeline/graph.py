"""The stage graph on Ray Data: sources -> probe -> length filter -> decode -> visual filter -> token budget -> shards.

Stages with the same resources run fused in one actor per CPU slot, so a
video's frames go from the decoder to the writer as JPEG bytes without an
extra hop; the writer is a Ray Data sink. Caption, QA and quality-filter
stages slot in between decode and the token budget (`extra_stages`).
"""

from __future__ import annotations

from typing import Any

from filters.length import LengthFilter
from filters.token_budget import TokenBudget
from filters.visual import VisualFilter
from pipeline.config import RunConfig
from pipeline.stage import Stage, apply_stages, ray_args
from pipeline.stages import DecodeStage, ProbeStage
from pipeline.task import VideoTask
from shards.sink import ShardSink

MAX_BLOCKS = 50_000  # beyond this, a block holds a few videos: fewer objects for the driver to track


def build_stages(cfg: RunConfig, extra_stages: list[Stage] | None = None) -> list[Stage]:
    res = cfg.resources.video
    stages: list[Stage] = [ProbeStage(cfg.probe, cfg.limits, res)]
    if cfg.filters.length.enabled:
        stages.append(LengthFilter(cfg.filters.length, res))
    stages.append(DecodeStage(cfg.sampling, cfg.decode, res))
    if cfg.filters.visual.enabled:  # cheap checks first: expensive stages never see what they drop
        visual = cfg.filters.visual.model_copy(update={"frame_set": cfg.visual_frame_set})
        stages.append(VisualFilter(visual, res))
    stages.extend(extra_stages or [])
    if cfg.filters.token_budget.enabled:
        stages.append(TokenBudget(cfg.filters.token_budget, cfg.shards.frame_set, res))
    return stages


def stage_names(cfg: RunConfig) -> list[str]:
    return [s.name for s in build_stages(cfg)] + ["write"]


def run_graph(cfg: RunConfig, tasks: list[VideoTask], run_stamp: str) -> list[dict[str, Any]]:
    """Push `tasks` through the graph into shards; returns the write tasks' summaries."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress
    ctx.enable_operator_progress_bars = cfg.ray.progress
    ctx.print_on_execution_start = cfg.ray.progress
    set_names = [s.name for s in cfg.sampling.sets]
    # One block per video (up to MAX_BLOCKS): the streaming executor hands videos to free workers one at a time.
    ds = ray.data.from_items([t.to_row([]) for t in tasks], override_num_blocks=min(len(tasks), MAX_BLOCKS))
    ds = apply_stages(ds, build_stages(cfg), cfg.resources.video, set_names)
    sink = ShardSink(cfg.output.dir, cfg.shards, run_stamp)
    write = cfg.resources.write
    ds.write_datasink(sink, ray_remote_args=ray_args(write), concurrency=write.concurrency)
    return sink.results
