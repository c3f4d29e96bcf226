"""Config sections every stage shares: the resources a stage's workers reserve, and Ray itself.

Each stage package keeps its own config beside it (`filters.config`, `shards.config`, `dense_caption.config`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.core.config_base import (
    MAX_MEMORY_MB, MAX_NODE_CPUS, MAX_NODE_GPUS, MemoryMB, Range, RunSection, Threads, Workers,
)


class StageResources(RunSection):
    """What one worker of a stage reserves from Ray, and how many run at once (None: as many as fit)."""

    num_cpus: Annotated[float, Range(0, MAX_NODE_CPUS)] = 1.0
    num_gpus: Annotated[float, Range(0, MAX_NODE_GPUS)] = 0.0
    memory_mb: MemoryMB = 0
    concurrency: Workers | None = None


class ResourcesConfig(RunSection):
    """Per-stage resources. Probe, filters and decode share one Ray task per video when their resources match."""

    video: StageResources = Field(
        default_factory=lambda: StageResources(num_cpus=1.0),
        description="probe, length filter, decode, token budget (decode uses num_cpus threads)",
    )
    # Writing is I/O plus a sha256: it reserves no CPU so the video stage can fill every core.
    write: StageResources = Field(default_factory=lambda: StageResources(num_cpus=0.0))
    clip: StageResources = Field(
        default_factory=lambda: StageResources(num_cpus=1.0, concurrency=1),
        description="CLIP scoring actors (set num_gpus: 1 on GPU nodes)",
    )
    # Caption/QA workers wait on the LLM server; each handles llm.videos_in_flight videos at once.
    llm: StageResources = Field(
        default_factory=lambda: StageResources(num_cpus=0.0, concurrency=1),
        description="caption and QA workers (HTTP clients of the LLM server)",
    )


class RayConfig(RunSection):
    address: str | None = Field(None, description="cluster address; None: RAY_ADDRESS if set, else embedded local Ray")
    num_cpus: Annotated[Threads, Field(ge=1)] | None = Field(
        None, description="CPUs of the embedded local Ray (at most 4x this machine's)"
    )
    temp_dir: str | None = Field(None, description="temp/session folder of the embedded local Ray")
    progress: bool = Field(True, description="Ray Data's per-stage progress bars")
    resource_wait_s: Annotated[float, Range(0, 7 * 24 * 3600)] = Field(
        600.0, description="a pool that finds no node able to run its tasks for this long ends the run (exit 7; "
        "a rerun resumes); 0: wait forever (an autoscaler that takes longer to add nodes)")
    # Ray refuses an object store under 75 MiB.
    object_store_mb: Annotated[int, Range(75, MAX_MEMORY_MB)] | None = None
