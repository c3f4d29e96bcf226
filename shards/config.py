"""The shard writer's config: which frame set the shards store and how big a shard grows."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.core.config_base import Bytes, RunSection, Workers


class ShardsConfig(RunSection):
    frame_set: str = Field("shard", description="the sampling set whose frames the shards store")
    max_samples: Workers = 100
    max_bytes: Bytes = 1 << 30
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = "shard"
    fsync: bool = Field(True, description="flush each shard to disk before it becomes visible")
    eval_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="share of videos (chosen by key) held out in their own eval shards; 0: none"
    )
