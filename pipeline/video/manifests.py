"""Manifest readers: JSONL, CSV, parquet and LLaVA JSON, each streamed one record at a time.

A record that cannot be used (not JSON, nested too deep, a field too long)
comes out as `{"_bad": "<row>: <why>"}` and becomes a reject row; only a file
that is not a manifest at all (not JSON, not a list) is a ConfigError.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.config_load import ConfigError

MAX_DEPTH = 64  # nesting a manifest record may have; deeper is refused, not recursed into
MAX_LINE = 1 << 20  # bytes a JSONL line or a CSV field may have


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if len(line) > MAX_LINE:
                yield {"_bad": f"line {n}: {len(line)} bytes, over {MAX_LINE}"}
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as e:  # RecursionError: nested too deep for the parser
                yield {"_bad": f"line {n}: not JSON ({getattr(e, 'msg', type(e).__name__)})"}
                continue
            yield record if _depth_ok(record) else {"_bad": f"line {n}: nested deeper than {MAX_DEPTH}"}


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def _csv(path: Path) -> Iterable[dict[str, Any]]:
    csv.field_size_limit(MAX_LINE)
    with path.open(newline="", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # a field over the limit, a NUL: that row is refused, the rest read on
                yield {"_bad": f"row {reader.line_num}: {e}"}
                continue
            yield row


def _parquet(path: Path) -> Iterable[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _llava(path: Path) -> Iterable[dict[str, Any]]:
    """The records of a LLaVA JSON list, parsed streaming (ijson): bounded memory, bounded nesting.

    `basic_parse` (no prefix strings, which grow with depth) drives an ObjectBuilder per record; a record
    nested deeper than MAX_DEPTH is skipped to its end and refused.
    """
    import ijson

    n, depth, builder, too_deep = -1, 0, None, False
    with path.open("rb") as f:
        try:
            for event, value in ijson.basic_parse(f):
                opening, closing = event in ("start_map", "start_array"), event in ("end_map", "end_array")
                if depth == 0:
                    if event != "start_array":
                        raise ConfigError(f"input.path: {path} must hold a list of LLaVA records")
                    depth = 1
                    continue
                if depth == 1:
                    if event == "end_array":
                        return
                    n += 1
                    builder, too_deep = ijson.ObjectBuilder(), False
                if opening:
                    depth += 1
                    too_deep = too_deep or depth - 1 > MAX_DEPTH
                elif closing:
                    depth -= 1
                if not too_deep:
                    builder.event(event, value)
                if depth == 1:  # the record is complete (a scalar one completes at once)
                    yield {"_bad": f"record {n}: nested deeper than {MAX_DEPTH}"} if too_deep else builder.value
        except ijson.JSONError as e:
            raise ConfigError(f"input.path: {path} is not valid JSON ({e}) after {n + 1} records") from None


LOADERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "llava": _llava}
