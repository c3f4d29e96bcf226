"""The ledger of a run folder on an object store (`s3://bucket/run1`): exactly once without rename and without a
lock file, built on the two conditional writes S3, GCS, MinIO and R2 honour: create-only (`If-None-Match: *`) and
compare-and-swap (`If-Match: <etag>`).

- The run lease (`shards/remote_lease.py`): one driver at a time, a new generation per taking.
- A commit: the writer uploads its tar under the attempt's own name (`shards/<writer name>.tar`; a killed upload
  leaves no object, or an unrecorded one), then writes the shard's record create-only
  (`.ledger/shards/<name>.json`): that write is the commit point. A writer whose generation is not the lease's
  commits nothing (the check is repeated just before the commit point).
- Settling (the lease holder, at the start and the end of a run): a rewrite whose record says `replaces` finishes
  (the replaced record and tar go); a record whose tar is gone is dropped (its videos are redone); a key that two
  committed records hold stays in the first by (generation, name) and the later tar is rewritten without it (new
  name, new record with `replaces`, then the old record and tar go: a crash in between is finished by the next
  settle); a writer's tar that no record names is removed. Only then are `shards.json` and the tables written:
  readers read `shards.json`, so they never see an unsettled or uncommitted shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.records import Rejection
from pipeline.core.storage import AlreadyExists, NotFound, Storage
from shards.commit import StaleWriter, rewrite_without
from shards.remote_lease import lease_generation
from shards.layout import EMBEDDINGS_FILE, INDEX_FILE, LEDGER_DIR, REJECTS_FILE, SHARDS_DIR, SHARDS_FILE
from shards.ledger import REJECTS_SCHEMA, RunTables, build_tables, reject_identity, reject_row
from shards.rows import reject_keys
from shards.runfolder import MARKER_FILE, MARKER_FORMAT, ROOT_FILES, WRITER_NAME, RefusedFolder
from shards.tarwriter import ShardInfo

MARKER = f"{LEDGER_DIR}/{MARKER_FILE}"
RECORDS = f"{LEDGER_DIR}/shards/"
REJECT_PARTS = f"{LEDGER_DIR}/rejects/"
_SETTLED = re.compile(r"\.s[0-9a-f]{8}$")  # a settle's rewrite: `<writer name>.s<8 hex>.tar`


def claim_folder(store: Storage) -> None:
    """A prefix with objects but no run marker is someone else's: refuse it; an empty one becomes a run folder."""
    if store.exists(MARKER):
        return
    first = next((info.path for page in store.list_pages() for info in page[:1]), None)
    if first is not None:
        raise RefusedFolder(f"output.dir {store.root} holds objects ({first}) but is not a run folder (no {MARKER})")
    try:
        store.put(MARKER, json.dumps({"format": MARKER_FORMAT, "created": time.time()}).encode(), create_only=True)
    except AlreadyExists:
        pass  # another driver made it a run folder a moment ago: the lease decides who runs


def commit_shard(store: Storage, generation: int, tar: Path, info: ShardInfo, rows: list[dict[str, Any]]) -> None:
    """Upload a finished local tar and commit it with its index rows (raises StaleWriter, leaving nothing)."""
    name = f"{SHARDS_DIR}/{info.name}"
    if lease_generation(store) != generation:
        raise StaleWriter(f"{info.name}: written by run attempt {generation}, the run is at {lease_generation(store)}")
    _put_own(store, name, tar, tar.stat().st_size)
    if lease_generation(store) != generation:
        store.delete(name)
        raise StaleWriter(f"{info.name}: written by run attempt {generation}, the run is at {lease_generation(store)}")
    record = json.dumps({**info.__dict__, "rows": rows, "generation": generation}).encode()
    _put_own(store, f"{RECORDS}{info.name}.json", record, len(record))  # the commit point


def _put_own(store: Storage, path: str, data: bytes | Path, size: int) -> None:
    """A create-only write under a name only this attempt uses: if the store says it exists, a retry after a lost
    reply found our own first write (checked by its size), which counts as done."""
    try:
        store.put(path, data, create_only=True)
    except AlreadyExists:
        if store.head(path).size != size:
            raise


