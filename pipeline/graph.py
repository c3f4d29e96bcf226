"""The stage graph on Ray Data: sources -> probe -> length -> decode -> visual -> CLIP -> captions -> QA
-> caption-frame agreement -> token budget -> shards.

Stages with the same resources run fused in one actor per CPU slot, so a
video's frames go from the decoder to the writer as JPEG bytes without an
extra hop; CLIP scoring, the LLM stages (captions, QA) and caption-frame
agreement (CLIP again, once captions exist) have pools of their own; the
writer is a Ray Data sink. The run plan (`pipeline/run_plan.py`) holds the
stages and their pools; every wave runs the same ones.
"""

from __future__ import annotations

from pipeline.core.records import WriteTotals
from pipeline.core.stage import apply_stages, ray_args
from pipeline.core.task import VideoTask
from pipeline.run_plan import RunPlan, StageGroup
from shards.sink import ShardSink

MAX_BLOCKS = 50_000  # beyond this, a block holds a few videos: fewer objects for the driver to track
BLOCKS_PER_SLOT = 64  # a wave has at least this many blocks per video slot before videos share a block
MAX_VIDEOS_PER_BLOCK = 8
NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node: its id


def videos_per_block(videos: int, slots: int) -> int:
    """One video per block while a wave is small for its pool, so the streaming executor hands videos to free
    workers one at a time; a large wave puts up to 8 in a block, which divides Ray Data's own cost per block
    (about 10 ms of CPU here, half of the 1% a 3-minute video's decode allows) while every slot still gets
    64 blocks or more, so the last blocks' imbalance stays a small share of the run."""
    grouped = min(MAX_VIDEOS_PER_BLOCK, videos // (max(slots, 1) * BLOCKS_PER_SLOT))
    return max(1, grouped, -(-videos // MAX_BLOCKS))


def _pool_sizes(groups: tuple[StageGroup, ...]) -> list[int]:
    """The first (video) pool fills the CPUs the other pools leave; the others use their configured size."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    others = sum(g.resources.num_cpus * (g.resources.concurrency or 1) for g in groups[1:])
    first = groups[0].resources
    video = first.concurrency or max(1, int((cpus - others) // max(first.num_cpus, 1e-6)))
    return [video] + [g.resources.concurrency or 1 for g in groups[1:]]


def driver_node() -> dict[str, str]:
    """A Ray label selector for the driver's node (where a loopback LLM server is reachable)."""
    import ray

    return {NODE_ID_LABEL: ray.get_runtime_context().get_node_id()}


def run_graph(plan: RunPlan, tasks: list[VideoTask], run_stamp: str, generation: int) -> list[WriteTotals]:
    """Push `tasks` through the plan's stages into shards; returns the write tasks' summaries."""
    import ray.data

    cfg = plan.cfg
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress
    ctx.enable_operator_progress_bars = cfg.ray.progress
    ctx.print_on_execution_start = cfg.ray.progress
    sizes = _pool_sizes(plan.groups)
    per_block = videos_per_block(len(tasks), sizes[0])
    ds = ray.data.from_items([t.to_row([]) for t in tasks], override_num_blocks=-(-len(tasks) // per_block))
    for group, size in zip(plan.groups, sizes):
        rows = cfg.llm.videos_in_flight if group.llm else 1
        pinned = driver_node() if group.llm and plan.pin_llm else None
        ds = apply_stages(ds, list(group.stages), group.resources, plan.set_names, size, rows, pinned)
    sink = ShardSink(cfg.output.dir, cfg.shards, run_stamp, generation)
    write = cfg.resources.write
    ds.write_datasink(sink, ray_remote_args=ray_args(write), concurrency=write.concurrency)
    return sink.results
