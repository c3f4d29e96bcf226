"""Is there anything to train on? Checked when the config loads, before a rank starts or a file is written.

A run made with the LLM off has samples but no conversations, and a rank
without a shard has nothing to read: both would otherwise fail minutes later
deep inside torch and webdataset. Each problem is one line that says what to do.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.core.config_load import ConfigError
from pipeline.core.storage import in_fresh_process, is_remote
from shards.layout import INDEX_FILE
from shards.remote import remote_index
from train.data import shard_urls


def _index_of(spec: str) -> Path | None:
    if is_remote(spec):
        return None
    path = Path(spec)
    for candidate in (path / INDEX_FILE, path.parent / INDEX_FILE if path.name == "shards" else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def check_training_data(spec: str, world_size: int) -> str:
    """A line describing the data, or ConfigError naming `data.shards` and what to do."""
    if not spec.strip():
        raise ConfigError("data.shards is empty: set it to a pipeline output dir (--set data.shards=out/run1)")
    urls = shard_urls(spec)
    missing = [u for u in urls if not is_remote(u) and not Path(u).is_file()]
    if not urls or missing:
        shown = missing[0] if missing else spec
        raise ConfigError(f"data.shards: no shards at {shown}; point it at a pipeline output dir or a folder of .tar shards")
    if len(urls) < world_size:
        raise ConfigError(f"data.shards: {len(urls)} shard(s) for {world_size} ranks, and every rank needs one: "
                          "use fewer ranks, or rerun the pipeline with a smaller shards.max_samples")  # fmt: skip
    if is_remote(spec):
        table = None if spec.endswith(".tar") else in_fresh_process(remote_index, spec)  # the trainer forks later
    else:
        index = _index_of(spec)
        table = None if index is None else \
            pq.read_table(index, columns=[c for c in ("key", "num_conversations") if c in pq.read_schema(index).names])
    if table is None:
        return f"{len(urls)} shards (no index: conversations are counted while reading)"
    samples = table.num_rows
    talks = sum(v or 0 for v in table.column("num_conversations").to_pylist()) if "num_conversations" in table.column_names else 0
    if samples == 0:
        raise ConfigError(f"data.shards: {spec} holds 0 samples; nothing to train on")
    if talks == 0:
        raise ConfigError(f"data.shards: {samples} samples, 0 conversations in {spec}: rerun the pipeline with the LLM "
                          "on (llm.enabled=true) or import LLaVA annotations (prolongvid import-llava)")  # fmt: skip
    return f"{samples} samples, {talks} conversations in {len(urls)} shards"