def commit_rejects(store: Storage, generation: int, rejects: list[Rejection]) -> bool:
    if not rejects:
        return True
    if lease_generation(store) != generation:
        return False
    table = pa.Table.from_pylist([reject_row(r.to_dict()) for r in rejects], schema=REJECTS_SCHEMA)
    _put_parquet(store, f"{REJECT_PARTS}{uuid.uuid4().hex}.parquet", table)
    return True


def shard_records(store: Storage) -> list[dict[str, Any]]:
    """Every committed record (unsettled: a key may still be in two), in name order."""
    found = []
    for page in store.list_pages(RECORDS):
        for info in page:
            if info.path.endswith(".json"):
                try:
                    record = json.loads(store.get(info.path))
                except (NotFound, ValueError):
                    continue  # removed by a settle meanwhile
                if isinstance(record, dict) and "name" in record and "rows" in record:
                    found.append(record)
    return sorted(found, key=lambda r: r["name"])


def reject_rows(store: Storage) -> list[dict[str, Any]]:
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for page in store.list_pages(REJECT_PARTS):
        for info in page:
            for row in pq.read_table(io.BytesIO(store.get(info.path))).to_pylist():
                row = reject_row(row)
                seen[reject_identity(row)] = row  # a retried writer's second copy of the same reject
    return list(seen.values())


def _drop(store: Storage, name: str) -> None:
    store.delete(f"{RECORDS}{name}.json")  # the record first: a tar without a record is an orphan, cleaned later
    store.delete(f"{SHARDS_DIR}/{name}")


@dataclass(frozen=True)
class Damaged:
    name: str
    why: str
    samples: int


def repair(store: Storage) -> list[Damaged]:
    """Re-read every committed shard's bytes against its record's sha256 (`--repair`: a changed or rotted object
    of the recorded size, which settle's size check cannot see); a damaged one is dropped, so its videos are
    redone by this run."""
    damaged = []
    for record in shard_records(store):
        name, digest = record["name"], hashlib.sha256()
        try:
            for chunk in store.stream(f"{SHARDS_DIR}/{name}"):
                digest.update(chunk)
        except NotFound:
            why = "missing"
        else:
            found = digest.hexdigest()
            why = "" if found == record.get("sha256") else f"sha256 {found[:12]}..., {str(record.get('sha256'))[:12]}... recorded"
        if why:
            _drop(store, name)
            damaged.append(Damaged(name, why, len(record["rows"])))
    return damaged


def settle(store: Storage) -> dict[str, int]:
    """Finish rewrites, drop records whose tar is gone, take duplicate keys out of later shards, remove orphans
    and abort a killed writer's unfinished multipart upload."""
    done = {"replaced": 0, "lost": 0, "deduplicated": 0, "orphans": 0}
    records = {r["name"]: r for r in shard_records(store)}
    for record in list(records.values()):
        old = record.get("replaces")
        if old in records:
            _drop(store, old)
            records.pop(old)
            done["replaced"] += 1
    tars = _tars(store)
    for name in [n for n in records if tars.get(n) != records[n].get("bytes")]:
        _drop(store, name)  # its tar is gone or not the size committed: its videos are redone
        records.pop(name)
        done["lost"] += 1
    holder: dict[str, str] = {}
    for record in sorted(records.values(), key=lambda r: (int(r.get("generation", 0)), r["name"])):
        dupes = {row["key"] for row in record["rows"] if holder.setdefault(row["key"], record["name"]) != record["name"]}
        if dupes:
            rewrite_record(store, record, dupes)
            done["deduplicated"] += len(dupes)
    named = {r["name"] for r in shard_records(store)}
    for name in set(_tars(store)) - named:
        if WRITER_NAME.fullmatch(_SETTLED.sub("", name[:-4]) + ".tar"):  # only what a writer or a settle names
            store.delete(f"{SHARDS_DIR}/{name}")
            done["orphans"] += 1
    aborted = store.abort_uploads(f"{SHARDS_DIR}/", lambda name: bool(WRITER_NAME.fullmatch(name)))
    if aborted:  # a killed writer's unfinished upload (no run of this folder is writing now)
        done["uploads_aborted"] = aborted
    return done


