"""The resume ledger: what is finished, what was rejected, and the tables rebuilt from it.

Each finished shard gets `.ledger/shards/<shard>.json` (its sha256, size and
index rows), written after the tar is renamed into place; each writer task
appends rejects as `.ledger/rejects/<id>.parquet`. Every file is written under
a temporary name and renamed, so a killed run leaves either a complete record
or none. At the start of a run, the run's own partial files and tars of the
writer's pattern without a record are removed (their videos are simply
redone), each path checked by `shards/runfolder.py` first; `index.parquet` and
`rejects.parquet` are rebuilt from the ledger at the start and end of a run.
"""

from __future__ import annotations

import fnmatch
import hashlib

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.sample import LAYOUT1_VERSION
from shards.layout import TMP_SUFFIX, RunDir
from shards.runfolder import (MARKER_FILE, ROOT_FILES, WRITER_NAME, RefusedFolder, check_layout, check_own, check_record,
                              is_run_temp, remove_own)

REJECT_COLUMNS = ["key", "source", "stage", "reason", "detail"]
ROW_COLUMNS = ["source_row", "source_rows"]  # the input row a reject stands for, and how many rows (LLaVA records)
REJECTS_SCHEMA = pa.schema([*((c, pa.string()) for c in REJECT_COLUMNS), *((c, pa.int64()) for c in ROW_COLUMNS)])
KEYS_DIR = "keys"


def key_marker(run: RunDir, key: str) -> Path:
    """Where the commit of `key` records its shard (one small file per key, fanned out over 256 folders)."""
    return run.ledger / KEYS_DIR / hashlib.sha1(key.encode()).hexdigest()[:2] / key


