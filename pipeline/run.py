"""One pipeline run: lock the output dir, resume from its ledger, run the graph, write the tables and run.json.

A rerun into the same directory skips every video already in a finished shard
or in the rejects, removes what a killed run left half-written, and processes
the rest, so the final sample set equals an uninterrupted run's. `force`
starts over; `retry_reasons` forgets rejects with those reasons first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from pipeline.core.config_load import ConfigError, config_record, write_resolved_config

from pipeline.run_config import RunConfig
from pipeline.core.records import WriteTotals
from pipeline.resume import resume_state
from pipeline.video.sources import SourceChunk, SourceStream, open_sources
from pipeline.waves import dispatch
from shards.commit import begin_generation, commit_lock
from shards import ledger
from shards.dedup_apply import finish_journal
from shards.layout import RunDir
from shards.target import LocalTarget
from shards.rows import row_totals
from shards.runfolder import claim, release_unused

if TYPE_CHECKING:
    from pipeline.run_plan import RunPlan

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


@contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.lock, "a+") as f:  # not "w": a run that loses the race must not wipe the holder's pid
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunLocked(f"another run (pid {holder}) is writing to {run.root} (lock {run.lock})") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


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


def run_pipeline(cfg: RunConfig, force: bool = False, retry_reasons: list[str] | tuple[str, ...] = (),
                 repair: bool = False, llm_python: str | None = None) -> RunSummary:
    """Run the graph over every source not done yet. Raises ServerUnavailable before any change when the LLM is unusable.

    Every run redoes the samples of shards whose size no longer matches their record (or that repeat a key);
    `repair` also checks every shard's sha256 first. `llm_python`: the interpreter of a managed LLM server.
    """
    from dense_caption.http_backend import ServerUnavailable
    from dense_caption.service import llm_service
    from pipeline.run_plan import resolve_plan

    root = check_output_dir(cfg.output.dir)
    plan = resolve_plan(cfg, root, llm_python)  # a stage that reads what nothing before it writes: ConfigError
    sources = open_sources(cfg.input, kind=plan.input_kind)
    chunks = sources.chunks()
    head = list(islice(chunks, 1))  # the first chunk read now: a bad input fails before anything in the output dir changes
    run = RunDir(root)
    made = not root.exists()
    fresh = claim(run)  # someone else's folder is refused before anything in it changes; ours gets the marker
    try:
        with run_lock(run):  # the lock comes first: no server starts and nothing changes without it
            if not plan.llm_stages:
                return _run(plan, run, sources, chain(head, chunks), force, retry_reasons, repair)
            with llm_service(plan.llm, root / "logs", lambda: init_ray(cfg)) as endpoints:
                return _run(plan.served(endpoints), run, sources, chain(head, chunks), force, retry_reasons, repair)
    except ServerUnavailable:
        if fresh:  # the LLM was unusable before anything was written: leave no trace of the run but its log
            release_unused(run, made)
        raise


def check_output_dir(text: str) -> Path:
    """The run's folder, resolved; ConfigError (exit 2) naming output.dir when a run must not write there."""
    if not text or not str(text).strip():
        raise ConfigError("output.dir: empty (an unset shell variable?): refusing to write into the current directory")
    given = Path(text).expanduser()
    if given.is_symlink():  # a run deletes and rewrites inside its folder: never through a link to another
        raise ConfigError(f"output.dir: {text} is a symlink (to {os.path.realpath(given)}): give the folder itself")
    path = given.resolve()
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise ConfigError(f"output.dir: {text} is the current directory or a folder above it: give the run its own folder")
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                under = "" if existing == path else f" (output.dir {text} would lie under it)"
                raise ConfigError(f"output.dir: {existing} is a file, not a folder{under}")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise ConfigError(f"output.dir: {existing} is not writable by this user")
            break
    return path


