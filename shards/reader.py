"""Read a run directory back: the tables, the shard list, and samples (plain webdataset or raw tar members)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from pipeline.core.sample import LAYOUT1_VERSION, check_version
from shards.layout import RunDir
from shards.split import of_split


class NotARunDir(ValueError):
    pass


def open_run(path: str | Path) -> RunDir:
    run = RunDir(path)
    if not run.index.exists() or not run.shards.is_dir():
        raise NotARunDir(f"{path} is not a pipeline output directory (no {run.index.name} or shards/)")
    return run


def read_index(run: RunDir) -> list[dict[str, Any]]:
    return pq.read_table(run.index).to_pylist()


def read_rejects(run: RunDir) -> list[dict[str, Any]]:
    return pq.read_table(run.rejects).to_pylist() if run.rejects.exists() else []


def read_shard_list(run: RunDir) -> list[dict[str, Any]]:
    """shards.json's records; a shard written in a newer major sample format than this code reads raises NewerFormat."""
    listed = json.loads(run.shards_json.read_text()) if run.shards_json.exists() else []
    for record in listed:
        check_version(str(record.get("format_version", LAYOUT1_VERSION)), f"shard {record.get('name')}")
    return listed


def read_run_json(run: RunDir) -> dict[str, Any]:
    return json.loads(run.run_json.read_text()) if run.run_json.exists() else {}


def shard_urls(run: RunDir, split: str | None = None) -> list[str]:
    """Shard paths in index order, for webdataset.WebDataset(urls) or any tar reader; only `split`'s when given
    (a run without a shard list: every tar in its shards/ folder)."""
    listed = read_shard_list(run)
    if not listed:
        return [str(p) for p in sorted(run.shards.glob("*.tar"))]
    return [str(run.shards / s["name"]) for s in (listed if split is None else of_split(listed, split))]


def iter_samples(run: RunDir) -> Iterator[dict[str, Any]]:
    """Samples as plain webdataset dicts (`__key__`, `0000.jpg`..., `json`, `conversations.json`; raw bytes)."""
    import webdataset as wds

    urls = shard_urls(run)
    if not urls:
        return
    yield from wds.WebDataset(urls, shardshuffle=False, empty_check=False)


class HashingReader:
    """A read-only file wrapper that feeds every byte read to sha256: verify hashes and parses in one pass."""

    def __init__(self, f: Any):
        self._f = f
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.sha.update(data)
        return data

    def hexdigest(self) -> str:
        while self.read(1 << 20):  # whatever the tar reader left unread (end-of-archive padding)
            pass
        return self.sha.hexdigest()


def iter_tar_samples(source: str | Path | Any) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member suffix: bytes}) per sample of one tar, in file order; raises tarfile.TarError on damage.

    `source` is a path or a readable stream (read sequentially, never seeked).
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    opened = tarfile.open(source, "r:") if isinstance(source, (str, Path)) else tarfile.open(fileobj=source, mode="r|")
    with opened as tar:
        for info in tar:
            if not info.isfile():
                raise tarfile.TarError(f"member {info.name!r} is not a regular file")
            name = info.name
            base, dot, suffix = name.partition(".")
            if not dot or "/" in name:
                raise tarfile.TarError(f"member {name!r} is not <key>.<field>")
            if base != key or suffix in members:  # a member seen again: the same key stored a second time
                if key is not None:
                    yield key, members
                key, members = base, {}
            f = tar.extractfile(info)
            members[suffix] = f.read() if f else b""
        if key is not None:
            yield key, members
