"""The stage graph on Ray Data: sources -> probe -> length -> decode -> visual -> CLIP -> captions -> QA
-> caption-frame agreement -> token budget -> shards.

Stages with the same resources run fused in one actor per CPU slot, so a
video's frames go from the decoder to the writer as JPEG bytes without an
extra hop; CLIP scoring, the LLM stages (captions, QA) and caption-frame
agreement (CLIP again, once captions exist) have pools of their own; the
writer is a Ray Data sink.
"""

from __future__ import annotations

from typing import Any

from filters.clip_scores import CaptionAgreement, ClipScores
from filters.length import LengthFilter
from filters.token_budget import TokenBudget
from filters.visual import VisualFilter
from pipeline.config import RunConfig
from pipeline.config_run import StageResources
from pipeline.stage import Stage, apply_stages, ray_args
from pipeline.stages import DecodeStage, ProbeStage
from pipeline.task import VideoTask
from shards.sink import ShardSink

MAX_BLOCKS = 50_000  # beyond this, a block holds a few videos: fewer objects for the driver to track


def build_groups(cfg: RunConfig, extra_stages: list[Stage] | None = None) -> list[tuple[list[Stage], StageResources]]:
    """Stages in order, grouped by the resources they run on: each group is one Ray actor pool."""
    res = cfg.resources.video
    video: list[Stage] = [ProbeStage(cfg.probe, cfg.limits, res)]
    if cfg.filters.length.enabled:
        video.append(LengthFilter(cfg.filters.length, res))
    video.append(DecodeStage(cfg.sampling, cfg.decode, res))
    if cfg.filters.visual.enabled:  # cheap checks first: expensive stages never see what they drop
        visual = cfg.filters.visual.model_copy(update={"frame_set": cfg.visual_frame_set})
        video.append(VisualFilter(visual, res))
    groups: list[tuple[list[Stage], StageResources]] = [(video, res)]
    clip, clip_set, clip_res = cfg.filters.clip, cfg.filters.clip.frame_set or cfg.shards.frame_set, cfg.resources.clip
    if clip.enabled:
        groups.append(([ClipScores(clip, clip_set, clip_res)], clip_res))
    if cfg.llm.enabled and (cfg.llm.captions.enabled or cfg.llm.qa.enabled):  # captions and QA: their own pool of I/O-bound workers, many videos each
        from dense_caption.stages import llm_stages

        groups.append((llm_stages(cfg.llm, cfg.resources.llm), cfg.resources.llm))
        if clip.enabled and cfg.llm.captions.enabled:  # agreement needs the captions: a CLIP pool after the LLM's
            groups.append(([CaptionAgreement(clip, clip_set, clip_res)], clip_res))
    groups[-1][0].extend(extra_stages or [])
    if cfg.filters.token_budget.enabled:
        groups[-1][0].append(TokenBudget(cfg.filters.token_budget, cfg.shards.frame_set, groups[-1][1]))
    return groups


def build_stages(cfg: RunConfig, extra_stages: list[Stage] | None = None) -> list[Stage]:
    return [stage for stages, _ in build_groups(cfg, extra_stages) for stage in stages]


def _pool_sizes(groups: list[tuple[list[Stage], StageResources]]) -> list[int | None]:
    """The first (video) pool fills the CPUs the other pools leave; the others use their configured size."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    others = sum(r.num_cpus * (r.concurrency or 1) for _, r in groups[1:])
    first = groups[0][1]
    video = first.concurrency or max(1, int((cpus - others) // max(first.num_cpus, 1e-6)))
    return [video] + [r.concurrency or 1 for _, r in groups[1:]]


def llm_placement(cfg: RunConfig) -> dict[str, Any] | None:
    """An LLM server on a loopback address (a managed one, by default) is reachable only from the driver's node:
    the caption/QA actors are pinned there. Any other address lets Ray place them anywhere."""
    from urllib.parse import urlparse

    if cfg.llm.backend != "http":
        return None
    host = urlparse(cfg.llm.http.url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        return None
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)}


def run_graph(cfg: RunConfig, tasks: list[VideoTask], run_stamp: str, generation: int) -> list[dict[str, Any]]:
    """Push `tasks` through the graph into shards; returns the write tasks' summaries."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress
    ctx.enable_operator_progress_bars = cfg.ray.progress
    ctx.print_on_execution_start = cfg.ray.progress
    set_names = [s.name for s in cfg.sampling.sets]
    # One block per video (up to MAX_BLOCKS): the streaming executor hands videos to free workers one at a time.
    ds = ray.data.from_items([t.to_row([]) for t in tasks], override_num_blocks=min(len(tasks), MAX_BLOCKS))
    groups = build_groups(cfg)
    for (stages, resources), size in zip(groups, _pool_sizes(groups)):
        llm = any(s.thread_safe for s in stages)
        rows = cfg.llm.videos_in_flight if llm else 1
        placement = llm_placement(cfg) if llm else None
        ds = apply_stages(ds, stages, resources.model_copy(update={"concurrency": size}), set_names, rows, placement)
    sink = ShardSink(cfg.output.dir, cfg.shards, run_stamp, generation)
    write = cfg.resources.write
    ds.write_datasink(sink, ray_remote_args=ray_args(write), concurrency=write.concurrency)
    return sink.results
