"""The run config: every section of a pipeline run composed into one typed model, and its cross-section checks.

The sections live beside what reads them (`core.config_run`, `video.config_video`, `filters.config`, `shards.config`,
`dense_caption.config`); loading, overrides and the resolved file are `core.config_load`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from dense_caption.config import LLMConfig
from filters.config import FiltersConfig, default_budget_stages
from pipeline.core.config_base import RunSection
from pipeline.core.config_load import load_config
from pipeline.core.config_run import RayConfig, ResourcesConfig
from pipeline.video.config_video import (
    DecodeConfig, InputConfig, LimitsConfig, ProbeConfig, SamplingConfig, default_sets,
)
from shards.config import ShardsConfig


class OutputConfig(RunSection):
    dir: Annotated[str, Field(min_length=1, pattern=r"\S", description="the run's own folder (not the current one)")]


class RunConfig(RunSection):
    """A pipeline run: where videos come from, where results go, how videos are read and kept."""

    input: InputConfig
    output: OutputConfig
    probe: ProbeConfig = ProbeConfig()
    limits: LimitsConfig = LimitsConfig()
    decode: DecodeConfig = DecodeConfig()
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    shards: ShardsConfig = ShardsConfig()
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    llm: LLMConfig = LLMConfig()

    @field_validator("sampling")
    @classmethod
    def _frames_per_sample(cls, sampling: SamplingConfig, info: ValidationInfo) -> SamplingConfig:
        """Every count of frames a set stores is within input.max_frames_per_sample, each one over it named."""
        inputs = info.data.get("input")
        if inputs is None:  # input itself is invalid: that error is reported
            return sampling
        cap = inputs.max_frames_per_sample
        over = PydanticCustomError("less_than_equal", "Input should be from 1 to {cap} (input.max_frames_per_sample)",
                                   {"cap": cap})
        counts: list[tuple[tuple[str | int, ...], int | None]] = []
        for i, s in enumerate(sampling.sets):
            counts += [(("sets", i, "num_frames"), s.num_frames), (("sets", i, "min_frames"), s.min_frames),
                       (("sets", i, "max_frames"), s.max_frames)]
            counts += [(("sets", i, "stage_frames", j), k) for j, k in enumerate(s.stage_frames)]
        errors = [InitErrorDetails(type=over, loc=loc, input=n) for loc, n in counts if n is not None and n > cap]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return sampling

    @model_validator(mode="after")
    def _shard_set_exists(self) -> "RunConfig":
        sets = {s.name: s for s in self.sampling.sets}
        shard_set = sets.get(self.shards.frame_set)
        if shard_set is None:
            raise ValueError(f"shards.frame_set {self.shards.frame_set!r} names no sampling set (have {sorted(sets)})")
        if self.filters.dedup.enabled and not self.filters.clip.enabled:
            raise ValueError("filters.dedup.enabled needs filters.clip.enabled: dedup compares CLIP embeddings")
        visual = self.filters.visual
        if visual.enabled and visual.frame_set is not None and visual.frame_set not in sets:
            raise ValueError(
                f"filters.visual.frame_set {visual.frame_set!r} names no sampling set (have {sorted(sets)}); "
                "point it at one or set filters.visual.enabled=false"
            )
        clip = self.filters.clip
        if clip.enabled and clip.frame_set is not None and clip.frame_set not in sets:
            raise ValueError(
                f"filters.clip.frame_set {clip.frame_set!r} names no sampling set (have {sorted(sets)}); "
                "point it at one or leave it unset (the shard set)"
            )
        if self.llm.enabled and self.llm.captions.enabled and self.llm.captions.frame_set not in sets:
            raise ValueError(
                f"llm.captions.frame_set {self.llm.captions.frame_set!r} names no sampling set (have {sorted(sets)})"
            )
        self._resolve_frame_sets(set(sets))
        return self

    def _resolve_frame_sets(self, names: set[str]) -> None:
        """Each stage's frame set, decided once here and written into config.resolved.yaml: the visual filter
        checks the 1 fps `caption` set when there is one, CLIP encodes the shard set, unless set otherwise."""
        if self.filters.visual.frame_set is None:
            self.filters.visual.frame_set = "caption" if "caption" in names else self.shards.frame_set
        if self.filters.clip.frame_set is None:
            self.filters.clip.frame_set = self.shards.frame_set

    @property
    def visual_frame_set(self) -> str:
        return self.filters.visual.frame_set or self.shards.frame_set

    @classmethod
    def prefill(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fill list-valued defaults so `--set sampling.sets.0.x=...` can address them."""
        sampling = data.setdefault("sampling", {})
        if isinstance(sampling, dict) and "sets" not in sampling:
            sampling["sets"] = [s.model_dump() for s in default_sets()]
        filters = data.setdefault("filters", {})
        if isinstance(filters, dict):
            budget = filters.setdefault("token_budget", {})
            if isinstance(budget, dict) and "stages" not in budget:
                budget["stages"] = [s.model_dump() for s in default_budget_stages()]
        return data


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a pipeline run's config: see `core.config_load.load_config`."""
    return load_config(path, overrides, model=RunConfig)
