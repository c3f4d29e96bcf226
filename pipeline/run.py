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
from datetime import datetime, timezone
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from pipeline.core.config_load import ConfigError, write_resolved_config
from pipeline.core.storage import is_remote

from pipeline.run_base import (RunLocked, RunSummary, cluster_resources, init_ray, reconcile, run_document,
                               summarize)
from pipeline.run_config import RunConfig
from pipeline.core.records import WriteTotals
from pipeline.resume import resume_state
from pipeline.video.sources import SourceChunk, SourceStream, open_sources
from pipeline.resource_watch import resource_watch
from pipeline.waves import dispatch
from shards.commit import begin_generation, commit_lock
from shards import ledger
from shards.dedup_apply import finish_journal
from shards.layout import RunDir
from shards.target import LocalTarget
from shards.rows import committed_by_run, row_totals
from shards.runfolder import claim, release_unused

if TYPE_CHECKING:
    from pipeline.run_plan import RunPlan

log = logging.getLogger(__name__)

@contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """The folder's run lock: an fcntl lock on `.lock`, which holds the holder's pid. The file is removed while
    still locked when the holder ends, so a finished run leaves none; a run that locked a file someone removed
    meanwhile (it opened it before the removal) sees that the path is no longer its file and tries again."""
    run.root.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(run.lock, "a+")  # not "w": a run that loses the race must not wipe the holder's pid
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunLocked(f"another run (pid {holder}) is writing to {run.root} (lock {run.lock})") from None
        if _still_the_path(f, run.lock):
            break
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        run.lock.unlink(missing_ok=True)  # still locked: a later run makes its own file
        f.close()


def _still_the_path(f: Any, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def run_pipeline(cfg: RunConfig, force: bool = False, retry_reasons: list[str] | tuple[str, ...] = (),
                 repair: bool = False, llm_python: str | None = None) -> RunSummary:
    """Run the graph over every source not done yet. Raises ServerUnavailable before any change when the LLM is unusable.

    Every run redoes the samples of shards whose size no longer matches their record (or that repeat a key);
    `repair` also checks every shard's sha256 first. `llm_python`: the interpreter of a managed LLM server.
    """
    from dense_caption.http_backend import ServerUnavailable
    from dense_caption.service import llm_service
    from pipeline.run_plan import resolve_plan

    if is_remote(cfg.output.dir):
        from pipeline.run_remote import run_remote_pipeline

        return run_remote_pipeline(cfg, force, retry_reasons, repair, llm_python)
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

    stamp = started.strftime("%Y%m%d%H%M%S")  # in every shard name this run's writers give
    with resource_watch(cfg):  # a pool that finds no node for ray.resource_wait_s ends the run
        done = dispatch(plan, LocalTarget(run.root), generation, chunks, state, stamp, lambda: init_ray(cfg))
    log.info("%d sources (%s): %d dispatched, %d already done", sources.tasks_seen, plan.input_kind, done.dispatched,
             done.skipped)
    cluster = cluster_resources() if done.waves else {}
    if done.waves:
        # Every write of this attempt is done, but a writer on a lost node may outlive its node for a moment: closing
        # the generation turns any late commit of its into a refusal, and the sweep removes what it left half-written.
        begin_generation(run)
        with commit_lock(run):
            late = ledger.clean(run)
        if any(late.values()):
            log.info("left by writers of lost nodes, removed: %s", late)
    samples_total, rejects_total = ledger.write_tables(run)
    committed = committed_by_run(ledger.iter_shard_records(run), stamp)  # before a dedup takes samples out
    written = done.totals
    if cfg.filters.dedup.enabled and run.embeddings.exists():
        from shards.dedup_apply import dedup_run

        written.count_rejects(["near_duplicate"] * len(dedup_run(run.root, cfg.filters.dedup).removed))
        samples_total, rejects_total = len(ledger.index_rows(run)), len(ledger.reject_rows(run))

    summary = summarize(str(run.root), sources, done, samples_total, rejects_total, time.perf_counter() - start, cluster)
    tally = reconcile(summary, written, committed)
    _write_run_json(run, plan, summary, started, written, state.cleaned, state.dropped, committed, tally)
    return summary


def _write_run_json(run: RunDir, plan: RunPlan, summary: RunSummary, started: datetime, written: WriteTotals,
                    cleaned: dict[str, int], dropped: int, committed: dict[str, int],
                    tally: dict[str, int] | None) -> None:
    previous: dict[str, Any] = {}
    if run.run_json.exists():
        try:
            previous = json.loads(run.run_json.read_text())
        except (json.JSONDecodeError, OSError):
            previous = {}
    doc = run_document(plan, summary, started, written, cleaned, dropped, previous, row_totals(run), committed, tally)
    ledger.write_atomic(run.run_json, json.dumps(doc, indent=1).encode())
