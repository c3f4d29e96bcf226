"""One pipeline run into a run folder on an object store (`output.dir: s3://bucket/run1`), for a cluster whose nodes
share no filesystem: the run's lease instead of a lock file, the ledger's settle instead of its sweep, and every
file the run writes (shards, ledger, tables, run.json, config.resolved.yaml) uploaded; the protocol is
`shards/remote_ledger.py`'s. Logs stay on the driver's node (`logs_dir`)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.config_load import dump_config
from pipeline.core.storage import NotFound, Storage
from pipeline.resume import ResumeState
from pipeline.run_base import RunLocked, RunSummary, cluster_resources, init_ray, reconcile, run_document, summarize
from pipeline.run_config import RunConfig
from pipeline.video.keyset import KeySet
from pipeline.video.sources import open_sources
from pipeline.resource_watch import resource_watch
from pipeline.waves import dispatch
from shards import remote_dedup, remote_lease, remote_ledger
from shards.layout import CONFIG_FILE, RUN_FILE
from shards.rows import committed_by_run, table_row_totals
from shards.target import RemoteTarget

if TYPE_CHECKING:
    from pipeline.run_plan import RunPlan

log = logging.getLogger(__name__)
LEASE_TTL_S = 600.0  # a driver that stops renewing for this long is taken to be dead: the next run takes over


def logs_dir(url: str) -> Path:
    """Where a remote run keeps its logs on the driver's node (`<this>/logs`): the temp folder, named after the
    bucket prefix."""
    import re

    return Path(tempfile.gettempdir()) / "prolongvid-logs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", url)


def run_remote_pipeline(cfg: RunConfig, force: bool = False, retry_reasons: list[str] | tuple[str, ...] = (),
                        repair: bool = False, llm_python: str | None = None) -> RunSummary:
    """`run_pipeline` for an object-store output folder (the same graph, resume and tables)."""
    from dense_caption.service import llm_service
    from pipeline.run_plan import resolve_plan

    url = cfg.output.dir.rstrip("/")
    plan = resolve_plan(cfg, logs_dir(url), llm_python)
    sources = open_sources(cfg.input, kind=plan.input_kind)
    chunks = sources.chunks()
    head = list(islice(chunks, 1))  # a bad input fails before anything in the bucket changes
    store = Storage(url)
    remote_ledger.claim_folder(store)  # someone else's prefix is refused before anything in it changes
    try:
        lease = remote_lease.take_lease(store, LEASE_TTL_S)
    except remote_lease.RunInProgress as e:
        raise RunLocked(str(e)) from None
    try:
        with lease.kept():
            if not plan.llm_stages:
                return _run(plan, store, lease, sources, chain(head, chunks), force, retry_reasons, repair)
            with llm_service(plan.llm, logs_dir(url) / "logs", lambda: init_ray(cfg)) as endpoints:
                return _run(plan.served(endpoints), store, lease, sources, chain(head, chunks), force, retry_reasons,
                            repair)
    except remote_lease.LeaseLost as e:
        raise RunLocked(f"{e}: this run stalled past the lease's {LEASE_TTL_S:.0f} s and stopped") from None


def _run(plan: RunPlan, store: Storage, lease: remote_lease.Lease, sources: Any, chunks: Any, force: bool,
         retry_reasons: list[str] | tuple[str, ...], repair: bool) -> RunSummary:
    cfg = plan.cfg
    start = time.perf_counter()
    started = datetime.now(timezone.utc)
    if force:
        remote_ledger.reset(store)
    cleaned = remote_ledger.settle(store)  # what a killed run left: finished, dropped or removed
    remote_dedup.finish_journal(store, lease.generation)  # a dedup that was interrupted is completed first
    if repair:  # every committed shard re-read: one whose bytes changed is dropped and its videos redone
        damaged = remote_ledger.repair(store)
        for shard in damaged:
            log.warning("shard %s is damaged (%s): its %d samples are redone", shard.name, shard.why, shard.samples)
        cleaned.update(damaged_shards=len(damaged), samples_redone=sum(shard.samples for shard in damaged))
    dropped = remote_ledger.drop_rejects(store, list(retry_reasons)) if retry_reasons else 0
    keys, rows, legacy = remote_ledger.done_keys(store)
    state = ResumeState(KeySet.build(keys), KeySet.build(rows), KeySet.build(legacy), cleaned, dropped)
    store.put(CONFIG_FILE, dump_config(cfg).encode())
    if plan.decode.log_dir:
        Path(plan.decode.log_dir).mkdir(parents=True, exist_ok=True)

    stamp = started.strftime("%Y%m%d%H%M%S")  # in every shard name this run's writers give
    with resource_watch(cfg):  # a pool that finds no node for ray.resource_wait_s ends the run
        done = dispatch(plan, RemoteTarget(store.root), lease.generation, chunks, state, stamp, lambda: init_ray(cfg))
    log.info("%d sources (%s): %d dispatched, %d already done", sources.tasks_seen, plan.input_kind, done.dispatched,
             done.skipped)
    cluster = cluster_resources() if done.waves else {}
    if done.waves:
        lease.advance()  # a writer of a lost node that outlives it can no longer commit
        late = remote_ledger.settle(store)
        if any(late.values()):
            log.info("settled after the writers: %s", late)
    tables = remote_ledger.write_tables(store)
    committed = committed_by_run(remote_ledger.shard_records(store), stamp)  # before a dedup takes samples out
    if cfg.filters.dedup.enabled and tables.embeddings is not None:
        removed = remote_dedup.dedup_in_lease(store, lease.generation, cfg.filters.dedup).removed
        done.totals.count_rejects(["near_duplicate"] * len(removed))
        if removed:
            tables = remote_ledger.write_tables(store)
    summary = summarize(store.root, sources, done, tables.index.num_rows, tables.rejects.num_rows,
                        time.perf_counter() - start, cluster)
    tally = reconcile(summary, done.totals, committed)
    try:
        previous = json.loads(store.get(RUN_FILE))
    except (NotFound, ValueError):
        previous = {}
    doc = run_document(plan, summary, started, done.totals, cleaned, dropped, previous,
                       table_row_totals({"sample_rows": tables.index, "reject_rows": tables.rejects}), committed, tally)
    store.put(RUN_FILE, json.dumps(doc, indent=1).encode())
    return summary
