"""Input rows: every row of the input ends as a sample's, a reject's or a skipped one.

The resume decides what a rerun skips by row (its number and source), never by a duplicate's key; `stats
--verify` checks that the tables' rows add up to the input's (`row_totals`).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from shards.ledger import iter_shard_records
from shards.layout import RunDir


def row_identity(row: int, source: str) -> str:
    """One input row, as the resume's sets hold it: its number and its source."""
    return f"{row}\t{source}"


def ledger_keys(run: RunDir, keys: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """What a rerun skips: the keys done (committed, unless `keys` already holds them, and those a stage
    rejected), the input rows rejected (`row_identity`), and the sources of rejects of an older ledger that
    carry no row number. A `source` reject's key is not done: a duplicate_key row carries the key of the video
    it repeats, which may not be committed yet. Only the key, source, stage and row columns of the reject parts
    are read, no row is kept."""
    keys = [row["key"] for rec in iter_shard_records(run) for row in rec["rows"]] if keys is None else keys
    columns: dict[str, list[Any]] = {"key": [], "source": [], "stage": [], "source_row": []}
    for part in sorted(run.ledger_rejects.glob("*.parquet")) if run.ledger_rejects.is_dir() else []:
        try:
            have = pq.read_schema(part).names
            table = pq.read_table(part, columns=[c for c in columns if c in have])
        except (OSError, ValueError, pa.ArrowException):
            continue  # cut by a power loss: its videos are redone (clean removes it)
        read = table.to_pydict()
        for name in columns:
            columns[name] += read.get(name) or [-1 if name == "source_row" else ""] * table.num_rows
    rows, legacy = reject_keys([dict(zip(columns, values)) for values in zip(*columns.values())], keys)
    return keys, rows, legacy


def reject_keys(rejects: Iterable[dict[str, Any]], keys: list[str]) -> tuple[list[str], list[str]]:
    """The input rows the rejects stand for (`row_identity`) and the sources of rejects without a row number; the
    key of a reject a stage made (not a source's) is done too, and is added to `keys`."""
    rows: list[str] = []
    legacy: list[str] = []
    for r in rejects:
        key, source, n = r.get("key"), r["source"], r.get("source_row")
        if n is not None and n >= 0:
            rows.append(row_identity(n, source))
            if key and r.get("stage") != "source":
                keys.append(key)
        else:
            legacy.append(source)
            if key:
                keys.append(key)
    return rows, legacy


def row_totals(run: RunDir) -> dict[str, int]:
    """Input rows the written tables account for: the samples' and the rejects'; `unnumbered_rows` counts rows
    an older version wrote without a row number (then the sum cannot be checked)."""
    read = {}
    for name, path in (("sample_rows", run.index), ("reject_rows", run.rejects)):
        if path.exists():
            have = pq.read_schema(path).names
            columns = [c for c in ("source_row", "source_rows") if c in have]
            read[name] = pq.read_table(path, columns=columns) if columns else pa.table({"n": [0] * pq.read_metadata(path).num_rows})
    return table_row_totals(read)


def table_row_totals(tables: dict[str, pa.Table]) -> dict[str, int]:
    """`row_totals` of the index (`sample_rows`) and rejects (`reject_rows`) tables themselves."""
    out = {"sample_rows": 0, "reject_rows": 0, "unnumbered_rows": 0}
    for name, table in tables.items():
        if "source_rows" not in table.column_names or "source_row" not in table.column_names:
            out[name] += table.num_rows
            out["unnumbered_rows"] += table.num_rows
            continue
        columns = table.select(["source_row", "source_rows"]).to_pydict()
        for row, rows in zip(columns["source_row"], columns["source_rows"]):
            out[name] += 1 if rows is None else int(rows)
            out["unnumbered_rows"] += row is None or row < 0
    return out


def committed_by_run(records: Iterable[dict[str, Any]], stamp: str) -> dict[str, int]:
    """What the shards of one run's writers (their names carry its start stamp, a settle's rewrite keeps it) hold
    now: the run's own counts from what is committed, whether or not each writer's result reached the driver."""
    mark = re.compile(rf"-{re.escape(stamp)}-\d{{5}}-[0-9a-f]{{8}}(-eval)?-\d{{3,}}")
    mine = [r for r in records if mark.search(str(r.get("name", "")))]
    return {"shards": len(mine), "samples": sum(len(r["rows"]) for r in mine),
            "bytes": sum(int(r.get("bytes") or 0) for r in mine)}
