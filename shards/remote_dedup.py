"""`dedup` (and `filters.dedup`) on a run folder in a bucket: the local dedup's decision and journal
(`shards/dedup_apply.py`), carried out with the object-store commit under the run's lease: the `near_duplicate`
rejects part first, then each shard holding a removed video rewritten under a new name whose record `replaces`
the old one (the settle's rewrite), then the tables; the journal goes last. A killed dedup leaves its journal,
which the next dedup or run finishes before anything else, so every crash ends as an uninterrupted dedup."""

from __future__ import annotations

import json

from filters.config import DedupConfig
from filters.dedup import Duplicate
from pipeline.core.errors import Reason
from pipeline.core.records import Rejection
from pipeline.core.storage import NotFound, Storage
from shards import remote_lease, remote_ledger
from shards.access import reading_run
from shards.dedup_apply import DedupReport, plan
from shards.layout import EMBEDDINGS_FILE, INDEX_FILE, LEDGER_DIR, RunDir
from shards.reader import NotARunDir, read_index

JOURNAL = f"{LEDGER_DIR}/dedup-journal.json"


def finish_journal(store: Storage, generation: int) -> int:
    """Carry out a pending dedup journal (idempotent); returns the shards rewritten."""
    try:
        journal = json.loads(store.get(JOURNAL))
    except NotFound:
        return 0
    removed: dict[str, dict] = journal["removed"]
    threshold = journal["threshold"]
    records = remote_ledger.shard_records(store)
    already = {r["key"] for r in remote_ledger.reject_rows(store) if r["reason"] == Reason.NEAR_DUPLICATE.value}
    rows = {row["key"]: row for record in records for row in record["rows"]}
    rejects = [Rejection(rows.get(k, {}).get("source", v.get("source", "")), "dedup", Reason.NEAR_DUPLICATE.value,
                         f"cosine {v['cosine']:.4f} >= threshold {threshold:g} with kept key {v['kept']}", k,
                         rows.get(k, {}).get("source_row", -1), rows.get(k, {}).get("source_rows", 1))
               for k, v in removed.items() if k not in already]  # fmt: skip
    if not remote_ledger.commit_rejects(store, generation, rejects):
        raise remote_lease.LeaseLost(f"{store.root}: another driver took the run over during dedup")
    rewritten = 0
    for record in records:
        drop = {row["key"] for row in record["rows"]} & set(removed)
        if drop:
            remote_ledger.rewrite_record(store, record, drop)
            rewritten += 1
    remote_ledger.write_tables(store)
    store.delete(JOURNAL)
    return rewritten


def _plan(run: RunDir, store: Storage, cfg: DedupConfig) -> tuple[int, list[Duplicate]]:
    if not run.embeddings.exists():
        raise FileNotFoundError(f"{store.url(EMBEDDINGS_FILE)} is missing: run the pipeline with "
                                "filters.clip.enabled=true first")
    return plan(run, cfg)


def dedup_in_lease(store: Storage, generation: int, cfg: DedupConfig, dry_run: bool = False) -> DedupReport:
    """Decide and carry out a dedup of a settled run folder whose lease the caller holds."""
    finish_journal(store, generation)
    with reading_run(store.root) as (run, _):
        videos, dups = _plan(run, store, cfg)
        sources = {row["key"]: row["source"] for row in read_index(run)} if dups else {}
    if dry_run or not dups:
        return DedupReport(videos, dups, 0)
    journal = {"threshold": cfg.threshold, "removed": {d.removed: {"kept": d.kept, "cosine": d.cosine,
                                                                   "source": sources.get(d.removed, "")} for d in dups}}
    store.put(JOURNAL, json.dumps(journal).encode())
    return DedupReport(videos, dups, finish_journal(store, generation))


def dedup_remote(url: str, cfg: DedupConfig, dry_run: bool = False) -> DedupReport:
    """`prolongvid dedup s3://bucket/run1`: the run's lease taken (refused while a run writes), settled, deduped."""
    store = Storage(url)
    if not store.exists(INDEX_FILE):  # not a run folder: refused before the lease is touched
        raise NotARunDir(f"{url} is not a pipeline output directory (no {INDEX_FILE})")
    if dry_run:
        with reading_run(url) as (run, _):
            return DedupReport(*_plan(run, store, cfg), 0)
    lease = remote_lease.take_lease(store)
    with lease.kept():
        remote_ledger.settle(store)
        return dedup_in_lease(store, lease.generation, cfg, dry_run)