def _run(plan: RunPlan, run: RunDir, sources: SourceStream, chunks: Iterable[SourceChunk], force: bool,
         retry_reasons: list[str] | tuple[str, ...], repair: bool = False) -> RunSummary:
    cfg = plan.cfg
    start = time.perf_counter()
    started = datetime.now(timezone.utc)
    if force:
        ledger.reset(run)
    run.make()
    generation = begin_generation(run)  # writers of any earlier attempt can no longer commit
    if plan.decode.log_dir:
        Path(plan.decode.log_dir).mkdir(parents=True, exist_ok=True)
    finish_journal(run)  # a dedup that was interrupted is completed before anything else
    state = resume_state(run, retry_reasons, repair)
    write_resolved_config(cfg, run.root)

    done = dispatch(plan, LocalTarget(run.root), generation, chunks, state, started.strftime("%Y%m%d%H%M%S"),
                    lambda: init_ray(cfg))
    log.info("%d sources (%s): %d dispatched, %d already done", sources.tasks_seen, plan.input_kind, done.dispatched,
             done.skipped)
    cluster: dict[str, float] = {}
    if done.waves:
        import ray

        if ray.is_initialized():  # what the run had: `prolongvid plan` scales from it
            resources = ray.cluster_resources()
            cluster = {"cpus": float(resources.get("CPU", 0)), "gpus": float(resources.get("GPU", 0))}
        # Every write of this attempt is done, but a writer on a lost node may outlive its node for a moment: closing
        # the generation turns any late commit of its into a refusal, and the sweep removes what it left half-written.
        begin_generation(run)
        with commit_lock(run):
            late = ledger.clean(run)
        if any(late.values()):
            log.info("left by writers of lost nodes, removed: %s", late)
    samples_total, rejects_total = ledger.write_tables(run)
    written = done.totals
    if cfg.filters.dedup.enabled and run.embeddings.exists():
        from shards.dedup_apply import dedup_run

        written.count_rejects(["near_duplicate"] * len(dedup_run(run.root, cfg.filters.dedup).removed))
        samples_total, rejects_total = len(ledger.index_rows(run)), len(ledger.reject_rows(run))

    summary = RunSummary(
        out_dir=str(run.root),
        sources=sources.tasks_seen + sources.rejects_seen,
        skipped=done.skipped,
        accepted=written.samples,
        rejected=dict(written.rejects),
        samples_total=samples_total,
        rejects_total=rejects_total,
        wall_s=time.perf_counter() - start,
        stages=written.stage_rates(),
        skipped_by_extension=sources.skipped_by_extension,
        input_rows=sources.input_rows,
        skipped_suffixes=dict(sources.skipped_suffixes),
        cluster=cluster,
    )
    summary.llm = written.llm_summary(summary.wall_s)
    _write_run_json(run, plan, summary, started, written, state.cleaned, state.dropped)
    return summary


def _write_run_json(
    run: RunDir,
    plan: RunPlan,
    summary: RunSummary,
    started: datetime,
    written: WriteTotals,
    cleaned: dict[str, int],
    dropped: int,
) -> None:
    previous: list[dict[str, Any]] = []
    if run.run_json.exists():
        try:
            old = json.loads(run.run_json.read_text())
            previous = old.get("previous_runs", []) + [old.get("this_run", {})]
        except (json.JSONDecodeError, OSError):
            previous = []
    shards = written.shards
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
            "shards_written": len(shards),
            "bytes_written": sum(s["bytes"] for s in shards),
            "frames_written": written.frames,
            "videos_per_hour": round(summary.videos_per_hour, 1),
            "stages": summary.stages,
            "window_s": round(written.window_s(), 3),  # first stage of the first video to the last write
            "resume": {"cleaned": cleaned, "retried_rejects": dropped},
            "llm": summary.llm,
            "cluster": summary.cluster,
        },
        # every input row is a sample's, a reject's or a skipped one: `stats --verify` checks the sum
        "totals": {"samples": summary.samples_total, "rejects": summary.rejects_total, "input_rows": summary.input_rows,
                   "skipped_rows": summary.skipped_by_extension, **row_totals(run)},
        "previous_runs": previous,
    }
    ledger.write_atomic(run.run_json, json.dumps(doc, indent=1).encode())
