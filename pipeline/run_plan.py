"""The run plan: every decision a run takes from its config, taken once when the run starts and passed down.

`resolve_plan` decides the input kind, which stages run in which pools (built here once: every wave reuses
them, and a stage that reads what nothing before it writes is a ConfigError naming the field), the frame set
each stage reads, the probe and decode settings the stages run with, and whether the caption/QA workers must
stay on the driver's node; `RunPlan.served` adds where the LLM answers once its service is up. The config stays
what the user wrote (config.resolved.yaml); run.json's `plan` shows what the run made of it. This module is the
only place a config section is copied with changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dense_caption.config import LLMConfig
from dense_caption.service import LLMEndpoints
from dense_caption.stages import CaptionStage, QAStage
from filters.clip_scores import CaptionAgreement, ClipScores
from filters.length import LengthFilter
from filters.token_budget import TokenBudget
from filters.visual import VisualFilter
from pipeline.core.config_load import ConfigError
from pipeline.core.config_run import StageResources
from pipeline.core.meta import SOURCE_WRITES, check_data_flow
from pipeline.core.stage import Stage
from pipeline.run_config import RunConfig
from pipeline.video.config_video import DecodeConfig, ProbeConfig
from pipeline.core.storage import is_remote
from pipeline.video.opened import SourceRules, url_prefixes
from pipeline.video.sources import input_kind
from pipeline.video.stages import DecodeStage, FetchStage, ProbeStage

LLM_STAGES = {"caption": (CaptionStage, "llm.captions.enabled"), "qa": (QAStage, "llm.qa.enabled")}


@dataclass(frozen=True)
class StageGroup:
    """One Ray actor pool: stages that run fused, in order, on the same resources."""

    stages: tuple[Stage, ...]
    resources: StageResources
    llm: bool = False  # the caption/QA pool: several videos at once per worker, each waiting on the server


@dataclass(frozen=True)
class RunPlan:
    """What a run does, resolved from its config; the graph, the waves, the writer and run.json read it."""

    cfg: RunConfig  # as the user wrote it, never changed
    input_kind: str  # folder, jsonl, csv, parquet or llava
    probe: ProbeConfig  # what the probe stage runs with: no keyframe scan (the decoder's index gives the spacing)
    decode: DecodeConfig  # what the decode stage runs with: its threads, and the decoder log at --log-level debug
    llm: LLMConfig  # what the caption/QA stages run with: the served endpoints, once `served`
    llm_stages: tuple[str, ...]  # the LLM stages that run ("caption", "qa"); none: no LLM service is started
    groups: tuple[StageGroup, ...]  # the stages, in order, by pool
    frame_sets: tuple[tuple[str, str], ...]  # (stage, the frame set it reads) in graph order; ("shards", stored)
    endpoints: LLMEndpoints | None = None

    @property
    def set_names(self) -> list[str]:
        return [s.name for s in self.cfg.sampling.sets]

    @property
    def stages(self) -> list[Stage]:
        return [stage for group in self.groups for stage in group.stages]

    @property
    def pin_llm(self) -> bool:
        """An LLM server on a loopback address (a managed one, by default) is reachable only from the driver's
        node: the caption/QA workers are pinned there. Any other address lets Ray place them anywhere."""
        host = urlparse(self.llm.http.url).hostname or ""
        return self.llm.backend == "http" and (host in ("localhost", "::1") or host.startswith("127."))

    def served(self, endpoints: LLMEndpoints) -> RunPlan:
        """The plan once the LLM service is up: the caption/QA stages call `endpoints`."""
        http = _changed(self.llm.http, url=endpoints.http_url)
        engine = _changed(self.llm.engine, urls=list(endpoints.engine_urls), run_key=endpoints.run_key)
        llm = _changed(self.llm, http=http, engine=engine)
        groups = tuple(replace(g, stages=tuple(_llm_stage(s.name, llm, g.resources) if s.name in LLM_STAGES else s
                                               for s in g.stages)) if g.llm else g for g in self.groups)
        return replace(self, llm=llm, groups=groups, endpoints=endpoints)

    def record(self) -> dict[str, Any]:
        """run.json's `plan`: what this run made of its config (the replicas' key is never in it)."""
        llm: dict[str, Any] = {"stages": list(self.llm_stages)}
        if self.llm_stages:
            llm.update(backend=self.llm.backend, pinned_to_driver=self.pin_llm)
            if self.endpoints is not None:
                llm.update(http_url=self.endpoints.http_url, engine_urls=list(self.endpoints.engine_urls))
        pools = [{"stages": [s.name for s in g.stages], **g.resources.model_dump(mode="json")} for g in self.groups]
        return {"input_kind": self.input_kind, "pools": pools, "frame_sets": dict(self.frame_sets),
                "probe": self.probe.model_dump(mode="json"), "decode": self.decode.model_dump(mode="json"), "llm": llm}


def resolve_plan(cfg: RunConfig, root: Path | None = None, llm_python: str | None = None) -> RunPlan:
    """The plan of a run of `cfg` into `root`; ConfigError naming the field when a stage the config asks for reads
    data no source or earlier stage writes. `llm_python`: the interpreter of a managed LLM server, when the caller
    chose one (the demo's vLLM venv)."""
    kind = input_kind(cfg.input)
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    log_dir = cfg.decode.log_dir or (str(root / "logs") if debug and root is not None else None)
    # never more decode threads than the CPUs the video stage reserves
    decode = _changed(cfg.decode, threads=cfg.decode.threads or max(1, int(cfg.resources.video.num_cpus)),
                      log_dir=log_dir)
    # no keyframe scan (an ffprobe run of its own, a third of the probe's cost)
    probe = _changed(cfg.probe, keyframe_scan_s=0.0)
    llm = cfg.llm
    if llm_python:
        llm = _changed(llm, http=_changed(llm.http, managed=_changed(llm.http.managed, python=llm_python)))
    on = {"caption": llm.captions.enabled, "qa": llm.qa.enabled}
    llm_stages = tuple(name for name in LLM_STAGES if llm.enabled and on[name])
    groups, frame_sets = _groups(cfg, probe, decode, llm, llm_stages)
    plan = RunPlan(cfg, kind, probe, decode, llm, llm_stages, groups, frame_sets)
    source = "manifest" if kind in ("jsonl", "csv", "parquet") else kind
    problems = check_data_flow(plan.stages, SOURCE_WRITES[source])
    if problems:
        raise ConfigError("; ".join(problems))
    return plan


def _groups(cfg: RunConfig, probe: ProbeConfig, decode: DecodeConfig, llm: LLMConfig, llm_stages: tuple[str, ...],
            ) -> tuple[tuple[StageGroup, ...], tuple[tuple[str, str], ...]]:
    """The stages in order, grouped by the resources they run on, and the frame set each reads.

    Each stage is tagged with the config field that put it in the graph, so a read no earlier stage writes is
    reported against the field the user set.
    """
    res = cfg.resources.video
    rules = SourceRules.from_input(cfg.input)  # sources are confined again where they are opened
    sets: list[tuple[str, str]] = []
    video: list[Stage] = []
    if is_remote(cfg.input.path) or input_kind(cfg.input) != "folder":  # rows may name s3:// or http(s):// videos
        video.append(_tag(FetchStage(cfg.input.fetch, cfg.input.http.enabled, url_prefixes(cfg.input.allowed_roots),
                                     res), "input.path"))
    video.append(_tag(ProbeStage(probe, cfg.limits, res, rules), "probe"))
    if cfg.filters.length.enabled:
        video.append(_tag(LengthFilter(cfg.filters.length, res), "filters.length.enabled"))
    video.append(_tag(DecodeStage(cfg.sampling, decode, res, rules), "sampling"))
    visual = cfg.filters.visual
    if visual.enabled:  # cheap checks first: expensive stages never see what they drop
        video.append(_tag(VisualFilter(visual, res), "filters.visual.enabled"))
        sets.append(("visual_filter", visual.frame_set or cfg.shards.frame_set))
    groups = [StageGroup(tuple(video), res)]
    clip, clip_res = cfg.filters.clip, cfg.resources.clip
    clip_set = clip.frame_set or cfg.shards.frame_set
    if clip.enabled:
        groups.append(StageGroup((_tag(ClipScores(clip, clip_set, clip_res), "filters.clip.enabled"),), clip_res))
        sets.append(("clip_scores", clip_set))
    if llm_stages:  # captions and QA: their own pool of I/O-bound workers, many videos each
        llm_res = cfg.resources.llm
        groups.append(StageGroup(tuple(_llm_stage(name, llm, llm_res) for name in llm_stages), llm_res, llm=True))
        if "caption" in llm_stages:
            sets.append(("caption", llm.captions.frame_set))
    if clip.enabled and ("caption" in llm_stages or clip.min_frame_text is not None):  # a CLIP pool after the captions
        field = "filters.clip.min_frame_text" if clip.min_frame_text is not None else "filters.clip.enabled"
        groups.append(StageGroup((_tag(CaptionAgreement(clip, clip_set, clip_res), field),), clip_res))
        sets.append(("caption_agreement", clip_set))
    if cfg.filters.token_budget.enabled:  # in the last pool, on its resources
        last = groups[-1]
        budget = _tag(TokenBudget(cfg.filters.token_budget, last.resources),
                      "filters.token_budget.enabled")
        groups[-1] = replace(last, stages=(*last.stages, budget))
        sets.append(("token_budget", cfg.shards.frame_set))
    sets.append(("shards", cfg.shards.frame_set))
    return tuple(groups), tuple(sets)


def _llm_stage(name: str, llm: LLMConfig, resources: StageResources) -> Stage:
    cls, field = LLM_STAGES[name]
    return _tag(cls(llm, resources), field)


def _tag(stage: Stage, field: str) -> Stage:
    stage.config_field = field
    return stage


def _changed(section: Any, **changes: Any) -> Any:
    """A copy of a config section with `changes` (values the run derived, never the user's input: not validated)."""
    return section.model_copy(update=changes)
