"""What a rerun into a run directory may skip: the ledger's finished keys and rejected sources.

`resume_state` does the start-of-run bookkeeping (sweep what a killed run left, redo damaged shards, forget
rejects the user retries) and returns the done set; `ResumeState.todo` filters a chunk of tasks against it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pipeline.video.keyset import KeySet
from pipeline.core.records import Rejection
from pipeline.core.task import VideoTask
from shards import ledger
from shards.layout import RunDir
from shards.rows import ledger_keys, row_identity

log = logging.getLogger(__name__)


@dataclass
class ResumeState:
    done: KeySet  # keys in a finished shard or rejected by a stage
    rejected_rows: KeySet  # input rows with a reject (`row_identity`)
    rejected_sources: KeySet  # sources of rejects an older ledger wrote without a row number
    cleaned: dict[str, int] = field(default_factory=dict)
    dropped: int = 0

    def todo(self, tasks: list[VideoTask]) -> list[VideoTask]:
        left = ~(self.done.contains([t.key for t in tasks])
                 | self.rejected_rows.contains([row_identity(t.source_row, t.source) for t in tasks])
                 | self.rejected_sources.contains([t.source for t in tasks]))
        return [t for t, keep in zip(tasks, left) if keep]

    def fresh(self, rejects: list[Rejection]) -> list[Rejection]:
        """A source reject is new unless its input row (number and source) has one: never by its key, which a
        duplicate_key row shares with the video it repeats."""
        left = ~(self.rejected_rows.contains([row_identity(r.source_row, r.source) for r in rejects])
                 | self.rejected_sources.contains([r.source for r in rejects]))
        return [r for r, keep in zip(rejects, left) if keep]


def resume_state(run: RunDir, retry_reasons: list[str] | tuple[str, ...], repair: bool) -> ResumeState:
    """Sweep, repair and read the ledger in one pass over its shard records (a million rows are never all held)."""
    committed: list[str] | None = []
    owner: dict[str, str] = {}
    damaged: dict[str, str] = {}

    def each_record(record: dict[str, Any]) -> None:
        committed.extend(row["key"] for row in record["rows"])
        why = ledger.record_damage(run, record, owner, checksums=repair)
        if why:
            damaged[record["name"]] = why

    cleaned: dict[str, Any] = ledger.clean(run, each_record)
    del owner
    if damaged:
        for name, why in sorted(damaged.items()):
            log.warning("shard %s is damaged (%s): its samples are redone", name, why)
        redo = ledger.drop_shards(run, sorted(damaged))
        cleaned["damaged_shards"] = len(damaged)
        cleaned["samples_redone"] = len(redo)
        committed = None  # some were dropped: read again
    dropped = ledger.drop_rejects(run, list(retry_reasons)) if retry_reasons else 0
    keys, rows, legacy = ledger_keys(run, committed)
    return ResumeState(KeySet.build(keys), KeySet.build(rows), KeySet.build(legacy), cleaned, dropped)
