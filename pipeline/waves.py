"""Feed streamed sources to the stage graph in waves: the driver holds one wave of tasks, never all of them.

Each chunk of sources is checked against the resume state as it arrives: its rejects are committed at once
and its tasks not done yet join the current wave. A wave is one Ray Data pipeline (`run_graph`) of the same
run attempt; the first wave starts after the first chunk (the first video is dispatched without reading the
rest of the input), later ones double in size up to WAVE_MAX tasks (`videos_per_block` in graph.py sets the blocks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from pipeline.core.records import WriteTotals
from pipeline.resume import ResumeState
from pipeline.video.sources import CHUNK, SourceChunk
from pipeline.core.task import VideoTask
from shards.target import LocalTarget, RemoteTarget

if TYPE_CHECKING:
    from pipeline.run_plan import RunPlan

log = logging.getLogger(__name__)

WAVE_MAX = 50_000  # the graph's MAX_BLOCKS: a wave never needs more than 1 video per block for its size


@dataclass
class Dispatched:
    totals: WriteTotals = field(default_factory=WriteTotals)  # every write task's, and the sources' rejects
    skipped: int = 0  # tasks already done (in a finished shard or in the rejects)
    dispatched: int = 0
    waves: int = 0


def dispatch(plan: RunPlan, target: LocalTarget | RemoteTarget, generation: int, chunks: Iterable[SourceChunk],
             state: ResumeState, run_stamp: str, start_ray: Callable[[], None]) -> Dispatched:
    """Run every task of `chunks` that is not done through the graph; commit every fresh source reject."""
    out = Dispatched()
    wave: list[VideoTask] = []
    limit = 1  # the first wave goes as soon as one chunk has something to do

    def flush(n: int) -> None:
        nonlocal wave, limit
        from pipeline.graph import run_graph

        if out.waves == 0:
            start_ray()
        for part in run_graph(plan, wave[:n], run_stamp, generation):
            out.totals.add(part)
        out.dispatched += len(wave[:n])
        out.waves += 1
        log.info("wave %d: %d videos (%d so far)", out.waves, len(wave[:n]), out.dispatched)
        wave, limit = wave[n:], min(WAVE_MAX, max(limit, CHUNK) * 2)

    for chunk in chunks:
        fresh = state.fresh(chunk.rejects)
        if fresh:
            target.commit_rejects(generation, fresh)
            out.totals.count_rejects(r.reason for r in fresh)
        todo = state.todo(chunk.tasks)
        out.skipped += len(chunk.tasks) - len(todo)
        wave += todo
        while wave and len(wave) >= limit:
            flush(min(len(wave), WAVE_MAX))
    if wave:
        flush(len(wave))
    return out
