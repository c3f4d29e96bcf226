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
from pipeline.core.config_load import ConfigError
from pipeline.run_config import RunConfig
from pipeline.core.config_run import StageResources
from pipeline.core.meta import SOURCE_WRITES, check_data_flow
from pipeline.video.opened import SourceRules
from pipeline.core.records import WriteTotals
from pipeline.core.stage import Stage, apply_stages, ray_args
from pipeline.video.stages import DecodeStage, ProbeStage
from pipeline.core.task import VideoTask
from shards.sink import ShardSink

MAX_BLOCKS = 50_000  # beyond this, a block holds a few videos: fewer objects for the driver to track
BLOCKS_PER_SLOT = 64  # a wave has at least this many blocks per video slot before videos share a block
MAX_VIDEOS_PER_BLOCK = 8


def videos_per_block(videos: int, slots: int) -> int:
    """One video per block while a wave is small for its pool, so the streaming executor hands videos to free
    workers one at a time; a large wave puts up to 8 in a block, which divides Ray Data's own cost per block
    (about 10 ms of CPU here, half of the 1% a 3-minute video's decode allows) while every slot still gets
    64 blocks or more, so the last blocks' imbalance stays a small share of the run."""
    grouped = min(MAX_VIDEOS_PER_BLOCK, videos // (max(slots, 1) * BLOCKS_PER_SLOT))
    return max(1, grouped, -(-videos // MAX_BLOCKS))


def build_groups(cfg: RunConfig, extra_stages: list[Stage] | None = None) -> list[tuple[list[Stage], StageResources]]:
    """Stages in order, grouped by the resources they run on: each group is one Ray actor pool.

    Each stage is tagged with the config field that put it in the graph, so a read no earlier stage writes
    (`check_graph`) is reported against the field the user set.
    """
    res = cfg.resources.video
    rules = SourceRules.from_input(cfg.input)  # sources are confined again where they are opened
    video: list[Stage] = [_tag(ProbeStage(cfg.probe, cfg.limits, res, rules), "probe")]
    if cfg.filters.length.enabled:
        video.append(_tag(LengthFilter(cfg.filters.length, res), "filters.length.enabled"))
    video.append(_tag(DecodeStage(cfg.sampling, cfg.decode, res, rules), "sampling"))
    if cfg.filters.visual.enabled:  # cheap checks first: expensive stages never see what they drop
        video.append(_tag(VisualFilter(cfg.filters.visual, res), "filters.visual.enabled"))
    groups: list[tuple[list[Stage], StageResources]] = [(video, res)]
    clip, clip_res = cfg.filters.clip, cfg.resources.clip
    if clip.enabled:
        groups.append(([_tag(ClipScores(clip, clip.frame_set, clip_res), "filters.clip.enabled")], clip_res))
    captions = cfg.llm.enabled and cfg.llm.captions.enabled
    if cfg.llm.enabled and (cfg.llm.captions.enabled or cfg.llm.qa.enabled):  # captions and QA: their own pool of I/O-bound workers, many videos each
        from dense_caption.stages import llm_stages

        stages = llm_stages(cfg.llm, cfg.resources.llm)
        for stage in stages:
            _tag(stage, "llm.captions.enabled" if stage.name == "caption" else "llm.qa.enabled")
        groups.append((stages, cfg.resources.llm))
    if clip.enabled and (captions or clip.min_frame_text is not None):  # after the captions it checks: a CLIP pool of its own
        field = "filters.clip.min_frame_text" if clip.min_frame_text is not None else "filters.clip.enabled"
        groups.append(([_tag(CaptionAgreement(clip, clip.frame_set, clip_res), field)], clip_res))
    groups[-1][0].extend(extra_stages or [])
    if cfg.filters.token_budget.enabled:
        budget = TokenBudget(cfg.filters.token_budget, cfg.shards.frame_set, groups[-1][1])
        groups[-1][0].append(_tag(budget, "filters.token_budget.enabled"))
    return groups


def _tag(stage: Stage, field: str) -> Stage:
    stage.config_field = field
    return stage


def check_graph(cfg: RunConfig, extra_stages: list[Stage] | None = None) -> None:
    """ConfigError naming the field when a stage the config asks for reads data no source or earlier stage writes."""
    fmt = cfg.input.format
    provided = set(SOURCE_WRITES["manifest"]) | set(SOURCE_WRITES["llava"]) if fmt == "auto" else \
        set(SOURCE_WRITES["folder" if fmt == "folder" else "llava" if fmt == "llava" else "manifest"])
    problems = check_data_flow(build_stages(cfg, extra_stages), provided)
    if problems:
        raise ConfigError("; ".join(problems))


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


def run_graph(cfg: RunConfig, tasks: list[VideoTask], run_stamp: str, generation: int) -> list[WriteTotals]:
    """Push `tasks` through the graph into shards; returns the write tasks' summaries."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress
    ctx.enable_operator_progress_bars = cfg.ray.progress
    ctx.print_on_execution_start = cfg.ray.progress
    set_names = [s.name for s in cfg.sampling.sets]
    groups = build_groups(cfg)
    sizes = _pool_sizes(groups)
    per_block = videos_per_block(len(tasks), sizes[0] or 1)
    ds = ray.data.from_items([t.to_row([]) for t in tasks], override_num_blocks=-(-len(tasks) // per_block))
    for (stages, resources), size in zip(groups, sizes):
        llm = any(s.thread_safe for s in stages)
        rows = cfg.llm.videos_in_flight if llm else 1
        placement = llm_placement(cfg) if llm else None
        ds = apply_stages(ds, stages, resources.model_copy(update={"concurrency": size}), set_names, rows, placement)
    sink = ShardSink(cfg.output.dir, cfg.shards, run_stamp, generation)
    write = cfg.resources.write
    ds.write_datasink(sink, ray_remote_args=ray_args(write), concurrency=write.concurrency)
    return sink.results
