"""Reading a run that lives on an object store (`s3://bucket/run1`): its shard list, its index, and its tars as
streams (webdataset's `s3://`, `gs://`, `az://` URLs) or by byte range (one sample's members, one frame).

Everything goes through the storage seam (`pipeline.core.storage`), so a run copied to a bucket reads as it
does on disk: the same shard list and split, the same newer-format refusal, the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from pipeline.core.sample import LAYOUT1_VERSION, check_version
from pathlib import Path

from pipeline.core.storage import NotFound, Storage
from shards.layout import INDEX_FILE, SHARDS_DIR, SHARDS_FILE
from shards.reader import NotARunDir
from shards.split import of_split

READ_AHEAD = 1 << 16  # a tar header scan reads 512-byte headers: fetch this much per request instead


def _split(url: str) -> tuple[Storage, str]:
    parent, _, name = url.rstrip("/").rpartition("/")
    return Storage(parent), name


def remote_shard_list(root: str) -> list[dict[str, Any]] | None:
    """A remote run's shards.json records (each format version checked), or None when the prefix has none."""
    import json

    try:
        listed = json.loads(Storage(root).get(SHARDS_FILE))
    except NotFound:
        return None
    for record in listed:
        check_version(str(record.get("format_version", LAYOUT1_VERSION)), f"shard {record.get('name')}")
    return listed


def shard_url(root: str, name: str) -> str:
    return f"{Storage(root).root}/{SHARDS_DIR}/{name}"


def remote_shard_urls(root: str, split: str | None = None) -> list[str]:
    """A remote run's shard URLs in shards.json order (only `split`'s when given); a prefix without a shard
    list: every `.tar` under its `shards/`, or under the prefix itself."""
    listed = remote_shard_list(root)
    if listed:
        chosen = listed if split is None else of_split(listed, split)
        return [shard_url(root, s["name"]) for s in chosen]
    store = Storage(root)
    for prefix in (f"{SHARDS_DIR}/", ""):
        tars = [info.path for page in store.list_pages(prefix) for info in page
                if info.path.endswith(".tar") and "/" not in info.path[len(prefix):]]
        if tars:
            return [f"{store.root}/{p}" for p in sorted(tars)]
    return []


def remote_index(root: str) -> Any | None:
    """The run's index.parquet as an Arrow table, or None when the prefix has none."""
    import pyarrow.parquet as pq

    try:
        data = Storage(root).get(INDEX_FILE)
    except NotFound:
        return None
    return pq.read_table(io.BytesIO(data))


class RangedFile(io.RawIOBase):
    """A remote object as a seekable read-only file: each read is a ranged request (with read-ahead), so a tar's
    headers can be scanned and one member read without fetching the rest."""

    def __init__(self, url: str):
        self._store, self._name = _split(url)
        self._size = self._store.head(self._name).size
        self._pos = 0
        self._buf_start, self._buf = 0, b""
        self.requests, self.bytes_fetched = 1, 0  # the HEAD, then each ranged GET and its body (cost accounting)

    def _get(self, start: int, end: int) -> bytes:
        data = self._store.get_range(self._name, start, end)
        self.requests += 1
        self.bytes_fetched += len(data)
        return data

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        want = min(len(b), self._size - self._pos)
        if want <= 0:
            return 0
        end = self._buf_start + len(self._buf)
        if not (self._buf_start <= self._pos and self._pos + want <= end):
            self._buf_start = self._pos
            self._buf = self._get(self._pos, min(self._size, self._pos + max(want, READ_AHEAD)))
        start = self._pos - self._buf_start
        b[:want] = self._buf[start:start + want]
        self._pos += want
        return want

    def read_at(self, offset: int, size: int) -> bytes:
        """Exactly `size` bytes from `offset`, one request, outside the read-ahead buffer."""
        return self._get(offset, offset + size)


class _Stream(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._rest = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(b), len(self._rest))
        b[:n], self._rest = self._rest[:n], self._rest[n:]
        return n


def open_stream(url: str, mode: str = "rb", bufsize: int = 8192) -> io.BufferedReader:
    """An object read front to back (webdataset's opener for `s3://`, `gs://`, `az://` shard URLs)."""
    if mode != "rb":
        raise ValueError(f"{url}: object-store shards are read-only here (mode {mode!r})")
    store, name = _split(url)
    return io.BufferedReader(_Stream(store.stream(name)), buffer_size=max(bufsize, 1 << 20))


def register_webdataset_schemes() -> None:
    """Let `webdataset.WebDataset([...s3:// urls])` open object-store shards through the storage seam (its URL
    dispatch table is the library's extension point)."""
    import importlib

    schemes = importlib.import_module("webdataset.gopen").gopen_schemes  # the module, not its `gopen` function
    for scheme in ("s3", "gs", "az", "abfs"):
        schemes[scheme] = open_stream


def mirror_tables(root: str, dest: Path) -> Path:
    """A remote run's tables (index, rejects, shards.json, run.json, embeddings, resolved config) copied into `dest`, with an empty
    shards/: what `stats` reads, without a byte of the shards themselves."""
    from shards.layout import CONFIG_FILE, EMBEDDINGS_FILE, REJECTS_FILE, RUN_FILE

    store = Storage(root)
    (dest / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    for name in (INDEX_FILE, REJECTS_FILE, SHARDS_FILE, RUN_FILE, EMBEDDINGS_FILE, CONFIG_FILE):
        try:
            data = store.get(name)
        except NotFound:
            if name == INDEX_FILE:
                raise NotARunDir(f"{root} is not a pipeline output directory (no {INDEX_FILE})") from None
            continue
        (dest / name).write_bytes(data)
    return dest
