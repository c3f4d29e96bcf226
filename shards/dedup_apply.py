"""`prolongvid dedup RUN_DIR`: remove near-duplicate videos from a finished run, crash-safely.

The decision (`filters.dedup.find_duplicates` over `embeddings.parquet`) is
first written as a journal (`.ledger/dedup-journal.json`). Carrying it out is
idempotent: each removed video gets a `near_duplicate` reject row naming the
kept key, every shard holding a removed video is rewritten without it (a new
tar under `.partial`, renamed over the old one, then its ledger record), and
the tables are rebuilt. A run or a dedup that finds a journal finishes it
first, so a crash at any point ends in the same state as an uninterrupted
dedup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from filters.dedup import Duplicate, find_duplicates
from filters.config import DedupConfig
from pipeline.core.errors import Reason
from shards import ledger
from shards.layout import RunDir
from shards.reader import iter_tar_samples, open_run, read_index
from shards.runfolder import remove_own
from shards.tarwriter import ShardFile


@dataclass
class DedupReport:
    videos: int
    removed: list[Duplicate]
    shards_rewritten: int


def _journal(run: RunDir) -> Path:
    return run.ledger / "dedup-journal.json"


def plan(run: RunDir, cfg: DedupConfig) -> tuple[int, list[Duplicate]]:
    if not run.embeddings.exists():
        raise FileNotFoundError(f"{run.embeddings} is missing: run the pipeline with filters.clip.enabled=true first")
    table = pq.read_table(run.embeddings)
    keys = table.column("key").to_pylist()
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    rows = {r["key"]: r for r in read_index(run)}
    # Preferred copy: largest picture, then longest, then the smallest key.
    priority = [(-(rows.get(k, {}).get("width") or 0) * (rows.get(k, {}).get("height") or 0),
                 -(rows.get(k, {}).get("duration_s") or 0.0)) for k in keys]
    return len(keys), find_duplicates(keys, emb, cfg, priority)


def finish_journal(run: RunDir) -> int:
    """Carry out a pending dedup journal (idempotent); returns the shards rewritten."""
    path = _journal(run)
    if not path.exists():
        return 0
    journal = json.loads(path.read_text())
    removed: dict[str, dict] = journal["removed"]
    threshold = journal["threshold"]
    # what an interrupted pass already recorded: read from the ledger's parts, not from a table written before them
    already = {r["key"] for r in ledger.reject_rows(run) if r["reason"] == Reason.NEAR_DUPLICATE.value}
    index_rows = {r["key"]: r for rec in ledger.shard_records(run) for r in rec["rows"]}
    rows = [{"key": k, "source": index_rows.get(k, {}).get("source", v.get("source", "")), "stage": "dedup",
             "reason": Reason.NEAR_DUPLICATE.value,
             "detail": f"cosine {v['cosine']:.4f} >= threshold {threshold:g} with kept key {v['kept']}",
             "source_row": index_rows.get(k, {}).get("source_row", -1),
             "source_rows": index_rows.get(k, {}).get("source_rows", 1)}
            for k, v in removed.items() if k not in already]
    ledger.write_rejects_part(run, rows)
    rewritten = 0
    for rec in ledger.shard_records(run):
        drop = {r["key"] for r in rec["rows"]} & set(removed)
        tar = run.shards / rec["name"]
        if not drop:
            continue
        keep_rows = [r for r in rec["rows"] if r["key"] not in removed]
        if not keep_rows:
            remove_own(run, [run.ledger_shards / (rec["name"] + ".json")])  # the record first: the commit is undone
            remove_own(run, [tar])
            rewritten += 1
            continue
        shard = ShardFile(run.shards, rec["name"])
        try:
            for key, members in iter_tar_samples(tar):
                if key not in removed:
                    shard.write({"__key__": key, **members})
        except BaseException:
            shard.abort()
            raise
        info = shard.close()
        ledger.write_shard_record(run, info.__dict__, keep_rows)
        rewritten += 1
    ledger.write_tables(run)
    remove_own(run, [path])
    return rewritten


def dedup_run(run_dir: str | Path, cfg: DedupConfig, dry_run: bool = False) -> DedupReport:
    run = open_run(run_dir)
    finish_journal(run)
    videos, dups = plan(run, cfg)
    if dry_run or not dups:
        return DedupReport(videos, dups, 0)
    sources = {r["key"]: r["source"] for r in read_index(run)}
    journal = {"threshold": cfg.threshold,
               "removed": {d.removed: {"kept": d.kept, "cosine": d.cosine, "source": sources.get(d.removed, "")} for d in dups}}
    ledger.write_atomic(_journal(run), json.dumps(journal).encode())
    return DedupReport(videos, dups, finish_journal(run))