def _tars(store: Storage) -> dict[str, int]:
    """Every object directly under shards/ and its size."""
    return {info.path[len(SHARDS_DIR) + 1:]: info.size for page in store.list_pages(f"{SHARDS_DIR}/") for info in page}


def rewrite_record(store: Storage, record: dict[str, Any], drop: set[str]) -> None:
    """The record's tar without `drop`, committed under a new name that replaces it; then the old one goes."""
    old = record["name"]
    with tempfile.TemporaryDirectory(prefix="prolongvid-settle-") as tmp:
        path = Path(tmp) / old
        with open(path, "wb") as f:
            for chunk in store.stream(f"{SHARDS_DIR}/{old}"):
                f.write(chunk)
        info = rewrite_without(path, drop, fsync=False)
        if info is not None:
            name = f"{_SETTLED.sub('', old[:-4])}.s{uuid.uuid4().hex[:8]}.tar"
            _put_own(store, f"{SHARDS_DIR}/{name}", path, path.stat().st_size)
            rows = [{**row, "shard": name} for row in record["rows"] if row["key"] not in drop]
            new = {**record, **ShardInfo(name, info.sha256, info.bytes, info.samples, record.get("format_version",
                   info.format_version)).__dict__, "rows": rows, "replaces": old}  # fmt: skip
            data = json.dumps(new).encode()
            _put_own(store, f"{RECORDS}{name}.json", data, len(data))
    _drop(store, old)


def done_keys(store: Storage) -> tuple[list[str], list[str], list[str]]:
    """What a rerun skips, as `shards.rows.ledger_keys` gives it for a folder: committed keys, rejected input rows,
    and sources of rejects without a row number."""
    keys = [row["key"] for record in shard_records(store) for row in record["rows"]]
    rows, legacy = reject_keys(reject_rows(store), keys)
    return keys, rows, legacy


def drop_rejects(store: Storage, reasons: list[str]) -> int:
    """Forget rejects with these reasons (shell patterns) so the run retries them; returns how many."""
    import fnmatch

    rows = reject_rows(store)
    keep = [r for r in rows if not any(fnmatch.fnmatchcase(r["reason"], p) for p in reasons)]
    if len(keep) == len(rows):
        return 0
    old = [info.path for page in store.list_pages(REJECT_PARTS) for info in page]
    kept = pa.Table.from_pylist(keep, schema=REJECTS_SCHEMA)
    _put_parquet(store, f"{REJECT_PARTS}{uuid.uuid4().hex}.parquet", kept)  # lands before the old parts go
    for path in old:
        store.delete(path)
    return len(rows) - len(keep)


def reset(store: Storage) -> None:
    """--force: forget every result of earlier runs (the lease and its generation, and the marker, stay). Only
    what the ledger names, the writer's tars and the run's own files go; anything else under the prefix stays."""
    for record in shard_records(store):
        _drop(store, record["name"])
    settle(store)  # the writer's unrecorded tars
    for page in store.list_pages(REJECT_PARTS):
        for info in page:
            store.delete(info.path)
    for name in ROOT_FILES:
        store.delete(name)


def _put_parquet(store: Storage, path: str, table: pa.Table) -> None:
    out = io.BytesIO()
    pq.write_table(table, out)
    store.put(path, out.getvalue())  # a new name (a ledger part) or a table the lease holder replaces


def write_tables(store: Storage) -> RunTables:
    """shards.json, index.parquet, embeddings.parquet and rejects.parquet from the settled ledger; returns them."""
    tables = build_tables(shard_records(store), reject_rows(store))
    for name, table in ((INDEX_FILE, tables.index), (REJECTS_FILE, tables.rejects), (EMBEDDINGS_FILE, tables.embeddings)):
        if table is None:
            store.delete(name)
        else:
            _put_parquet(store, name, table)
    store.put(SHARDS_FILE, json.dumps(tables.shards, indent=1).encode())  # last: what readers go by
    return tables