def forget_keys(run: RunDir, keys: list[str]) -> None:
    """Drop the markers of keys whose shard is being removed (repair, dedup): they will be committed anew."""
    for key in keys:
        key_marker(run, key).unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (its directory entry)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name, fsync, rename, fsync the folder: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_shard_record(run: RunDir, shard: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    record = {**shard, "rows": rows}
    write_atomic(run.ledger_shards / (shard["name"] + ".json"), json.dumps(record).encode())


def reject_row(r: dict[str, Any]) -> dict[str, Any]:
    row, rows = r.get("source_row"), r.get("source_rows")  # absent in an older ledger's parts
    return {**{c: str(r.get(c) or "") for c in REJECT_COLUMNS},
            "source_row": -1 if row is None else int(row), "source_rows": 1 if rows is None else int(rows)}


def write_rejects_part(run: RunDir, rows: list[dict[str, Any]]) -> None:
    if rows:
        table = pa.Table.from_pylist([reject_row(r) for r in rows], schema=REJECTS_SCHEMA)
        write_parquet_atomic(run.ledger_rejects / f"{uuid.uuid4().hex}.parquet", table)


def _read_record(path: Path) -> dict[str, Any] | None:
    """A shard record, or None for one a power loss left empty or cut (its shard then counts as unrecorded)."""
    try:
        record = json.loads(path.read_bytes() or b"null")
    except (ValueError, OSError):
        return None
    return record if isinstance(record, dict) and "name" in record and "rows" in record else None


def shard_records(run: RunDir) -> list[dict[str, Any]]:
    if not run.ledger_shards.is_dir():
        return []
    records = []
    for p in sorted(run.ledger_shards.glob("*.json")):
        record = _read_record(p)
        if record is not None:
            check_record(run, record, p.name)
            records.append(record)
    return sorted(records, key=lambda r: r["name"])


def iter_shard_records(run: RunDir) -> Iterator[dict[str, Any]]:
    """The shard records in name order, one parsed at a time (a million index rows are never all held)."""
    if run.ledger_shards.is_dir():
        for p in sorted(run.ledger_shards.glob("*.json"), key=lambda p: p.name[: -len(".json")]):
            record = _read_record(p)
            if record is not None:
                check_record(run, record, p.name)
                yield record


def reject_rows(run: RunDir) -> list[dict[str, Any]]:
    if not run.ledger_rejects.is_dir():
        return []
    rows: list[dict[str, Any]] = []
    for part in sorted(run.ledger_rejects.glob("*.parquet")):
        try:
            rows.extend(pq.read_table(part).to_pylist())
        except (OSError, ValueError, pa.ArrowException):
            continue  # a part a power loss left empty or cut: its videos are simply redone (clean removes it)
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in map(reject_row, rows):  # a crash may leave an old part beside its rewrite: the same row twice
        seen[reject_identity(row)] = row
    return list(seen.values())


def reject_identity(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a reject one input row's: its row number and source; a row of an older ledger (no number) by key."""
    if row["source_row"] >= 0:
        return row["source_row"], row["source"]
    return -1, row["key"] or row["source"]


def clean(run: RunDir, each_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, int]:
    """Remove what an interrupted run left half-done; return what was removed.

    Only the run's own names go: its temporary files, tars of the writer's pattern that no record names, records
    whose shard is gone, ledger parts a power loss cut. Every record and every path is checked first
    (`check_record`, `own_file`): a ledger naming anything but a bare tar of the run, or a path that leads out of
    the folder, raises RefusedFolder before a file is touched. `each_record` is called with every record that
    stays (its shard present), in name order: a caller that needs them all (resume) reads a million index rows
    once, here, and never holds them all.
    """
    check_layout(run)
    recorded: set[str] = set()  # each record parsed once: a million index rows are read in one pass
    unreadable: list[Path] = []
    if run.ledger_shards.is_dir():
        for p in sorted(run.ledger_shards.glob("*.json"), key=lambda p: p.name[: -len(".json")]):
            record = _read_record(p)
            if record is None:
                unreadable.append(p)
                continue
            check_record(run, record, p.name)
            recorded.add(record["name"])
            if each_record is not None and (run.shards / record["name"]).exists():
                each_record(record)
    partial = [p for d in (run.ledger_shards, run.ledger_rejects, run.ledger) if d.is_dir()
               for p in d.glob("*" + TMP_SUFFIX)]  # the ledger's folders hold only what runs wrote
    partial += [p for d in (run.shards, run.root) if d.is_dir() for p in d.glob("*" + TMP_SUFFIX)
                if is_run_temp(p.name, recorded)]
    if run.ledger_rejects.is_dir():
        for p in run.ledger_rejects.glob("*.parquet"):
            try:
                pq.read_metadata(p)
            except (OSError, ValueError, pa.ArrowException):
                unreadable.append(p)
    orphans = [t for t in run.shards.glob("*.tar") if t.name not in recorded and WRITER_NAME.fullmatch(t.name)] \
        if run.shards.is_dir() else []
    gone = [run.ledger_shards / (name + ".json") for name in recorded if not (run.shards / name).exists()]
    check_own(run, [*partial, *unreadable, *orphans, *gone])  # all checked before the first is removed
    return {"partial_files": remove_own(run, partial), "unrecorded_shards": remove_own(run, orphans),
            "records_without_shard": remove_own(run, gone), "unreadable_ledger_parts": remove_own(run, unreadable)}


class DuplicateKeys(RuntimeError):
    """Two committed shards hold the same key: corruption that `prolongvid run --repair` removes."""


def damaged_shards(run: RunDir, checksums: bool = False) -> dict[str, str]:
    """Committed shards that no longer match their record (size; with `checksums` also sha256 and parse), and
    shards holding a key an earlier shard already holds: {shard name: why}."""
    owner: dict[str, str] = {}
    found = ((rec["name"], record_damage(run, rec, owner, checksums)) for rec in shard_records(run))
    return {name: why for name, why in found if why}


def record_damage(run: RunDir, rec: dict[str, Any], owner: dict[str, str], checksums: bool = False) -> str | None:
    """Why the shard of `rec` is damaged, or None; `owner` (key -> shard) holds the keys of the records seen before
    it, in name order, and gets this record's."""
    from shards.reader import HashingReader, iter_tar_samples

    name, path = rec["name"], run.shards / rec["name"]
    dupes = [r["key"] for r in rec["rows"] if r["key"] in owner]
    for r in rec["rows"]:
        owner.setdefault(r["key"], name)
    if dupes:
        return f"holds {len(dupes)} key(s) shard {owner[dupes[0]]} already holds, e.g. {dupes[0]}"
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if size != rec["bytes"]:
        return f"{size} bytes, {rec['bytes']} recorded"
    if checksums:
        with open(path, "rb") as raw:
            stream = HashingReader(raw)
            try:
                for _ in iter_tar_samples(stream):
                    pass
            except (OSError, EOFError, ValueError) as e:
                return f"unreadable tar ({e})"
            if stream.hexdigest() != rec["sha256"]:
                return "sha256 differs from the record"
    return None


def drop_shards(run: RunDir, names: list[str]) -> list[str]:
    """Remove shards and their records (and key markers) so their samples are redone; returns their keys."""
    by_name = {r["name"]: r for r in shard_records(run)}
    keys: list[str] = []
    for name in names:
        rec = by_name.get(name)
        if rec is None:
            continue  # only shards the ledger names are ever removed
        remove_own(run, [run.ledger_shards / (name + ".json")])  # the record first: the commit is undone
        remove_own(run, [run.shards / name])
        own = [r["key"] for r in rec["rows"]]
        still_held = {r["key"] for other, o in by_name.items() if other != name and other not in names for r in o["rows"]}
        forget_keys(run, [k for k in own if k not in still_held])
        keys += own
    return keys


def drop_rejects(run: RunDir, reasons: list[str]) -> int:
    """Forget rejects with these reasons (so the run retries them); returns how many were dropped.

    A reason may be a shell-style pattern: `llm_*` retries every LLM failure.
    """
    rows = reject_rows(run)
    keep = [r for r in rows if not any(fnmatch.fnmatchcase(r["reason"], pattern) for pattern in reasons)]
    if len(keep) == len(rows):
        return 0
    old = list(run.ledger_rejects.glob("*.parquet"))
    write_rejects_part(run, keep)  # the new consolidated part lands before the old parts go
    remove_own(run, old)
    return len(rows) - len(keep)


def reset(run: RunDir) -> None:
    """--force: forget every result of earlier runs in this directory (the run-attempt generation survives,
    so writers of an attempt before the reset still cannot commit). Only what the ledger names and the run's own
    files go, each checked to lie inside the run folder before any is removed; a user's file beside them stays."""
    check_layout(run)
    records = shard_records(run)  # every record checked before anything is removed
    recorded = {rec["name"] for rec in records}
    paths = [run.shards / name for name in sorted(recorded)]
    if run.shards.is_dir():
        paths += [p for p in run.shards.glob("*" + TMP_SUFFIX) if is_run_temp(p.name, recorded)]
    paths += [run.root / name for name in ROOT_FILES]
    remove_own(run, paths)  # all checked before the first is removed
    try:
        run.shards.rmdir()
    except OSError:
        pass  # other files are there (or none): left alone
    _reset_ledger(run)


def _reset_ledger(run: RunDir) -> None:
    """Empty the ledger but keep its generation and marker: the folder stays a marked run folder."""
    if not run.ledger.is_dir():
        return
    if run.ledger.is_symlink():
        raise RefusedFolder(f"{run.ledger} is a symlink: refusing to delete through it")
    keep = {"generation", MARKER_FILE, "commit.lock"}
    for entry in list(os.scandir(run.ledger)):
        if entry.name in keep:
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path)  # rmtree never follows a symlink inside: it removes the link itself
        else:
            path.unlink()


def index_rows(run: RunDir) -> list[dict[str, Any]]:
    return [row for rec in shard_records(run) for row in rec["rows"]]


@dataclass(frozen=True)
class RunTables:
    """What a run's records and rejects make: the files readers read (built the same for a folder or a bucket)."""

    index: pa.Table
    embeddings: pa.Table | None
    shards: list[dict[str, Any]]
    rejects: pa.Table


def build_tables(records: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> RunTables:
    """index.parquet, embeddings.parquet, shards.json and rejects.parquet from the committed shard records."""
    rows = sorted((row for rec in records for row in rec["rows"]), key=lambda r: (r["shard"], r["key"]))
    seen: dict[str, str] = {}
    for row in rows:
        if seen.setdefault(row["key"], row["shard"]) != row["shard"]:
            raise DuplicateKeys(f"key {row['key']} is committed in {seen[row['key']]} and {row['shard']}: "
                                "the run directory is corrupt; `prolongvid run CONFIG --repair` redoes those samples")
    embedded = [(r["key"], r["embedding"]) for r in rows if r.get("embedding")]
    embeddings = None
    if embedded:
        keys, vectors = zip(*embedded)
        embeddings = pa.table({"key": pa.array(keys, pa.string()), "embedding": pa.array(vectors, pa.list_(pa.float32()))})
    shards = [{"format_version": LAYOUT1_VERSION, **{k: v for k, v in rec.items() if k not in ("rows", "replaces")},
               **({"split": rec["rows"][0]["split"]} if rec["rows"] and rec["rows"][0].get("split") else {})}
              for rec in records]  # a held-out shard says so
    ordered = sorted(rejects, key=lambda r: r["source"])
    return RunTables(_index_table(rows), embeddings, shards,  # the index without the embeddings: their own table
                     pa.Table.from_pylist(ordered, schema=REJECTS_SCHEMA))


def write_tables(run: RunDir) -> tuple[int, int]:
    """Rebuild index.parquet and rejects.parquet from the ledger; returns (samples, rejects)."""
    tables = build_tables(shard_records(run), reject_rows(run))  # records read once
    write_parquet_atomic(run.index, tables.index)
    if tables.embeddings is not None:
        write_parquet_atomic(run.embeddings, tables.embeddings)
    else:
        run.embeddings.unlink(missing_ok=True)
    write_atomic(run.shards_json, json.dumps(tables.shards, indent=1).encode())
    write_parquet_atomic(run.rejects, tables.rejects)
    return tables.index.num_rows, tables.rejects.num_rows


def _index_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Every row's columns but `embedding`, in first-seen order, built column by column (a million rows:
    the same table `Table.from_pylist` makes, without a dict per row)."""
    if not rows:
        return pa.table({"key": pa.array([], pa.string()), "shard": pa.array([], pa.string())})
    columns = [c for c in dict.fromkeys(c for row in rows for c in row) if c != "embedding"]
    return pa.table({c: [row.get(c) for row in rows] for c in columns})
