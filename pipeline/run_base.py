"""What a run into a folder and a run into a bucket share: the summary, run.json's document, the lock error and
the start of Ray."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.config_load import config_record
from pipeline.core.records import WriteTotals
from pipeline.run_config import RunConfig

if TYPE_CHECKING:
    from pipeline.run_plan import RunPlan
    from pipeline.video.sources import SourceStream
    from pipeline.waves import Dispatched

log = logging.getLogger(__name__)

VERSIONED = ["prolongvid", "ray", "pyarrow", "webdataset", "av", "decord", "numpy", "pillow", "pydantic"]


class RunLocked(RuntimeError):
    """Another run is writing to the same output directory."""


@dataclass
class RunSummary:
    out_dir: str
    sources: int
    skipped: int
    accepted: int
    rejected: dict[str, int]
    samples_total: int
    rejects_total: int
    wall_s: float
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)  # LLM requests, tokens, retries, failures, tokens/s
    cluster: dict[str, float] = field(default_factory=dict)  # the Ray cluster's CPUs and GPUs (what `plan` scales from)
    skipped_by_extension: int = 0  # folder entries that are not videos by name
    input_rows: int = 0  # every row of the input (records, or folder entries): samples' + rejects' + skipped
    skipped_suffixes: dict[str, int] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        return self.accepted + sum(self.rejected.values())

    @property
    def videos_per_hour(self) -> float:
        return self.processed / self.wall_s * 3600 if self.wall_s > 0 else 0.0


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# Ray kills an idle worker after 1 s once the actor pools fill the node, so every write task (one per 100
# videos) started a fresh Python worker: about 3 s of CPU, 14 ms of a CPU slot per video (bench/overhead.py).
IDLE_WORKER_KEEP_MS = 600_000


def init_ray(cfg: RunConfig) -> None:
    """Embedded local Ray unless an address is configured or `ray job submit` set RAY_ADDRESS."""
    import ray

    from pipeline.ray_local import start_local_ray

    if ray.is_initialized():
        return
    # Ray's start-up notices ask nothing of the user: shown only at --log-level debug/info.
    ray_level = min(logging.getLogger().getEffectiveLevel(), logging.ERROR)
    _quiet_ray_data(ray_level)
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":  # "local" asks Ray for a new local cluster: the embedded one below
        ray.init(address=address, log_to_driver=True, logging_level=ray_level)
        _quiet_ray_data(ray_level)
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "num_cpus": cfg.ray.num_cpus, "logging_level": ray_level,
                              "_system_config": {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS}}
    if cfg.ray.temp_dir:
        kwargs["_temp_dir"] = str(Path(cfg.ray.temp_dir).resolve())
    if cfg.ray.object_store_mb:
        kwargs["object_store_memory"] = cfg.ray.object_store_mb * 1024 * 1024
    start_local_ray(kwargs)  # loopback only, behind a token made for this run
    _quiet_ray_data(ray_level)


def _quiet_ray_data(level: int) -> None:
    """Ray Data's per-dataset INFO lines, its notice that progress bars are off (our config's choice) and the
    token-authentication notice of a local cluster are kept off the console unless the log level asks for them."""
    import ray.data  # noqa: F401  (its own logging set-up runs on import; the levels below come after it)

    quiet = level > logging.INFO
    for name, at in (("ray.data", logging.WARNING), ("ray.data._internal.progress", logging.ERROR),
                     ("ray._private.authentication", logging.ERROR)):
        logging.getLogger(name).setLevel(at if quiet else level)


def reconcile(summary: RunSummary, written: WriteTotals, committed: dict[str, int]) -> dict[str, int] | None:
    """This run's accepted count from what it committed (`shards.rows.committed_by_run`); the driver's own tally
    is only a cross-check: when they differ (a writer committed, then its result was lost with its worker), one
    line says so and the tally is returned for run.json."""
    driver = {"accepted": written.samples, "shards_written": len(written.shards)}
    summary.accepted = committed["samples"]
    if driver == {"accepted": committed["samples"], "shards_written": committed["shards"]}:
        return None
    log.warning("this run committed %d samples in %d shards; its driver heard of %d in %d (a writer's result lost "
                "with its worker): run.json reports what is committed", committed["samples"], committed["shards"],
                driver["accepted"], driver["shards_written"])
    return driver


def run_document(plan: RunPlan, summary: RunSummary, started: datetime, written: WriteTotals, cleaned: dict[str, int],
                 dropped: int, previous_doc: dict[str, Any], rows: dict[str, int],
                 committed: dict[str, int] | None = None, driver_tally: dict[str, int] | None = None) -> dict[str, Any]:
    """run.json: the config and plan, versions, this run's counts (shards and bytes from what it `committed`, the
    driver's differing tally beside them), the totals of the tables (`rows`: their input rows), and the earlier
    runs' records (`previous_doc`: the run.json this one replaces)."""
    previous = previous_doc.get("previous_runs", []) + [previous_doc.get("this_run", {})] if previous_doc else []
    shards = written.shards
    if committed is None:
        committed = {"shards": len(shards), "bytes": sum(s["bytes"] for s in shards)}
    doc = {
        "config": config_record(plan.cfg),
        "plan": plan.record(),
        "versions": versions(),
        "input_kind": plan.input_kind,
        "this_run": {
            "started": started.isoformat(timespec="seconds"),
            "wall_s": round(summary.wall_s, 3),
            "sources": summary.sources,
            "skipped_already_done": summary.skipped,
            "skipped_by_extension": summary.skipped_by_extension,
            "input_rows": summary.input_rows,
            "skipped_suffixes": summary.skipped_suffixes,
            "accepted": summary.accepted,
            "rejected": summary.rejected,
            "shards_written": committed["shards"],
            "bytes_written": committed["bytes"],
            "frames_written": written.frames,
            "videos_per_hour": round(summary.videos_per_hour, 1),
            "stages": summary.stages,
            "window_s": round(written.window_s(), 3),  # first stage of the first video to the last write
            "resume": {"cleaned": cleaned, "retried_rejects": dropped},
            "llm": summary.llm,
            "cluster": summary.cluster,
            **({"driver_tally": driver_tally} if driver_tally else {}),
        },
        # every input row is a sample's, a reject's or a skipped one: `stats --verify` checks the sum
        "totals": {"samples": summary.samples_total, "rejects": summary.rejects_total, "input_rows": summary.input_rows,
                   "skipped_rows": summary.skipped_by_extension, **rows},
        "previous_runs": previous,
    }
    return doc


def cluster_resources() -> dict[str, float]:
    """What the run had (`prolongvid plan` scales from it): the Ray cluster's CPUs and GPUs."""
    import ray

    if not ray.is_initialized():
        return {}
    resources = ray.cluster_resources()
    return {"cpus": float(resources.get("CPU", 0)), "gpus": float(resources.get("GPU", 0))}


def summarize(out_dir: str, sources: SourceStream, done: Dispatched, samples_total: int, rejects_total: int,
              wall_s: float, cluster: dict[str, float]) -> RunSummary:
    written = done.totals
    summary = RunSummary(out_dir=out_dir, sources=sources.tasks_seen + sources.rejects_seen, skipped=done.skipped,
                         accepted=written.samples, rejected=dict(written.rejects), samples_total=samples_total,
                         rejects_total=rejects_total, wall_s=wall_s, stages=written.stage_rates(),
                         skipped_by_extension=sources.skipped_by_extension, input_rows=sources.input_rows,
                         skipped_suffixes=dict(sources.skipped_suffixes), cluster=cluster)
    summary.llm = written.llm_summary(wall_s)
    return summary
