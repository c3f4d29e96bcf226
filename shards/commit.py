"""Exactly-once commits: a sample joins a run only through `commit_shard`, and each key only once.

Every run attempt takes a new generation under the run lock (`begin_generation`);
its write tasks carry it. `commit_shard` holds the ledger's commit lock and
1. refuses a writer of another generation (an orphan of a killed driver): it
   deletes its own tar and commits nothing;
2. drops the samples whose key a committed shard already holds (the second
   copy written by a retried task, or by a task whose node was lost while its
   process lived on), rewriting the tar without them or deleting it if nothing
   is left;
3. writes one marker per key (`.ledger/keys/<2 hex>/<key>`, naming the shard),
   then the shard record, whose rename is the commit point.
Markers are read only under the commit lock, when no other commit is half
done: a marker whose shard has no record was left by a commit that died
before its commit point, and counts for nothing. Ray's task retries stay on;
the commits are what make them safe.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.records import Rejection
from shards.layout import RunDir
from shards.ledger import fsync_dir, key_marker, write_atomic, write_rejects_part
from shards.reader import iter_tar_samples
from shards.tarwriter import ShardFile, ShardInfo

GENERATION_FILE = "generation"
COMMIT_LOCK = "commit.lock"


class StaleWriter(RuntimeError):
    """A write task of an older run attempt tried to commit after a newer attempt began."""


@contextmanager
def commit_lock(run: RunDir) -> Iterator[None]:
    """The ledger's commit lock (fcntl; released by the kernel if its holder dies)."""
    run.ledger.mkdir(parents=True, exist_ok=True)
    with open(run.ledger / COMMIT_LOCK, "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def current_generation(run: RunDir) -> int:
    try:
        return int((run.ledger / GENERATION_FILE).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def begin_generation(run: RunDir) -> int:
    """A new run attempt: from now on only writers carrying the returned generation can commit."""
    with commit_lock(run):
        generation = current_generation(run) + 1
        write_atomic(run.ledger / GENERATION_FILE, str(generation).encode())
        return generation


def committed_in(run: RunDir, key: str) -> str | None:
    """The shard that holds `key` if a finished commit put it there (exact under the commit lock)."""
    try:
        shard = key_marker(run, key).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return shard if (run.ledger_shards / (shard + ".json")).exists() else None


def rewrite_without(path: Path, drop: set[str], fsync: bool) -> ShardInfo | None:
    """The shard at `path` rewritten without the samples in `drop` (None, and no file, if nothing is left)."""
    out = ShardFile(path.parent, path.stem + ".rewrite.tar", fsync=fsync)  # a crash leaves an unrecorded tar: cleaned
    kept = 0
    try:
        for key, members in iter_tar_samples(path):
            if key in drop:
                continue
            out.write({"__key__": key, **members})
            kept += 1
    except BaseException:
        out.abort()
        raise
    if kept == 0:
        out.abort()
        path.unlink(missing_ok=True)
        return None
    info = out.close()
    os.replace(out.final, path)
    return ShardInfo(name=path.name, sha256=info.sha256, bytes=info.bytes, samples=info.samples)


def commit_shard(run: RunDir, generation: int, info: ShardInfo, rows: list[dict[str, Any]], fsync: bool = True
                 ) -> tuple[ShardInfo | None, list[dict[str, Any]]]:
    """Commit a finished, renamed shard and its index rows; returns what was committed (None: nothing).

    Raises StaleWriter (after deleting the tar) when the writer's generation is not the run's.
    """
    tar = run.shards / info.name
    with commit_lock(run):
        if current_generation(run) != generation:
            tar.unlink(missing_ok=True)
            raise StaleWriter(f"{tar.name}: written by run attempt {generation}, the run is at {current_generation(run)}")
        dupes = {r["key"] for r in rows if committed_in(run, r["key"])}
        if dupes:
            info = rewrite_without(tar, dupes, fsync)
            rows = [r for r in rows if r["key"] not in dupes]
            if info is None:
                return None, []
        for row in rows:
            marker = key_marker(run, row["key"])
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(info.name)
        record = {**info.__dict__, "rows": rows, "generation": generation}
        write_atomic(run.ledger_shards / (info.name + ".json"), json.dumps(record).encode())
        if fsync:
            fsync_dir(tar.parent)
        return info, rows


def commit_rejects(run: RunDir, generation: int, rejects: list[Rejection]) -> bool:
    """Record a writer's rejects unless it belongs to an older run attempt (then nothing is written)."""
    if not rejects:
        return True
    with commit_lock(run):
        if current_generation(run) != generation:
            return False
        write_rejects_part(run, [r.to_dict() for r in rejects])
        return True
