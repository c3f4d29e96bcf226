"""A LLaVA JSON's records grouped per video, in bounded driver memory.

A video's conversations may be anywhere in the file, so no task is complete
before the last record. Instead of holding every record, the first pass
streams them (ijson) into a temporary SQLite table, one row per record with
its resolved video; the second reads the table back ordered by each video's
first record and hands on tasks a chunk at a time. Rejects are spilled too
and handed on only after the whole file parsed: a file that turns out not to
be JSON fails at load with nothing committed, as before.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pipeline.core.errors import Reason
from pipeline.video.keyset import GrowingKeySet
from pipeline.video.scratch import scratch_dir
from pipeline.core.records import Rejection
from pipeline.core.task import VideoTask, signed_source

SPILL_ROWS = 2000  # records buffered before an insert
# The table's folder in the temp dir names the process that made it: a killed process leaves it, and the next
# reader of a LLaVA JSON removes every such folder of this user whose process is gone.
SCRATCH_PREFIX = "prolongvid-llava-"


def _plain(value: Any) -> Any:
    """ijson gives non-integer numbers as Decimal; JSON (and the shards' conversations.json) wants floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def llava_chunks(records: Iterable[Any], locate: Callable[[Any, int], Any], key_for_path: Callable[[str], str],
                 path_fields: tuple[str, ...], chunk: int) -> Iterator[tuple[list[VideoTask], list[Rejection]]]:
    """(tasks, rejects) of a LLaVA JSON, a chunk at a time: first the rejects (ending with a chunk of fewer than
    `chunk`, maybe none), then the videos in order of their first record. `locate(record, n)` gives (source, rel) or a Rejection; the path fields are left out of the
    conversations."""
    with scratch_dir(SCRATCH_PREFIX) as tmp:
        db = sqlite3.connect(Path(tmp) / "records.db")
        try:
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                             "CREATE TABLE rec (n INTEGER PRIMARY KEY, source TEXT, rel TEXT, conv TEXT);"
                             "CREATE TABLE rej (n INTEGER PRIMARY KEY, row TEXT);")
            recs: list[tuple[int, str, str, str]] = []
            rejs: list[tuple[int, str]] = []
            for n, rec in enumerate(records):
                located = locate(rec, n)
                if isinstance(located, Rejection):
                    rejs.append((n, json.dumps(located.at_row(n).to_dict())))
                else:
                    conv = {k: v for k, v in rec.items() if k not in path_fields}
                    recs.append((n, *located, json.dumps(conv, default=_plain)))
                if len(recs) + len(rejs) >= SPILL_ROWS:
                    _spill(db, recs, rejs)
            _spill(db, recs, rejs)
            db.execute("CREATE INDEX rec_source ON rec (source, n)")
            rejects: list[Rejection] = []
            for (row,) in db.execute("SELECT row FROM rej ORDER BY n"):
                rejects.append(Rejection(**json.loads(row)))
                if len(rejects) >= chunk:
                    yield [], rejects
                    rejects = []
            yield [], rejects
            yield from _videos(db, chunk, key_for_path)
        finally:
            db.close()


def _spill(db: sqlite3.Connection, recs: list, rejs: list) -> None:
    db.executemany("INSERT INTO rec VALUES (?, ?, ?, ?)", recs)
    db.executemany("INSERT INTO rej VALUES (?, ?)", rejs)
    recs.clear()
    rejs.clear()


def _videos(db: sqlite3.Connection, chunk: int, key_for_path: Callable[[str], str]) -> Iterator[tuple[list, list]]:
    """One task per resolved video, its conversations in file order; a second video whose key is taken (two paths
    with the same key) is a duplicate_key reject naming the first's record."""
    query = ("SELECT r.source, r.rel, r.conv, f.first, f.rows FROM rec r JOIN "
             "(SELECT source, MIN(n) AS first, COUNT(*) AS rows FROM rec GROUP BY source) f ON r.source = f.source "
             "ORDER BY f.first, r.n")
    seen = GrowingKeySet()
    tasks: dict[str, VideoTask] = {}
    firsts: dict[str, int] = {}
    rejects: list[Rejection] = []
    current: VideoTask | None = None

    def hand_on() -> tuple[list[VideoTask], list[Rejection]]:
        keys = list(tasks)
        for key, first in zip(keys, seen.value_of(keys)):
            if first >= 0:
                task = tasks.pop(key)
                rejects.append(Rejection(task.source, "source", Reason.DUPLICATE_KEY.value,
                                         f"record {firsts[key]}: key {key} already taken by record {first}", key,
                                         task.source_row, task.source_rows))
        seen.add(list(tasks), [firsts[k] for k in tasks])
        out = list(tasks.values()), list(rejects)
        tasks.clear()
        firsts.clear()
        rejects.clear()
        return out

    for source, rel, conv, first, rows in db.execute(query):
        if current is None or (current.fetch_url or current.source) != source:
            if len(tasks) >= chunk:
                yield hand_on()
            key = key_for_path(rel)
            current = VideoTask(key, meta={"video_rel": rel, "conversations": []}, source_row=first, source_rows=rows,
                                **signed_source(source))
            if key in tasks:
                rejects.append(Rejection(source, "source", Reason.DUPLICATE_KEY.value,
                                         f"record {first}: key {key} already taken by record {firsts[key]}", key,
                                         first, rows))
            else:
                tasks[key], firsts[key] = current, first
        current.meta["conversations"].append(json.loads(conv))
    if tasks or rejects:
        yield hand_on()
